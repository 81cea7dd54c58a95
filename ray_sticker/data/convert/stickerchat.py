"""StickerChat, the sticker response selection release of SRS (Gao et al., WWW 2020).

Layout (as the SRS README and loader ``text_batcher.py`` read it)::

    release_train.json  release_val.json  release_test.json      JSON lines, one sample a line:
        {"context": [{"text": "我 正在 用 ...", "reply_to_msg_id": null, "id": 52000, "from_id": 284336329}, ...],
         "current": {"sticker_set_id": 556029562811580420, "sticker_id": 556029562811581404,
                     "sticker_alt": "😀", "from_id": 271484871, "reply_to_msg_id": null}}
    npy_stickers/<sticker_set_id>/<sticker_id>.npy               uint8 HWC RGB arrays, at most 128x128
    npy_stickers/<sticker_set_id>/emoji_mapping.txt              "<sticker_id>\\t<emoji>" per sticker of the set

Sizes (SRS README, EIGML table 1, PBR loader): 320,168 / 10,000 / 10,000 samples, 174,695 stickers in 3,516 sets; ``val`` becomes
``validation``. There are no labels: ``label_maps`` is empty.

Choices:

- ``example_id`` = ``<split>-<line number>`` (samples carry no id of their own). A line
  identical to an earlier line of its file is skipped and counted ("duplicate example"); set
  and sticker ids must be integers (or strings without ``/``).
- ``context``: the turns' texts in order, empty turns dropped (as PBR does); the release's
  whitespace tokenisation is undone between CJK / non-ASCII characters and kept between ASCII
  words ("没 想到 还 能 上 TG" -> "没想到还能上TG"). PBR instead removes every space, which also
  glues English words together. A sample without any text gets ``[""]`` (kept, so the test split
  keeps its 10,000 samples; SRS drops samples with no turn at all).
- ``sticker_id`` = ``<sticker_set_id>/<sticker_id>``; extra column ``sticker_alt`` (the emoji the
  set's author gave the sticker, often arbitrary).
- Stickers: every ``.npy`` of every set the samples use, found by listing the set directory; the
  emoji comes from the set's ``emoji_mapping.txt`` (extra column ``emoji``, ``None`` where the
  mapping lacks the sticker). ``ocr_text`` stays empty: the release has no sticker text. The
  SRS loader takes a set's stickers from ``emoji_mapping.txt`` instead and drops samples whose
  positive is not in it; listing keeps those samples and never offers a candidate without an
  image (``emoji_mapping.txt`` entries without a ``.npy`` are counted in ``fixups``). A positive
  whose ``.npy`` is not listed is still added (the runner then reports the missing image and
  drops the sample).
- Candidates: the positive plus ``num_candidates - 1`` distinct stickers drawn at random from the
  rest of its set, seeded by ``options.seed`` and the example id, in a seeded order; the positive
  is never among its own distractors. SRS and PBR take the first nine of ``emoji_mapping.txt``
  (and PBR fails to remove the positive). A set too small is padded with one shared gray sticker
  (``__pad_gray__``, 128x128 RGB 127, as PBR pads with gray images), repeated as often as needed
  (the only repeated id a candidate set holds); the extra column ``candidates_padded`` counts the
  pads of each sample and ``Scan.extra["padded_candidate_sets"]`` the padded samples.
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ray_sticker.data.candidates import example_rng, sample_candidates
from ray_sticker.data.convert.base import (
    ConvertOptions, Converter, FormatError, Repeats, Scan, Source, field_of, register,
)

SPLIT_FILES = {"train": "release_train.json", "validation": "release_val.json", "test": "release_test.json"}
STICKER_DIR = "npy_stickers"
EMOJI_FILE = "emoji_mapping.txt"
PAD_ID = "__pad_gray__"
PAD_SIZE, PAD_GRAY = 128, 127
_LIST_THREADS = 16  # set directories are listed concurrently (thousands of sets, often on S3)
_CJK_GAP = re.compile(r"(?<=[^\x00-\x7f]) (?=\S)|(?<=\S) (?=[^\x00-\x7f])")


def detokenize(text: str) -> str:
    """Undo the release's word segmentation: drop the spaces next to non-ASCII characters."""
    return _CJK_GAP.sub("", " ".join(text.split()))


@dataclass
class _StickerSet:
    ids: list[str]  # sticker ids with a .npy, in listing order
    emojis: dict[str, str]


def _read_set(src: Source, set_id: str) -> _StickerSet:
    rel = f"{STICKER_DIR}/{set_id}"
    names = src.listdir(rel)
    emojis: dict[str, str] = {}
    if EMOJI_FILE in names:
        where = src.uri_of(f"{rel}/{EMOJI_FILE}")
        for no, fields in src.tsv(f"{rel}/{EMOJI_FILE}"):
            if len(fields) != 2:
                raise FormatError(where, f"expected 'sticker_id<TAB>emoji', got {len(fields)} field(s)", no)
            emojis[fields[0].strip().removesuffix(".npy")] = fields[1].strip()
    return _StickerSet(ids=[n[: -len(".npy")] for n in names if n.endswith(".npy")], emojis=emojis)


def _gray_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (PAD_SIZE, PAD_SIZE), (PAD_GRAY,) * 3).save(buf, format="PNG")
    return buf.getvalue()


def _context(turns: Any, where: str, at: int) -> list[str]:
    if not isinstance(turns, list):
        raise FormatError(where, f"'context' must be a list of turns, got {type(turns).__name__}", at)
    texts = [detokenize(str(field_of(t, "text", where, at) or "")) for t in turns]
    return [t for t in texts if t] or [""]


def _id(current: Any, key: str, where: str, at: int) -> str:
    value = field_of(current, key, where, at)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or "/" in str(value) or not str(value).strip():
        raise FormatError(where, f"{key} must be an integer, got {value!r}", at)
    return str(value)


def _candidates(positive: str, set_pool: list[str], k: int, rng: np.random.Generator) -> list[str]:
    """``positive`` + ``k - 1`` other stickers of its set, padded with the gray sticker, shuffled."""
    others = [s for s in set_pool if s != positive]
    if len(others) >= k - 1:
        return sample_candidates(positive, set_pool, k, rng)
    chosen = others + [PAD_ID] * (k - 1 - len(others)) + [positive]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _sticker(set_id: str, sid: str, emojis: dict[str, str]) -> dict[str, Any]:
    return {"sticker_id": f"{set_id}/{sid}", "image_ref": f"{STICKER_DIR}/{set_id}/{sid}.npy",
            "set_id": set_id, "ocr_text": None, "emoji": emojis.get(sid) or None}


@register
class StickerChat(Converter):
    name = "stickerchat"
    task = "select"
    description = "StickerChat (SRS release): Telegram dialogues answered with a sticker, same-set candidates"

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        examples: list[dict[str, Any]] = []
        repeats = Repeats()
        for split, rel in SPLIT_FILES.items():
            where = src.uri_of(src.require(rel))
            for no, rec in src.jsonl(rel):
                if repeats.skip(rec, [f"{split}-{no}"], where, no):
                    continue
                current = field_of(rec, "current", where, no)
                set_id = _id(current, "sticker_set_id", where, no)
                examples.append({
                    "example_id": f"{split}-{no}",
                    "split": split,
                    "language": "zh",
                    "context": _context(field_of(rec, "context", where, no), where, no),
                    "sticker_id": f"{set_id}/{_id(current, 'sticker_id', where, no)}",
                    "sticker_alt": current.get("sticker_alt"),
                })

        set_ids = sorted({e["sticker_id"].split("/")[0] for e in examples})
        with ThreadPoolExecutor(_LIST_THREADS) as threads:
            sets = dict(zip(set_ids, threads.map(lambda s: _read_set(src, s), set_ids)))
        stickers = {f"{set_id}/{sid}": _sticker(set_id, sid, sets[set_id].emojis)
                    for set_id in set_ids for sid in sets[set_id].ids}
        pools = {set_id: [f"{set_id}/{sid}" for sid in sets[set_id].ids] for set_id in set_ids}

        no_npy = sum(len(set(sets[s].emojis) - set(sets[s].ids)) for s in set_ids)
        padded = 0
        for ex in examples:
            positive = ex["sticker_id"]
            set_id, sid = positive.split("/")
            if positive not in stickers:
                stickers[positive] = _sticker(set_id, sid, sets[set_id].emojis)
            ex["candidate_ids"] = _candidates(positive, pools[set_id], options.num_candidates,
                                              example_rng(ex["example_id"], options.seed))
            ex["candidates_padded"] = ex["candidate_ids"].count(PAD_ID)
            padded += ex["candidates_padded"] > 0
        rows = list(stickers.values())
        if padded:
            rows.append({"sticker_id": PAD_ID, "image": _gray_png(), "set_id": None, "ocr_text": None, "emoji": None})
        return Scan(name=self.name, task=self.task, label_maps={}, examples=examples, stickers=rows,
                    version="SRS release: release_{train,val,test}.json + npy_stickers/<set>/",
                    fixups={"emoji_mapping.txt entries without a .npy left out": no_npy} if no_npy else {},
                    extra={"padded_candidate_sets": padded}, skipped=repeats.skipped)
