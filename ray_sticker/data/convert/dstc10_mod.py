"""DSTC10 track 1, MOD (Meme incorporated Open-domain Dialogue), Chinese release, as meme selection.

Layout (DSTC10-MOD ``data/README.md``; the meme folder and file names as the loader of Zhang et
al. 2022, "Selecting Stickers in Open-Domain Dialogue through Multitask Learning", reads them)::

    c_train.json             {"dialogue 43992": [{"speaker_id": "[speaker1]", "emotion_id": 0,
                                                  "img_id": "195", "txt": "..."}, {"speaker_id": ..., "txt": ...}, ...]}
    c_val.json               same format (``validation.json`` is accepted as well)
    c_test_easy_task2.json   optional, task-2 records: [{"history": [utterances], "candidate":
    c_test_hard_task2.json       {"speaker_id": ..., "set": ["013", ...]}, "answer": {"speaker_id": ..., "img_id": "196"}}]
    img2id.json              {"<file name in meme_set/>": "<img id>"}           } at the root or
    emotion_dict.json        {"<emotion name>": <emotion id>}                   } under
    meme_set/<file name>     the meme images                                    } supplementary/
    id2feature.json          CLIP features per img id (not read)

Sizes: ~45K dialogues, 307 memes; EIGML reports 211,575 training and 3,542 evaluation samples
(it evaluates on the validation set since the test labels were not public). The hard test set
uses memes unseen in training.

Choices:

- Samples: every utterance with an ``img_id`` except a dialogue's first utterance (as Zhang et
  al., whose preprocessing EIGML reuses; their loader also drops img id ``000`` by a truthiness
  slip, which is not copied). ``context`` = the texts of the earlier utterances in
  order followed by the utterance's own ``txt`` — task 2 of the challenge selects the meme given
  the history *and* the text response it goes with, and both reference loaders (MemeBERT,
  Zhang et al.) include it. The own text is also kept as the extra column ``reply_text`` (None
  if the utterance has none); other extra columns: ``speaker_id``, ``dialogue_id``, ``turn``.
  Utterances without text add nothing; a sample without any text gets ``[""]``.
- ``emotion`` = ``emotion_id`` mapped through ``emotion_dict.json`` (label map ordered by id);
  an utterance with a meme but no ``emotion_id`` gets ``None``. The file's direction is only
  described in prose, so ``{"0": "name"}`` is read as well as ``{"name": 0}``.
- Meme ids are written without leading zeros (``"030"`` -> ``"30"``) so that the dialogue files'
  and ``img2id.json``'s spellings always agree; an ``img_id`` outside ``img2id.json`` fails.
- Stickers: every meme of ``img2id.json`` (one image in ``meme_set/`` is not in it and is left
  out, as Zhang et al. do), extra column ``file_name``; no set, text or labels.
- Candidates: the positive plus ``num_candidates - 1`` random distractors from the whole meme
  pool (EIGML's protocol for this dataset). The evaluation splits store one draw, seeded by
  ``options.seed`` and the example id, so every evaluation ranks the same sets; train rows
  store none: training draws them from the pool (``data.train_negatives``: once, or anew
  each epoch as a sampler of negatives does).
- Splits: ``c_train`` -> train, ``c_val`` -> validation (the set EIGML reports on), both test
  files when present -> test, told apart by the extra column ``test_set`` ("easy"/"hard"); one
  test file without the other is refused (FileNotFoundError naming the missing one).
  The challenge's own candidate sets of the test files are kept as ``release_candidates`` but
  not used (the README's example holds 11 memes); test records whose answer has no ``img_id`` (the unlabelled
  challenge version) are skipped and counted in ``fixups``.
- ``example_id`` = ``<split>-<dialogue number>-<utterance index>``, ``test-<easy|hard>-<record>``.
- Repeats: a dialogue key, meme file name or emotion given twice in a JSON object is a
  FormatError; a test record identical to an earlier one of its file is skipped and counted
  ("duplicate example"). Utterance fields other than :data:`UTTERANCE_FIELDS` are ignored and
  the utterances holding them counted in ``fixups`` (a misspelt ``img_id`` loses a sample).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

from ray_sticker.data.candidates import example_rng, sample_candidates
from ray_sticker.data.convert.base import (
    ConvertOptions, Converter, FormatError, Repeats, Scan, Source, field_of, label_index, register,
)

DIALOGUE_FILES = {"train": ("c_train.json",), "validation": ("c_val.json", "validation.json")}
TEST_FILES = {"easy": "c_test_easy_task2.json", "hard": "c_test_hard_task2.json"}
SUPPLEMENTARY = "supplementary"
MEME_DIR = "meme_set"
UTTERANCE_FIELDS = frozenset({"speaker_id", "emotion_id", "img_id", "txt"})
FIX_FIELDS = f"utterances with fields other than {', '.join(sorted(UTTERANCE_FIELDS))} (those ignored)"


def _meme_id(value: Any, where: str, at: str) -> str:
    if isinstance(value, str) and value.strip().isdecimal() or isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    raise FormatError(where, f"img_id {value!r} is not a number", at)


def _emotions(src: Source, rel: str) -> tuple[list[str], dict[int, str]]:
    """Emotion names ordered by id and the id -> name codes, from either direction of the file."""
    where, raw = src.uri_of(rel), src.json(rel)
    if not isinstance(raw, dict) or not raw:
        raise FormatError(where, "expected a JSON object mapping emotion names to ids")
    pairs = list(raw.items())
    if all(isinstance(v, str) and k.strip().isdecimal() for k, v in pairs):
        pairs = [(v, int(k)) for k, v in pairs]
    if not all(isinstance(v, int) and not isinstance(v, bool) for _, v in pairs):
        raise FormatError(where, "emotion ids must be integers")
    codes = {i: name for name, i in sorted(pairs, key=lambda p: p[1])}
    if len(codes) != len(pairs) or len(set(codes.values())) != len(codes):
        raise FormatError(where, "two emotions share an id or a name")
    return list(codes.values()), codes


def _text(utterance: Any, where: str, at: str) -> str:
    if not isinstance(utterance, dict):
        raise FormatError(where, f"expected an utterance object, got {type(utterance).__name__}", at)
    return str(utterance.get("txt") or "").strip()


def _sample(example_id: str, split: str, context: list[str], sticker_id: str, **extra: Any) -> dict[str, Any]:
    return {"example_id": example_id, "split": split, "language": "zh", "context": context or [""],
            "sticker_id": sticker_id, **extra}


class _Reader:
    """Reads one release's sample files against its meme pool and emotion labels."""

    def __init__(self, src: Source, known: set[str], emotions: list[str], codes: dict[int, str]):
        self.src, self.known, self.emotions, self.codes = src, known, emotions, codes
        self.fixups: Counter = Counter()
        self.repeats = Repeats()

    def meme(self, value: Any, where: str, at: str) -> str:
        sid = _meme_id(value, where, at)
        if sid not in self.known:
            raise FormatError(where, f"img_id {value!r} is not in img2id.json", at)
        return sid

    def dialogues(self, rel: str, split: str) -> Iterator[dict[str, Any]]:
        """One sample per utterance with a meme, but the first, of a ``{"dialogue N": [...]}`` file."""
        where, dialogues = self.src.uri_of(rel), self.src.json(rel)
        if not isinstance(dialogues, dict):
            raise FormatError(where, f"expected a JSON object of dialogues, got {type(dialogues).__name__}")
        for key, turns in dialogues.items():
            if not isinstance(turns, list):
                raise FormatError(where, "a dialogue must be a list of utterances", key)
            history: list[str] = []
            for i, utt in enumerate(turns):
                at = f"{key}, utterance {i}"
                text = _text(utt, where, at)
                self.fixups[FIX_FIELDS] += not UTTERANCE_FIELDS.issuperset(utt)
                if i > 0 and utt.get("img_id") not in (None, ""):
                    emotion = utt.get("emotion_id")
                    yield _sample(
                        f"{split}-{key.removeprefix('dialogue ').strip()}-{i}", split,
                        history + [text] if text else list(history), self.meme(utt["img_id"], where, at),
                        emotion=None if emotion is None else label_index(
                            emotion, self.emotions, "emotion_id", where, at, codes=self.codes),
                        reply_text=text or None, speaker_id=utt.get("speaker_id"), dialogue_id=key, turn=i,
                        test_set=None, release_candidates=None)
                if text:
                    history.append(text)

    def task2(self, rel: str, level: str) -> Iterator[dict[str, Any]]:
        """One sample per answered record of a task-2 test file; unanswered records are counted."""
        where, records = self.src.uri_of(rel), self.src.json(rel)
        if not isinstance(records, list):
            raise FormatError(where, f"expected a JSON array of records, got {type(records).__name__}")
        for r, rec in enumerate(records):
            at = f"record {r}"
            if self.repeats.skip(rec, [f"test-{level}-{r}"], where, at):
                continue
            answer = field_of(rec, "answer", where, at)
            if field_of(answer, "img_id", where, at) in (None, ""):
                self.fixups["test records without an answer skipped"] += 1
                continue
            history = field_of(rec, "history", where, at)
            if not isinstance(history, list):
                raise FormatError(where, "'history' must be a list of utterances", at)
            texts = [_text(u, where, at) for u in history]
            candidate = rec.get("candidate")
            offered = (candidate.get("set") if isinstance(candidate, dict) else None) or []
            yield _sample(
                f"test-{level}-{r}", "test", [t for t in texts if t], self.meme(answer["img_id"], where, at),
                emotion=None, reply_text=(texts[-1] if texts else "") or None,
                speaker_id=answer.get("speaker_id"), dialogue_id=None, turn=None, test_set=level,
                release_candidates=[self.meme(c, where, at) for c in offered] or None)


@register
class DSTC10MOD(Converter):
    name = "dstc10-mod"
    task = "select"
    description = "DSTC10-MOD (Chinese): open-domain dialogues answered with one of 307 memes, random candidates"

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        sup = f"{SUPPLEMENTARY}/" if src.is_dir(SUPPLEMENTARY) else ""
        emotions, codes = _emotions(src, src.require(f"{sup}emotion_dict.json"))
        stickers = _stickers(src, src.require(f"{sup}img2id.json"), src.require(f"{sup}{MEME_DIR}"))
        pool = [s["sticker_id"] for s in stickers]
        reader = _Reader(src, set(pool), emotions, codes)
        examples = [ex for split, names in DIALOGUE_FILES.items() for ex in reader.dialogues(src.require(*names), split)]
        if any(src.exists(rel) for rel in TEST_FILES.values()):  # both or neither
            examples += [ex for level, rel in TEST_FILES.items() for ex in reader.task2(src.require(rel), level)]
        for ex in (ex for ex in examples if ex["split"] != "train"):
            ex["candidate_ids"] = sample_candidates(ex["sticker_id"], pool, options.num_candidates,
                                                    example_rng(ex["example_id"], options.seed))
        return Scan(name=self.name, task=self.task, label_maps={"emotion": emotions}, examples=examples,
                    stickers=stickers, version="DSTC10-MOD Chinese: c_train, c_val, c_test_*_task2, meme_set/",
                    fixups={k: n for k, n in reader.fixups.items() if n}, skipped=reader.repeats.skipped)


def _stickers(src: Source, rel: str, meme_dir: str) -> list[dict[str, Any]]:
    """One row per meme of ``img2id.json``, ordered by id."""
    where, img2id = src.uri_of(rel), src.json(rel)
    if not isinstance(img2id, dict):
        raise FormatError(where, "expected a JSON object mapping meme file names to img ids")
    rows: dict[str, dict[str, Any]] = {}
    for file_name, value in img2id.items():
        sid = _meme_id(value, where, f"entry {file_name!r}")
        if sid in rows:
            raise FormatError(where, f"img id {value!r} is given to two files", f"entry {file_name!r}")
        rows[sid] = {"sticker_id": sid, "image_ref": f"{meme_dir}/{file_name}", "set_id": None,
                     "ocr_text": None, "file_name": file_name}
    return [rows[k] for k in sorted(rows, key=int)]
