"""Ray Data ingest: canonical Parquet -> decoded, augmented, tokenized numpy batches.

``read_split`` checks the split's schema up front (a missing column fails naming it),
then streams it with ``ray.data.read_parquet``. ``preprocess_batch`` runs in Ray Data
tasks on CPU: it decodes and transforms images, tokenizes text and maps labels. Rows
that cannot be used are not dropped silently: they stay in the batch with a non-zero
``skip`` code (see ``SKIP_REASONS``); the training loop removes them, counts them per
reason across ranks and fails the run above ``data.max_corrupt_fraction``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as pads

from ray_sticker import storage
from ray_sticker.data import schema
from ray_sticker.data.images import ImageDecodeError, decode_image, eval_transform, train_transform

log = logging.getLogger(__name__)

SKIP_OK = 0
SKIP_REASONS = {1: "corrupt image", 2: "missing image", 3: "label outside the label map", 4: "missing label"}


class DataQualityError(RuntimeError):
    """Too many unusable rows, or a dataset that cannot feed the model."""


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model needs from each row; built from the experiment + model config."""

    labels: tuple[tuple[str, int], ...]  # (label column, number of classes)
    tokenizer: str | None = None  # None: the model reads no text
    max_text_length: int = 128
    use_image: bool = True
    image_size: int = 224
    augment: bool = False
    text_column: str = "context"
    image_column: str = "image"

    def columns(self) -> list[str]:
        cols = ["example_id"]
        if self.tokenizer:
            cols.append(self.text_column)
        if self.use_image:
            cols.append(self.image_column)
        cols += [name for name, _ in self.labels]
        return cols


def split_schema(uri: str, split: str):
    """The Arrow schema of one split's Parquet files (reads footers only)."""
    fs, path = storage.resolve(schema.split_uri(uri, split))
    try:
        ds = pads.dataset(path, filesystem=fs, format="parquet")
    except FileNotFoundError:
        raise FileNotFoundError(f"split '{split}' not found: {schema.split_uri(uri, split)}") from None
    if not ds.files:
        raise DataQualityError(f"split '{split}' has no Parquet files: {schema.split_uri(uri, split)}")
    return ds.schema


def read_split(uri: str, split: str, columns: list[str]):
    """A Ray Dataset of one split with only ``columns``; fails naming missing ones first."""
    import ray.data

    schema.check_columns(split_schema(uri, split), columns, f"dataset {uri} split '{split}'")
    fs, path = storage.resolve(schema.split_uri(uri, split))
    return ray.data.read_parquet(path, filesystem=fs).select_columns(columns)


def _join_turns(turns, sep: str) -> str:
    if turns is None:
        return ""
    if isinstance(turns, str):
        return turns
    return f" {sep} ".join(str(t) for t in turns)


def preprocess_batch(batch: dict[str, np.ndarray], spec: PreprocessSpec, train: bool) -> dict[str, np.ndarray]:
    """One numpy batch of canonical rows -> model inputs (see module docstring)."""
    n = len(batch["example_id"])
    skip = np.zeros(n, dtype=np.int8)
    out: dict[str, np.ndarray] = {}
    for name, num_classes in spec.labels:
        raw = batch[name]
        labels = np.full(n, -1, dtype=np.int64)
        for i, value in enumerate(raw):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                skip[i] = skip[i] or 4
            elif not 0 <= int(value) < num_classes:
                skip[i] = skip[i] or 3
            else:
                labels[i] = int(value)
        out[f"label_{name}"] = labels
    if spec.use_image:
        size = spec.image_size
        pixels = np.zeros((n, 3, size, size), dtype=np.uint8)
        rng = np.random.default_rng() if train and spec.augment else None
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
            pixels[i] = train_transform(img, size, rng) if rng is not None else eval_transform(img, size)
        out["pixel_values"] = pixels
    if spec.tokenizer:
        from ray_sticker.models.encoders import load_tokenizer

        tok = load_tokenizer(spec.tokenizer)
        texts = [_join_turns(t, tok.sep_token or "|") for t in batch[spec.text_column]]
        enc = tok(texts, padding="max_length", truncation=True, max_length=spec.max_text_length,
                  return_tensors="np")
        out["input_ids"] = enc["input_ids"].astype(np.int64)
        out["attention_mask"] = enc["attention_mask"].astype(np.int64)
    out["skip"] = skip
    return out


def build_dataset(uri: str, split: str, spec: PreprocessSpec, train: bool, batch_size: int = 64):
    ds = read_split(uri, split, spec.columns())
    return ds.map_batches(
        preprocess_batch,
        fn_kwargs={"spec": spec, "train": train},
        batch_size=batch_size,
        batch_format="numpy",
        zero_copy_batch=True,
    )


def count_skips(skip: np.ndarray) -> dict[str, int]:
    """Per-reason counts of a ``skip`` column (reason name -> rows)."""
    values, counts = np.unique(skip[skip != SKIP_OK], return_counts=True)
    return {SKIP_REASONS[int(v)]: int(c) for v, c in zip(values, counts)}
