"""MSAIRS (Shi et al., ACM MM 2025): chat contexts with a sticker, joint sentiment + intent.

Layout (FakerBoom/MSAIRS-Dataset; the stickers are a separate download)::

    all_data.json                 one JSON array of records:
        {"id": 0, "context": "相信自己，明天会更好\\t", "sticker": "123",
         "multimodal_intent_label": "Comfort", "multimodal_sentiment_label": 1,
         "text_sentiment_label": 1, "sticker_sentiment_label": 1, "sticker_class": 5,
         "sticker_text": "加油"}
    all_sticker/<sticker>.png     the stickers (``all_stickers/`` is accepted as well)

Codes: the three sentiment labels are 0 neutral, 1 positive, 2 negative (mapped to the shared
order negative/neutral/positive); ``multimodal_intent_label`` is one of the 20 names of
:data:`INTENTS` (the order of the official loader); ``sticker_class`` 0 person, 1 animal,
2 cartoon, 3 person with text, 4 animal with text, 5 cartoon with text, 6 text only.
Size: 3,118 records, 2,076 stickers; the paper splits 90/10 by sticker (sticker-disjoint).

Choices:

- The release is the directory holding ``all_data.json`` and the sticker folder. The JSON file
  itself is refused with that advice: image references are relative to the release root, and
  a file cannot be one.
- ``context``: the release separates the turns of a chat with tabs and ends it with one; the
  turns become the list (blank pieces dropped) — not one string with the tabs stripped, which is
  what the official loader tokenizes (BERT reads a tab as a space; the pipeline joins turns with
  the separator token).
- Examples: ``image_ref`` = the sticker image (the classification models read ``image``),
  ``sticker_id``, ``sticker_text`` as released (``""`` when the sticker has none; the pipeline
  substitutes its default). Extra columns: ``text_sentiment`` and ``sticker_sentiment`` (same
  order as ``sentiment``), ``sticker_class`` (int).
- One record has ``sticker_class`` 55: set to null and counted in ``fixups``; any other value
  outside 0-6, and any unknown sentiment or intent, fails.
- Sticker images: the folder is listed once and a sticker found with another extension
  (the official loader falls back to ``.webp``) is referenced as found; one not listed gets
  ``<id>.png`` and the runner counts it missing.
- Stickers table: one row per sticker id; ``ocr_text`` = its first non-empty ``sticker_text``
  (six stickers have an empty text on some records and a text on others), else ``""``.
- Splits: none in the release -> the runner draws 90/10 train/test with the seed, grouped by
  ``sticker_id`` (the paper's sticker-disjoint split; its own split is not published).
- ``example_id`` = the record's ``id``; an id given twice is a FormatError.
"""

from __future__ import annotations

import posixpath
from typing import Any

from ray_sticker.data.convert.base import (
    SENTIMENT_LABELS, ConvertOptions, Converter, FormatError, Scan, SeededSplit, Source, UniqueIds, field_of,
    label_index, register,
)

DATA_FILE = "all_data.json"
STICKER_DIRS = ("all_sticker", "all_stickers")
IMAGE_EXTS = (".png", ".webp", ".jpg", ".jpeg", ".gif")  # preference order for a sticker id
INTENTS = ["Complain", "Praise", "Agree", "Compromise", "Query", "Joke", "Oppose", "Inform", "Ask for help", "Greet",
           "Taunt", "Introduce", "Guess", "Leave", "Advise", "Flaunt", "Criticize", "Thank", "Comfort", "Apologize"]
SENTIMENT_CODES = {0: "neutral", 1: "positive", 2: "negative"}
STICKER_CLASSES = range(7)
BAD_STICKER_CLASS = 55  # one record of the release
FIX_STICKER_CLASS = f"sticker_class {BAD_STICKER_CLASS} (outside 0-6) set to null"


def _sticker_files(src: Source, folder: str) -> dict[str, str]:
    """Sticker id -> file name in ``folder``, preferring the extensions in IMAGE_EXTS order."""
    def rank(name: str) -> int:
        ext = posixpath.splitext(name)[1].lower()
        return IMAGE_EXTS.index(ext) if ext in IMAGE_EXTS else len(IMAGE_EXTS)

    found: dict[str, str] = {}
    for name in src.listdir(folder):
        stem = posixpath.splitext(name)[0]
        if rank(name) < rank(found.get(stem, "")):
            found[stem] = name
    return found


@register
class MSAIRS(Converter):
    name = "msairs"
    task = "classify"
    description = "MSAIRS chat contexts + stickers: joint sentiment (3) and intent (20), sticker-disjoint seeded split"

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        if not src.is_dir(""):
            raise FileNotFoundError(f"msairs: give the release directory (holding {DATA_FILE} and "
                                    f"{STICKER_DIRS[0]}/), not a file: {src.uri}")
        where = src.uri_of(src.require(DATA_FILE))
        folder = next((d for d in STICKER_DIRS if src.is_dir(d)), None)
        if folder is None:
            raise FileNotFoundError(f"release at {src.uri} lacks {' or '.join(d + '/' for d in STICKER_DIRS)}")
        files = _sticker_files(src, folder)
        records = src.json(DATA_FILE)
        if not isinstance(records, list):
            raise FormatError(where, f"expected a JSON array of records, got {type(records).__name__}")

        examples: list[dict[str, Any]] = []
        ocr: dict[str, str] = {}  # sticker id -> first non-empty text, in record order
        fixups: dict[str, int] = {}
        ids = UniqueIds("id")
        for i, rec in enumerate(records):
            at = f"record {i}"

            def get(key: str) -> Any:
                return field_of(rec, key, where, at)

            def sentiment(key: str) -> int:
                return label_index(get(key), SENTIMENT_LABELS, key, where, at, codes=SENTIMENT_CODES)

            ids.add(str(get("id")), where, at)
            sticker = str(get("sticker"))
            text = get("sticker_text")
            if not isinstance(text, str):
                raise FormatError(where, f"sticker_text must be a string, got {text!r}", at)
            if not ocr.get(sticker):
                ocr[sticker] = text
            context = get("context")
            if not isinstance(context, str):
                raise FormatError(where, f"context must be a string, got {type(context).__name__}", at)
            examples.append({
                "example_id": str(get("id")),
                "split": None,
                "language": "zh",
                "context": [t for t in context.split("\t") if t.strip()] or [""],
                "image_ref": f"{folder}/{files.get(sticker, sticker + '.png')}",
                "sticker_id": sticker,
                "sticker_text": text,
                "sentiment": sentiment("multimodal_sentiment_label"),
                "intent": label_index(get("multimodal_intent_label"), INTENTS, "multimodal_intent_label", where, at),
                "text_sentiment": sentiment("text_sentiment_label"),
                "sticker_sentiment": sentiment("sticker_sentiment_label"),
                "sticker_class": self._sticker_class(get("sticker_class"), where, at, fixups),
            })
        stickers = [{"sticker_id": s, "image_ref": f"{folder}/{files.get(s, s + '.png')}", "ocr_text": text}
                    for s, text in ocr.items()]
        return Scan(name=self.name, task=self.task, label_maps={"sentiment": SENTIMENT_LABELS, "intent": INTENTS},
                    examples=examples, stickers=stickers,
                    seeded_split=SeededSplit({"train": 0.9, "test": 0.1}, group_by="sticker_id"),
                    version=f"MSAIRS-Dataset {DATA_FILE} + {folder}/", fixups=fixups)

    @staticmethod
    def _sticker_class(value: Any, where: str, at: str, fixups: dict[str, int]) -> int | None:
        if value == BAD_STICKER_CLASS:
            fixups[FIX_STICKER_CLASS] = fixups.get(FIX_STICKER_CLASS, 0) + 1
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value not in STICKER_CLASSES:
            raise FormatError(where, f"unknown sticker_class {value!r}; expected one of 0-6", at)
        return value
