"""SER30K (Liu et al., ACM MM 2022): sticker emotion recognition, stickers with their text.

Layout (nku-shengzheliu/SER30K; the data is sent on request)::

    Annotations/image-level/train.json   {"annotations": [{"topic": "01-panda-bear",
    Annotations/image-level/val.json                       "file_name": "sticker_1.jpg",
    Annotations/image-level/test.json                      "anno": 4, "text": "..."}, ...]}
    Images/<topic>/<file_name>

``anno`` is 1-7 (the official loader trains on ``anno - 1``); ``text`` is the sticker's text,
read by the multimodal model (LORA). Size: 30,739 stickers in 1,887 topics (themes).

Choices:

- Emotion names of ``anno`` 1-7, in :data:`EMOTIONS` order: neither the SER30K repository nor
  its loader names them. The order is the one of StickerConv (Zhang et al., ACL 2024, built on
  SER30K's labels: ``Anger, Fear, Neutral, Sadness, Happiness, Disgust, Surprise``). The indices
  are the release's either way; only the names could be wrong.
- Image path: ``Images/<topic>/<file_name>``, joined as the official loader does.
- ``context`` = ``[text]`` (empty or missing text -> ``[""]``); ``language`` "en" (the loader
  encodes the text with ``bert-base-uncased``). Extra column ``topic``. No stickers table:
  every example is its own sticker.
- Splits: the release's; ``val`` -> ``validation`` (the official code trains on ``train`` and
  evaluates on ``test`` only).
- ``example_id`` = ``<split>-<topic>/<file_name>``; a sticker listed twice in a file is a FormatError.
"""

from __future__ import annotations

from ray_sticker.data.convert.base import (
    ConvertOptions, Converter, FormatError, Scan, Source, UniqueIds, field_of, label_index, register,
)

ANNOTATIONS = "Annotations/image-level"
SPLIT_FILES = {"train": "train.json", "validation": "val.json", "test": "test.json"}
EMOTIONS = ["anger", "fear", "neutral", "sadness", "happiness", "disgust", "surprise"]
CODES = {i + 1: name for i, name in enumerate(EMOTIONS)}


@register
class SER30K(Converter):
    name = "ser30k"
    task = "classify"
    description = "SER30K stickers with their text: 7-way sticker emotion"

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        examples = []
        for split, file in SPLIT_FILES.items():
            rel = src.require(f"{ANNOTATIONS}/{file}")
            where = src.uri_of(rel)
            annotations = field_of(src.json(rel), "annotations", where)
            if not isinstance(annotations, list):
                raise FormatError(where, f"'annotations' must be a list, got {type(annotations).__name__}")
            stickers = UniqueIds("sticker")
            for i, rec in enumerate(annotations):
                at = f"record {i}"
                topic, file_name = str(field_of(rec, "topic", where, at)), str(field_of(rec, "file_name", where, at))
                text = field_of(rec, "text", where, at)
                if text is not None and not isinstance(text, str):
                    raise FormatError(where, f"text must be a string, got {text!r}", at)
                sticker = f"{topic}/{file_name}"
                stickers.add(sticker, where, at)
                examples.append({
                    "example_id": f"{split}-{sticker}",
                    "split": split,
                    "language": "en",
                    "context": [text or ""],
                    "image_ref": f"Images/{sticker}",
                    "emotion": label_index(field_of(rec, "anno", where, at), EMOTIONS, "anno", where, at, codes=CODES),
                    "topic": topic,
                })
        return Scan(name=self.name, task=self.task, label_maps={"emotion": EMOTIONS}, examples=examples,
                    version=f"SER30K {ANNOTATIONS}/{{train,val,test}}.json + Images/<topic>/")
