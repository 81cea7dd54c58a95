"""StickerInt (reply-with-sticker retrieval, Int-RA) in the files Int-RA's loader reads.

The official repository (HITSZ-HLT/Int-RA) ships no data, only the loader that turns these
files into LMDB (``build_lmdb_dataset.py``) and reads that back (``data.py``); names, fields
and types below are taken from it::

    {train,valid,test}_contexts_total_key.jsonl   one conversation per line
    {train,valid,test}_imgs.tsv                   image_id <TAB> base64 of the sticker image
    intent_label.txt                              id <TAB> intent <TAB> text (no header)

JSON fields: ``textid``; ``text`` (the conversation turns joined by ``[SEP]``);
``image_ids`` (list of sticker ids replying to it — the loader makes one sample per id);
``fined_intent`` (the intention tag, looked up lowercased in ``intent_label.txt``'s intent
column); ``coarse_intent``; ``intent_zh`` (the tag in Chinese); ``keyword`` (the sticker's
four MLLM attribute descriptions "gesture,posture,facial,verbal"; the loader stops unless
there are exactly four); ``comet`` (one string, appended by the loader to the context after
``[SEP]``); ``speaker`` (the user replying, "User…"); ``style``; ``form``; ``response``
(not read by the loader). ``intent_label.txt``'s text column is what Int-RA encodes for the
predicted intention (``H^Y``). Sizes (paper): 1,578 conversations (1,269/155/154) and 1,025
stickers; Table 1 counts the 1,025 stickers in every split (one shared pool).

Choices (the official loader's behaviour in brackets where it differs):

- One example per (conversation, image id); ``example_id`` = ``<split>-<textid>-<k>`` with
  k the id's position in ``image_ids``; a ``textid`` seen before in the same file gets
  ``-L<line>`` appended (counted in fixups), unless the whole line repeats an earlier line:
  then it is skipped and counted ("duplicate example"). ``valid`` is ``validation``.
- ``context`` = ``text`` split at ``[SEP]``, stripped, empty turns dropped (``[""]`` if
  none is left); ``text`` is also kept verbatim. [The loader drops the last ``[SEP]`` segment and everything before the
  first tab and treats the remaining tabs as separators too.] Its experiment filters (only
  conversations of exactly 8 segments; image ids containing one chat group's name) select
  subsets for single runs and are not applied.
- ``intent`` = index of ``fined_intent`` (case-insensitive) in the label map: the intent
  column of ``intent_label.txt`` in id order; the label texts go to
  ``Scan.extra["intent_texts"]`` in the same order. An unknown tag is a FormatError.
- ``comet_xIntent`` … ``comet_xReact``: filled when the ``comet`` string names the relations
  (``xIntent: … xNeed: …``, any of ``: ： =`` after the name, separators ``[SEP] ; , |``
  trimmed); a string naming none cannot be split, stays only in the ``comet`` column and is
  counted in fixups (the models then see no knowledge for it). A non-string is an error.
- Extra example columns (strings or null): ``textid``, ``text``, ``speaker``, ``style``,
  ``form``, ``coarse_intent``, ``intent_zh``, ``response`` (non-strings as JSON), ``comet``.
- Stickers: the union of the three ``imgs.tsv`` files, image bytes decoded from base64 in
  either alphabet (the loader's ``urlsafe_b64decode`` accepts both); an id listed again with
  the same bytes is one sticker, with other bytes the first is kept (counted). Invalid base64
  or a line without exactly two fields is a FormatError; bytes that are no image are passed
  on (the runner skips and counts them). ``set_id`` and ``ocr_text`` stay null (the release
  has neither).
- A sticker's ``intent`` and ``desc_*`` come from the examples answering with it: the most
  frequent value, ties going to the first seen (train, valid, test, file order); stickers no
  example uses have them null. Disagreements are counted in fixups. [The loader keeps the
  value written last, which depends on the split being trained.]
- Examples answering with a sticker that no ``imgs.tsv`` holds are kept in the scan; the
  runner skips and reports them ("sticker not in the release"). A conversation with an
  empty ``image_ids`` gives no example (counted in fixups).
- No candidate sets: Int-RA ranks the whole pool.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from typing import Any, Hashable, TypeVar

from ray_sticker.data.convert.base import (
    ConvertOptions, Converter, FormatError, Repeats, Scan, Source, field_of, label_index, register,
)

SPLITS = {"train": "train", "validation": "valid", "test": "test"}  # canonical -> release file prefix
INTENT_FILE = "intent_label.txt"
RELATIONS = ("xIntent", "xNeed", "xWant", "xEffect", "xReact")
ATTRIBUTES = ("gesture", "posture", "facial", "verbal")  # the order of ``keyword``'s parts
EXTRAS = ("speaker", "style", "form", "coarse_intent", "intent_zh", "response")
SEP = "[SEP]"

_RELATION = re.compile(r"(?<![A-Za-z])(" + "|".join(RELATIONS) + r")(?![A-Za-z])\s*[:：=]?", re.IGNORECASE)
_CANON = {r.lower(): r for r in RELATIONS}
_TRIM = " \t\r\n;；,，|"
_URLSAFE = str.maketrans("-_", "+/")

T = TypeVar("T", bound=Hashable)


def _text(value: Any) -> str | None:
    """A release value as a string column: strings as they are, other values as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _clip(line: str, n: int = 80) -> str:
    return line if len(line) <= n else line[:n] + "…"


def _majority(values: list[T]) -> tuple[T, bool]:
    """The most frequent value (ties: the first seen) and whether the values disagree."""
    counts = Counter(values)  # keeps first-seen order, which ``max`` keeps for ties
    return max(counts, key=counts.__getitem__), len(counts) > 1


def comet_relations(comet: str) -> dict[str, str]:
    """``comet_<relation>`` -> text for every relation the string names; ``{}`` if none."""
    parts = _RELATION.split(comet)  # [before, name, text, name, text, ...]
    out: dict[str, str] = {}
    for name, text in zip(parts[1::2], parts[2::2]):
        key = f"comet_{_CANON[name.lower()]}"
        text = text.replace(SEP, " ").strip(_TRIM)
        out[key] = f"{out[key]}; {text}" if key in out else text
    return out


@register
class StickerInt(Converter):
    name = "stickerint"
    task = "select"
    description = "StickerInt reply-with-sticker conversations (Chinese, WeChat), Int-RA's files"

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        fixups: Counter[str] = Counter()
        names, texts = self._intents(src)
        images = self._stickers(src, fixups)
        lowered = [n.lower() for n in names]
        examples: list[dict[str, Any]] = []
        intents: dict[str, list[int]] = {}
        descs: dict[str, list[tuple[str, ...]]] = {}
        repeats = Repeats()
        for split, prefix in SPLITS.items():
            rel = src.require(f"{prefix}_contexts_total_key.jsonl")
            where, seen = src.uri_of(rel), set()
            for no, rec in src.jsonl(rel):
                textid = str(field_of(rec, "textid", where, no))
                text = field_of(rec, "text", where, no)
                ids = field_of(rec, "image_ids", where, no)
                fined = field_of(rec, "fined_intent", where, no)
                if not isinstance(text, str):
                    raise FormatError(where, f"'text' must be a string, got {type(text).__name__}", no)
                if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
                    raise FormatError(where, f"'image_ids' must be a list of ids, got {ids!r}", no)
                if repeats.skip(rec, [f"{split}-{textid}-L{no}-{k}" for k in range(len(ids))], where, no):
                    continue
                intent = label_index(str(fined).lower(), lowered, "fined_intent", where, no)
                desc = self._keyword(rec.get("keyword"), where, no)
                comet = self._comet(rec.get("comet"), where, no, fixups)
                key = textid
                if textid in seen:
                    key = f"{textid}-L{no}"
                    fixups["textid repeated in a file (line number appended to example_id)"] += 1
                seen.add(textid)
                if not ids:
                    fixups["conversations without image_ids (no example)"] += 1
                for k, sticker in enumerate(map(str, ids)):  # one in no imgs.tsv: the runner skips it
                    intents.setdefault(sticker, []).append(intent)
                    if desc is not None:
                        descs.setdefault(sticker, []).append(desc)
                    examples.append({
                        "example_id": f"{split}-{key}-{k}",
                        "split": split,
                        "language": "zh",
                        "context": [t.strip() for t in text.split(SEP) if t.strip()] or [""],
                        "sticker_id": sticker,
                        "intent": intent,
                        **comet,
                        "textid": textid,
                        "text": text,
                        **{f: _text(rec.get(f)) for f in EXTRAS},
                        "comet": rec.get("comet"),
                    })
        stickers = []
        for sticker, image in images.items():
            row: dict[str, Any] = {"sticker_id": sticker, "image": image, "set_id": None, "ocr_text": None,
                                   "intent": None, **{f"desc_{a}": None for a in ATTRIBUTES}}
            if sticker in intents:
                row["intent"], differ = _majority(intents[sticker])
                fixups["stickers whose examples disagree on fined_intent (majority kept)"] += differ
            if sticker in descs:
                desc, differ = _majority(descs[sticker])
                row.update({f"desc_{a}": d for a, d in zip(ATTRIBUTES, desc)})
                fixups["stickers whose examples disagree on keyword (majority kept)"] += differ
            stickers.append(row)
        return Scan(name=self.name, task=self.task, label_maps={"intent": names}, examples=examples,
                    stickers=stickers, version="Int-RA jsonl + base64 imgs.tsv + intent_label.txt",
                    fixups={k: n for k, n in fixups.items() if n}, extra={"intent_texts": texts},
                    skipped=repeats.skipped)

    @staticmethod
    def _intents(src: Source) -> tuple[list[str], list[str]]:
        """Intent names and label texts from ``intent_label.txt``, in id order."""
        where = src.uri_of(src.require(INTENT_FILE))
        rows: dict[int, tuple[str, str]] = {}
        for no, line in src.lines(INTENT_FILE):
            fields = [f.strip() for f in line.split("\t")]
            if len(fields) != 3 or not fields[0].removeprefix("-").isdecimal() or not fields[1]:
                raise FormatError(where, f"expected 'id<TAB>intent<TAB>text' with an integer id, got {line!r}", no)
            if int(fields[0]) in rows or fields[1].lower() in (n.lower() for n, _ in rows.values()):
                raise FormatError(where, f"intent id or name listed twice: {line!r}", no)
            rows[int(fields[0])] = (fields[1], fields[2])
        if not rows:
            raise FormatError(where, "no intent labels")
        ordered = [rows[i] for i in sorted(rows)]
        return [n for n, _ in ordered], [t for _, t in ordered]

    @staticmethod
    def _stickers(src: Source, fixups: Counter[str]) -> dict[str, bytes]:
        """Sticker id -> image bytes over every split's ``imgs.tsv``, first listing kept."""
        images: dict[str, bytes] = {}
        for prefix in SPLITS.values():
            rel = src.require(f"{prefix}_imgs.tsv")
            where = src.uri_of(rel)
            # lines, not Source.tsv: a base64 field can pass the csv module's field size limit
            for no, line in src.lines(rel):
                fields = line.strip().split("\t")
                if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                    raise FormatError(where, f"expected 'image_id<TAB>base64', got {len(fields)} field(s): "
                                             f"{_clip(line)!r}", no)
                sticker, b64 = fields[0].strip(), fields[1].strip()
                try:
                    image = base64.b64decode(b64.translate(_URLSAFE), validate=True)
                except binascii.Error as exc:
                    raise FormatError(where, f"invalid base64 for sticker {sticker!r} ({exc}): {_clip(line)!r}",
                                      no) from None
                if sticker in images and images[sticker] != image:
                    fixups["sticker id listed again with other image bytes (first kept)"] += 1
                images.setdefault(sticker, image)
        return images

    @staticmethod
    def _keyword(keyword: Any, where: str, no: int) -> tuple[str, ...] | None:
        """The four attribute descriptions of ``keyword``; ``None`` when it is absent or empty."""
        if keyword is None or keyword == "":
            return None
        parts = str(keyword).split(",")
        if len(parts) != len(ATTRIBUTES):
            raise FormatError(where, f"'keyword' must be {len(ATTRIBUTES)} comma-separated descriptions "
                                     f"({','.join(ATTRIBUTES)}), got {len(parts)}: {keyword!r}", no)
        return tuple(p.strip() for p in parts)

    @staticmethod
    def _comet(comet: Any, where: str, no: int, fixups: Counter[str]) -> dict[str, str | None]:
        """The five ``comet_*`` columns of one conversation (null where not named)."""
        if comet is not None and not isinstance(comet, str):
            raise FormatError(where, f"'comet' must be a string, got {type(comet).__name__}", no)
        found = comet_relations(comet) if comet else {}
        if comet and not found:
            fixups["comet without relation names (comet_* left empty)"] += 1
        return {f"comet_{r}": found.get(f"comet_{r}") for r in RELATIONS}
