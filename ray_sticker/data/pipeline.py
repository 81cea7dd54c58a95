"""Ray Data ingest: canonical Parquet -> decoded, resized, tokenized numpy batches.

``read_split`` checks the split's schema up front (a missing column fails naming it),
then streams it with ``ray.data.read_parquet``. ``preprocess_batch`` runs in Ray Data
tasks on CPU: it decodes and transforms images, tokenizes text and maps labels. Rows
that cannot be used are not dropped silently: they stay in the batch with a non-zero
``skip`` code (see ``SKIP_REASONS``); the training loop removes them, counts them per
reason across ranks and fails the run above ``data.max_corrupt_fraction``. Texts longer than
their input's ``max_length`` are cut, and counted per row in ``truncated``.

What a batch holds is declared by the model config (``models/output.py``): several text
inputs, optional labels, and for selection the candidates' rows in the sticker pool
(``candidate_idx``), the positive's position (``target``) and, for sets drawn rather than
stored, the key by which training redraws them (``candidate_key``). With ``group_column`` each
row also carries that column's value as UTF-8 bytes (``group_bytes``, ``GROUP_BYTES`` wide), by
which evaluation reports metrics per group (M2SA: per language). The pool itself — encoded
sticker images and tokenized sticker texts — is read once per run and shared (data/pool.py); the
training loop gathers and decodes each batch's candidates from it.
"""

from __future__ import annotations

import collections
import functools
import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from ray_sticker import storage
from ray_sticker.data import schema
from ray_sticker.data.images import ImageDecodeError, decode_image, eval_transform
from ray_sticker.data.synonyms import SynonymSpec, load_synonyms, replace_synonyms, variant_seed

log = logging.getLogger(__name__)

SKIP_OK = 0
GROUP_BYTES = 32  # bytes of a group value (evaluation per group): language codes, dataset names
SKIP_REASONS = {1: "corrupt image", 2: "missing image", 3: "label outside the label map", 4: "missing label",
                5: "unknown sticker id", 6: "positive not among the candidates", 7: "wrong number of candidates"}


class DataQualityError(RuntimeError):
    """Too many unusable rows, or a dataset that cannot feed the model."""


@dataclass(frozen=True)
class TextInput:
    """One tokenized text input: ``columns`` joined (or, ``separate``, one text each). A
    ``raw`` input is not tokenized: each column's text travels as UTF-8 bytes
    ``<name>_bytes`` ``(B, C, max_length)`` uint8, zero-padded (models that build prompts
    themselves, e.g. the MLLM baselines, decode them with :func:`decode_texts`)."""

    name: str  # "text" -> input_ids / attention_mask; else <name>_input_ids / <name>_attention_mask
    columns: tuple[str, ...]
    tokenizer: str
    max_length: int
    default: str = ""
    separate: bool = False
    raw: bool = False

    @property
    def keys(self) -> tuple[str, str]:
        prefix = "" if self.name == "text" else f"{self.name}_"
        return f"{prefix}input_ids", f"{prefix}attention_mask"

    @property
    def bytes_key(self) -> str:
        return f"{self.name}_bytes"


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model needs from each row; built from the experiment + model config.
    ``tokenizer``/``max_text_length`` are the shorthand for one ``text`` input over ``context``."""

    labels: tuple[tuple[str, int], ...]  # required (label column, number of classes)
    tokenizer: str | None = None
    max_text_length: int = 128
    use_image: bool = True
    image_size: int = 224
    text_column: str = "context"
    image_column: str = "image"
    texts: tuple[TextInput, ...] = ()
    aux_labels: tuple[tuple[str, int], ...] = ()  # optional labels: -1 where missing
    # Selection: candidates per example and the sticker pool's ids in pool order.
    num_candidates: int = 0
    sticker_ids: tuple[str, ...] = ()
    seed: int = 0
    group_column: str | None = None  # evaluation reports metrics per value of this column
    synonyms: SynonymSpec | None = None  # train split: replaced copies of each text (data/synonyms.py)

    def __post_init__(self) -> None:
        if self.tokenizer and not self.texts:
            object.__setattr__(self, "texts", (TextInput("text", (self.text_column,), self.tokenizer,
                                                         self.max_text_length),))

    @property
    def select(self) -> bool:
        return self.num_candidates > 0

    @functools.cached_property
    def sticker_index(self) -> dict[str, int]:
        """Sticker id -> pool row; built once per deserialised spec, not per batch."""
        return {sid: i for i, sid in enumerate(self.sticker_ids)}

    def row_bytes(self) -> int:
        """Bytes of one preprocessed row (what a cached split holds per row)."""
        n = 2 + 8 * len(self.labels + self.aux_labels)  # skip + truncated, labels
        copies = 1 + (self.synonyms.variants if self.synonyms else 0)
        for t in self.texts:
            per_text = t.max_length if t.raw else 16 * t.max_length * copies  # bytes, or int64 ids + mask
            n += per_text * (len(t.columns) if t.separate or t.raw else 1)
        if self.select:
            n += 8 * (self.num_candidates + 2)  # candidate_idx, target, candidate_key
        elif self.use_image:
            n += 3 * self.image_size * self.image_size
        if self.group_column:
            n += GROUP_BYTES
        return n

    def columns(self) -> list[str]:
        cols = ["example_id"]
        for t in self.texts:
            cols += [c for c in t.columns if c not in cols]
        if self.use_image and not self.select:
            cols.append(self.image_column)
        if self.select:
            cols += ["sticker_id", "candidate_ids"]
        cols += [name for name, _ in self.labels + self.aux_labels if name not in cols]
        if self.group_column and self.group_column not in cols:
            cols.append(self.group_column)
        return cols


def _parquet_dataset(where: str, missing: str, empty: str):
    """A pyarrow dataset of the Parquet files at ``where``; the messages name what is wrong."""
    fs, path = storage.resolve(where)
    try:
        ds = pads.dataset(path, filesystem=fs, format="parquet")
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None
    if not ds.files:
        raise DataQualityError(empty)
    return ds


def split_files(uri: str, split: str):
    """One split's Parquet files as a pyarrow dataset (its schema read from footers only)."""
    where = schema.split_uri(schema.tables_uri(uri), split)
    return _parquet_dataset(where, f"split '{split}' not found: {where}", f"split '{split}' has no Parquet files: {where}")


def split_schema(uri: str, split: str):
    """The Arrow schema of one split's Parquet files (reads footers only)."""
    return split_files(uri, split).schema


def read_parquet(paths, filesystem, columns: list[str] | None = None, num_blocks: int | None = None):
    """``ray.data.read_parquet`` on Ray Data's first Parquet datasource, unless the environment
    chooses (``RAY_DATA_USE_DATASOURCE_V2``). The second reads footers in actors, a fresh
    process per read: on 2 cores a 1-epoch tiny Ray Train run took 59 s instead of 47, and
    ``bench ingest`` gave 0.38 of the DataLoader instead of 0.52 (BENCHMARKS.md). Sets this
    process's ``DataContext``, which the datasets it builds carry to their tasks."""
    import os

    import ray.data

    if "RAY_DATA_USE_DATASOURCE_V2" not in os.environ:
        ray.data.DataContext.get_current().use_datasource_v2 = False
    return ray.data.read_parquet(paths, filesystem=filesystem, columns=columns, override_num_blocks=num_blocks)


def read_blocks(files: int) -> int:
    """Read tasks for a split of ``files`` Parquet files: one per file, so that each read fuses
    with the preprocessing after it into one task (Ray Data fuses them only when it does not
    split a read's output further); below two per cluster CPU, that many, split. Left to itself
    Ray Data aims at 200 blocks: a split of 12 shards became 204 blocks of about 30 rows, each
    read a task of its own before the preprocessing's, half the samples/s (``bench ingest``)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    return max(files, 2 * cpus)


def read_split(uri: str, split: str, columns: list[str]):
    """A Ray Dataset of one split with only ``columns``; fails naming missing ones first."""
    files = split_files(uri, split)
    schema.check_columns(files.schema, columns, f"dataset {uri} split '{split}'")
    return read_parquet(sorted(files.files), files.filesystem, columns=columns, num_blocks=read_blocks(len(files.files)))


def _as_text(value, joiner: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    return joiner.join(str(t) for t in value)  # a list of turns


def encode_texts(texts: list[str], max_bytes: int, truncated: np.ndarray | None = None) -> np.ndarray:
    """UTF-8 bytes of each text, zero-padded to ``max_bytes`` (cut at a character boundary);
    ``truncated[i]`` is set for the texts that were cut."""
    out = np.zeros((len(texts), max_bytes), dtype=np.uint8)
    for i, text in enumerate(texts):
        full = text.encode("utf-8")
        data = full[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")
        out[i, :len(data)] = np.frombuffer(data, dtype=np.uint8)
        if truncated is not None and len(full) > max_bytes:
            truncated[i] = True
    return out


def decode_texts(data) -> list:
    """Inverse of :func:`encode_texts` over the last axis: ``(..., L)`` bytes -> nested lists of str."""
    arr = np.asarray(data.cpu() if hasattr(data, "cpu") else data, dtype=np.uint8)
    if arr.ndim == 1:
        return arr.tobytes().rstrip(b"\0").decode("utf-8", errors="replace")
    return [decode_texts(row) for row in arr]


def _tokenize(tok, texts: list[str], max_length: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Padded, truncated encodings and which texts were longer than ``max_length`` tokens
    (found by encoding one token more; only those are encoded again, cut to size)."""
    if not texts:  # an empty block (e.g. an empty Parquet shard)
        empty = np.zeros((0, max_length), dtype=np.int64)
        return {"input_ids": empty, "attention_mask": empty.copy()}, np.zeros(0, dtype=bool)
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length + 1, return_tensors="np")
    long = enc["attention_mask"][:, -1].astype(bool)
    out = {k: np.ascontiguousarray(v[:, :max_length]) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    if long.any():
        cut = tok([texts[i] for i in np.flatnonzero(long)], padding="max_length", truncation=True,
                  max_length=max_length, return_tensors="np")
        for k in out:
            out[k][long] = cut[k]
    return out, long


def tokenize_inputs(batch: dict[str, np.ndarray], texts: tuple[TextInput, ...], n: int,
                    synonyms: SynonymSpec | None = None, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Token ids and masks of every text input (raw inputs: their bytes; see :class:`TextInput`),
    and per row how many of its texts were cut at their input's ``max_length``. With
    ``synonyms``, each tokenized input also gets ``synonym_<ids key>``/``synonym_<mask key>``
    ``(B, V, ...)``: its ``V`` copies with synonyms replaced (data/synonyms.py)."""
    from ray_sticker.data.text import load_tokenizer

    out: dict[str, np.ndarray] = {}
    truncated = np.zeros(n, dtype=np.int64)
    for t in texts:
        if t.raw:  # turns of a dialogue on their own lines
            flat = [_as_text(v, "\n") or t.default for i in range(n)
                    for v in (batch[c][i] for c in t.columns)]
            cut = np.zeros(len(flat), dtype=bool)
            out[t.bytes_key] = encode_texts(flat, t.max_length, cut).reshape(n, len(t.columns), t.max_length)
            truncated += cut.reshape(n, len(t.columns)).sum(axis=1)
            continue
        tok = load_tokenizer(t.tokenizer)
        sep = tok.sep_token or "|"
        per_column = [[_as_text(v, f" {sep} ") or t.default for v in batch[c]] for c in t.columns]
        copies = [per_column] + [_replaced(per_column, batch["example_id"], synonyms, seed, v)
                                 for v in range(1, 1 + (synonyms.variants if synonyms else 0))]
        encoded = []
        for columns in copies:
            if t.separate:  # row-major (n, C)
                flat = [columns[c][i] for i in range(n) for c in range(len(t.columns))]
            else:
                flat = [f" {sep} ".join(p for p in (col[i] for col in columns) if p) or t.default for i in range(n)]
            enc, cut = _tokenize(tok, flat, t.max_length)
            shape = (n, len(t.columns), t.max_length) if t.separate else (n, t.max_length)
            if not encoded:  # the row's own text (its synonym copies are not counted again)
                truncated += cut.reshape(n, len(t.columns) if t.separate else 1).sum(axis=1)
            encoded.append([enc[k].astype(np.int64).reshape(shape) for k in ("input_ids", "attention_mask")])
        for i, key in enumerate(t.keys):
            out[key] = encoded[0][i]
            if len(encoded) > 1:
                out[f"synonym_{key}"] = np.stack([e[i] for e in encoded[1:]], axis=1)  # (B, V, ...)
    return out, np.minimum(truncated, 127).astype(np.int8)


def _replaced(columns: list[list[str]], example_ids, spec: SynonymSpec, seed: int, variant: int) -> list[list[str]]:
    """Copy ``variant`` of each column's texts with synonyms replaced, seeded per (seed, example, variant)."""
    table = load_synonyms(spec.uri)
    rngs = [np.random.default_rng(variant_seed(seed, str(e), variant)) for e in example_ids]
    return [[replace_synonyms(text, table, spec.alpha, rng) for text, rng in zip(col, rngs)] for col in columns]


def _labels(raw, num_classes: int, skip: np.ndarray, required: bool) -> np.ndarray:
    labels = np.full(len(raw), -1, dtype=np.int64)
    for i, value in enumerate(raw):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            if required:
                skip[i] = skip[i] or 4
        elif not 0 <= int(value) < num_classes:
            skip[i] = skip[i] or 3
        else:
            labels[i] = int(value)
    return labels


def _candidates(batch: dict[str, np.ndarray], spec: PreprocessSpec, skip: np.ndarray) -> dict[str, np.ndarray]:
    """Pool rows of each example's candidates and the positive's position among them; rows
    without a stored candidate set get one drawn from the pool, seeded by the example id, and
    keep that id's key in ``candidate_key`` (-1 for stored sets), by which training may redraw
    the set each epoch (data/candidates.py)."""
    from ray_sticker.data.candidates import example_key, example_rng, sample_candidates

    n, k = len(batch["example_id"]), spec.num_candidates
    index = spec.sticker_index
    idx = np.zeros((n, k), dtype=np.int64)
    target = np.full(n, -1, dtype=np.int64)
    keys = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        positive = batch["sticker_id"][i]
        if positive is None or positive not in index:
            skip[i] = skip[i] or (6 if positive is None else 5)
            continue
        cands = batch["candidate_ids"][i]
        if cands is None or len(cands) == 0:
            example_id = str(batch["example_id"][i])
            cands = sample_candidates(positive, spec.sticker_ids, k, example_rng(example_id, spec.seed))
            keys[i] = example_key(example_id)
        cands = list(cands)
        if len(cands) != k:
            skip[i] = skip[i] or 7
        elif any(c not in index for c in cands):
            skip[i] = skip[i] or 5
        elif positive not in cands:
            skip[i] = skip[i] or 6
        else:
            idx[i] = [index[c] for c in cands]
            target[i] = cands.index(positive)
    return {"candidate_idx": idx, "target": target, "candidate_key": keys}


def preprocess_batch(batch: dict[str, np.ndarray], spec: PreprocessSpec) -> dict[str, np.ndarray]:
    """One numpy batch of canonical rows -> model inputs (see module docstring). The same for
    training and evaluation: training augmentation happens on the worker (train/augment.py)."""
    n = len(batch["example_id"])
    skip = np.zeros(n, dtype=np.int8)
    out: dict[str, np.ndarray] = {}
    for name, num_classes in spec.labels:
        out[f"label_{name}"] = _labels(batch[name], num_classes, skip, required=True)
    for name, num_classes in spec.aux_labels:
        out[f"label_{name}"] = _labels(batch[name], num_classes, skip, required=False)
    if spec.select:
        out.update(_candidates(batch, spec, skip))
    elif spec.use_image:
        size = spec.image_size
        pixels = np.zeros((n, 3, size, size), dtype=np.uint8)
        for i, data in enumerate(batch[spec.image_column]):
            if data is None or len(data) == 0:
                skip[i] = skip[i] or 2
                continue
            try:
                img = decode_image(data)
            except ImageDecodeError as exc:
                skip[i] = skip[i] or 1
                log.warning("skipping example %s: %s", batch["example_id"][i], exc)
                continue
            pixels[i] = eval_transform(img, size)
        out["pixel_values"] = pixels
    tokens, truncated = tokenize_inputs(batch, spec.texts, n, spec.synonyms, spec.seed)
    out.update(tokens)
    if spec.group_column:
        out["group_bytes"] = _group_bytes(batch, spec.group_column)
    out["skip"] = skip
    out["truncated"] = truncated
    return out


def _group_bytes(batch: dict[str, np.ndarray], column: str) -> np.ndarray:
    """Each row's group value as bytes; a missing value is the empty group. A value too long to
    travel whole fails (two long values cut alike would merge their groups)."""
    values = ["" if v is None else str(v) for v in batch[column]]
    for i, v in enumerate(values):
        if len(v.encode("utf-8")) > GROUP_BYTES:
            raise DataQualityError(f"example {batch['example_id'][i]}: {column}={v!r} is longer than "
                                   f"{GROUP_BYTES} bytes, too long to evaluate per {column} (data.eval_by)")
    return encode_texts(values, GROUP_BYTES)


def build_dataset(uri: str, split: str, spec: PreprocessSpec, batch_size: int = 64):
    """The split read and preprocessed: each read block goes whole to one task, which
    preprocesses it ``batch_size`` rows at a time (:func:`preprocess_block`). A ``batch_size``
    given to ``map_batches`` itself would keep Ray Data from fusing the read into that task."""
    ds = read_split(uri, split, spec.columns())
    return ds.map_batches(
        preprocess_block,
        fn_kwargs={"spec": spec, "rows": batch_size},
        batch_size=None,
        batch_format="numpy",
        zero_copy_batch=True,
    )


def preprocess_block(block: dict[str, np.ndarray], spec: PreprocessSpec, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """:func:`preprocess_batch` over a block, ``rows`` rows at a time (memory bounded by them)."""
    n = len(next(iter(block.values())))
    for i in range(0, n, rows):
        yield preprocess_batch({k: v[i:i + rows] for k, v in block.items()}, spec)


def count_skips(skip: np.ndarray) -> dict[str, int]:
    """Per-reason counts of a ``skip`` column (reason name -> rows)."""
    values, counts = np.unique(skip[skip != SKIP_OK], return_counts=True)
    return {SKIP_REASONS[int(v)]: int(c) for v, c in zip(values, counts)}


# ---------------------------------------------------------------------------- sticker pool


@dataclass(frozen=True)
class PoolSpec:
    """What a selection model needs of each sticker (its ``sticker_inputs`` and images)."""

    texts: tuple[TextInput, ...] = ()
    use_image: bool = True
    image_size: int = 224
    label_columns: tuple[str, ...] = ("emotion", "intent")


def read_sticker_ids(uri: str) -> list[str]:
    """The pool's sticker ids in pool order (the order of the stickers table's files and rows)."""
    table, _ = read_stickers(uri, ["sticker_id"])
    ids = table["sticker_id"].to_pylist()
    dupes = sorted(s for s, n in collections.Counter(ids).items() if n > 1)
    if dupes:
        raise DataQualityError(f"stickers table {schema.stickers_uri(schema.tables_uri(uri))} repeats sticker ids {dupes[:5]}")
    return ids


def _stickers_dataset(uri: str):
    where = schema.stickers_uri(schema.tables_uri(uri))
    return _parquet_dataset(where, f"selection dataset {uri} has no stickers table at {where}",
                            f"stickers table {where} has no Parquet files")


def read_stickers(uri: str, columns: list[str], optional: tuple[str, ...] = ()) -> tuple[pa.Table, str]:
    """The stickers table's ``columns`` (each required) and those of ``optional`` it has, and
    where the table is (for messages)."""
    ds = _stickers_dataset(uri)
    where = schema.stickers_uri(schema.tables_uri(uri))
    schema.check_columns(ds.schema, columns, f"stickers table {where}")
    extra = [c for c in optional if c in ds.schema.names and c not in columns]
    return ds.to_table(columns=columns + extra), where
