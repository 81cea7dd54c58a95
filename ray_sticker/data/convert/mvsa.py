"""MVSA-Single and MVSA-Multiple, in the splits of CLMLF (the splits MDSE reports on).

Layout::

    train.json  dev.json  test.json     [{"id": "5", "text": "...", "emotion_label": 0}, ...]
    dataset_image/<id>.jpg

``emotion_label``: 0 positive, 1 neutral, 2 negative (mapped to the shared sentiment order);
``dev`` becomes ``validation``. An ``id`` given twice in a file is a FormatError. Sizes: Single 3,611/450/450, Multiple 13,624/1,700/1,700.
"""

from __future__ import annotations

from ray_sticker.data.convert.base import (
    SENTIMENT_LABELS, ConvertOptions, Converter, FormatError, Scan, Source, UniqueIds, field_of, label_index,
    register,
)

SPLIT_FILES = {"train": "train.json", "validation": "dev.json", "test": "test.json"}
CODES = {0: "positive", 1: "neutral", 2: "negative"}


class _MVSA(Converter):
    task = "classify"

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        examples = []
        for split, rel in SPLIT_FILES.items():
            where = src.uri_of(src.require(rel))
            records = src.json(rel)
            if not isinstance(records, list):
                raise FormatError(where, f"expected a JSON array of records, got {type(records).__name__}")
            ids = UniqueIds("id")
            for i, rec in enumerate(records):
                at = f"record {i}"  # the file is one JSON array
                rid = str(field_of(rec, "id", where, at))
                ids.add(rid, where, at)
                examples.append({
                    "example_id": f"{split}-{rid}",
                    "split": split,
                    "language": "en",
                    "context": [str(field_of(rec, "text", where, at))],
                    "image_ref": f"dataset_image/{rid}.jpg",
                    "sentiment": label_index(field_of(rec, "emotion_label", where, at), SENTIMENT_LABELS,
                                             "emotion_label", where, at, codes=CODES),
                })
        return Scan(name=self.name, task=self.task, label_maps={"sentiment": SENTIMENT_LABELS},
                    examples=examples, version="CLMLF splits")


@register
class MVSASingle(_MVSA):
    name = "mvsa-single"
    description = "MVSA-Single tweets (image + text sentiment), CLMLF splits"


@register
class MVSAMultiple(_MVSA):
    name = "mvsa-multiple"
    description = "MVSA-Multiple tweets (image + text sentiment), CLMLF splits"
