"""MVSA-Single and MVSA-Multiple, in the splits of CLMLF (the splits MDSE reports on).

Two layouts are read: CLMLF's repository (``dataset/data/MVSA-single/``, where its
``main.py`` reads them: the split files in a fold directory named by ``-data_path_name``,
default ``10-flod-1``, the images beside it), and the split files at the root::

    MVSA-single/                               or   MVSA-single/
        10-flod-1/train.json dev.json test.json         train.json dev.json test.json
        dataset_image/<id>.jpg                          dataset_image/<id>.jpg

Records: ``[{"id": "5", "text": "...", "emotion_label": 0}, ...]``. With fold directories,
``--fold`` chooses one (default ``10-flod-1``, else the only one); a release with several and
none chosen is refused, naming them. ``emotion_label``: 0 positive, 1 neutral, 2 negative
(mapped to the shared sentiment order); ``dev`` becomes ``validation``. An ``id`` given twice
in a file is a FormatError. Sizes: Single 3,611/450/450, Multiple 13,624/1,700/1,700.
"""

from __future__ import annotations

from ray_sticker.data.convert.base import (
    SENTIMENT_LABELS, ConvertOptions, Converter, FormatError, Scan, Source, UniqueIds, field_of, label_index,
    register,
)

SPLIT_FILES = {"train": "train.json", "validation": "dev.json", "test": "test.json"}
CODES = {0: "positive", 1: "neutral", 2: "negative"}
DEFAULT_FOLD = "10-flod-1"  # CLMLF's main.py: -data_path_name


def split_dir(src: Source, fold: str | None) -> str:
    """Where the split files are: the chosen fold's directory, CLMLF's default fold, the only
    fold, or the root."""
    if fold is not None:
        if not src.exists(f"{fold}/{SPLIT_FILES['train']}"):
            raise FileNotFoundError(f"release at {src.uri} has no fold {fold!r} ({fold}/{SPLIT_FILES['train']}); "
                                    f"folds: {', '.join(_folds(src)) or 'none'}")
        return fold
    if src.exists(SPLIT_FILES["train"]):
        return ""
    folds = _folds(src)
    if DEFAULT_FOLD in folds or len(folds) == 1:
        return DEFAULT_FOLD if DEFAULT_FOLD in folds else folds[0]
    if folds:
        raise FileNotFoundError(f"release at {src.uri} holds the folds {', '.join(folds)}: choose one with --fold")
    raise FileNotFoundError(f"release at {src.uri} lacks {SPLIT_FILES['train']} (at its root or in a fold "
                            f"directory such as {DEFAULT_FOLD}/)")


def _folds(src: Source) -> list[str]:
    return [name for name in src.listdir() if src.exists(f"{name}/{SPLIT_FILES['train']}")]


class _MVSA(Converter):
    task = "classify"

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        examples = []
        folder = split_dir(src, options.fold)
        for split, name in SPLIT_FILES.items():
            rel = f"{folder}/{name}" if folder else name
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
                    examples=examples, version=f"CLMLF splits{f' ({folder})' if folder else ''}")


@register
class MVSASingle(_MVSA):
    name = "mvsa-single"
    description = "MVSA-Single tweets (image + text sentiment), CLMLF splits"


@register
class MVSAMultiple(_MVSA):
    name = "mvsa-multiple"
    description = "MVSA-Multiple tweets (image + text sentiment), CLMLF splits"
