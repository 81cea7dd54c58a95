"""The inputs every benchmark shares: an experiment config pointed at a synthetic dataset of
its task (written once under ``$RAY_STICKER_HOME/bench/``), the checked model config and
preprocessing spec, and real batches made by the library's own preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_sticker.config import ExperimentConfig, load_config
from ray_sticker.data.pipeline import PreprocessSpec
from ray_sticker.train.inputs import RunInputs, check_inputs


@dataclass
class BenchInputs:
    run: RunInputs
    source_image_px: int | None = None  # of a synthetic dataset

    @property
    def cfg(self) -> ExperimentConfig:  # resolved
        return self.run.cfg

    @property
    def model_cfg(self) -> dict[str, Any]:
        return self.run.model_config

    @property
    def spec(self) -> PreprocessSpec:
        return self.run.spec

    @property
    def train_rows(self) -> int:
        return self.run.train_rows


def random_init_overrides(model_name: str) -> list[str]:
    """Overrides that build a model's towers with random weights and the offline tokenizer:
    the same architecture and compute, nothing downloaded (e.g. on a GPU host without network)."""
    from ray_sticker.models.registry import get_model_config

    model_cfg = get_model_config(model_name)
    out = ["model.allow_random_init=true"]
    if isinstance(model_cfg.get("text"), dict):
        out += ["model.overrides.text.pretrained=false", "model.overrides.text.tokenizer=builtin:tiny"]
    if isinstance(model_cfg.get("vision"), dict):
        out.append("model.overrides.vision.pretrained=null")
    return out


SYNTHETIC_IMAGE_PX = 48  # the side of the images ensure_dataset writes


def bench_config(name: str, overrides: list[str] | None = None, rows: int | None = None,
                 random_init: bool = False, image_px: int | None = None) -> ExperimentConfig:
    """``name`` with ``overrides``; unless they set ``data.uri``, the data is the synthetic
    dataset of the config's task with ``rows`` rows (default: the config's ``synthetic_rows``)
    and source images of ``image_px`` pixels (default 48), written under
    ``$RAY_STICKER_HOME/bench/datasets/`` on first use (see :func:`prepare`)."""
    overrides = list(overrides or [])
    base = load_config(name, overrides)
    ours: list[str] = []
    if not any(o.split("=", 1)[0].strip() == "data.uri" for o in overrides):
        n = rows or base.data.synthetic_rows
        px = "" if image_px in (None, SYNTHETIC_IMAGE_PX) else f"-{image_px}px"
        ours += [f"data.uri=${{RAY_STICKER_HOME}}/bench/datasets/synthetic-{base.task}-{n}{px}",
                 "data.synthetic_if_missing=true", f"data.synthetic_rows={n}"]
    if random_init:
        ours += random_init_overrides(base.model.name)
    return load_config(name, ours + overrides).resolved()


def prepare(cfg: ExperimentConfig, image_px: int | None = None) -> BenchInputs:
    """Check the config against its dataset, writing the synthetic one if asked and missing
    (with ``image_px`` source images when given, else as training would write it)."""
    from ray_sticker import storage
    from ray_sticker.data import schema

    missing = not storage.exists(storage.join(cfg.data.uri, schema.MANIFEST))
    if image_px not in (None, SYNTHETIC_IMAGE_PX) and cfg.data.synthetic_if_missing and missing:
        from ray_sticker.data.embedded import make_synthetic

        make_synthetic(cfg.data.uri, cfg.task, cfg.data.synthetic_rows, cfg.train.seed, image_size=image_px)
    run = check_inputs(cfg)
    manifest = run.manifest
    return BenchInputs(run, manifest.extra.get("image_size") if manifest.source_format == "synthetic" else None)


def split_dataset(inputs: BenchInputs):
    """The train split's Parquet files as a pyarrow dataset (what Ray Data reads)."""
    import pyarrow.dataset as pads

    from ray_sticker import storage
    from ray_sticker.data import schema

    fs, path = storage.resolve(schema.split_uri(schema.tables_uri(inputs.cfg.data.uri), inputs.cfg.data.train_split))
    return pads.dataset(path, filesystem=fs, format="parquet")


def numpy_columns(record_batch) -> dict[str, np.ndarray]:
    """A pyarrow batch as the numpy columns Ray Data's ``batch_format="numpy"`` gives."""
    return {name: record_batch.column(name).to_numpy(zero_copy_only=False) for name in record_batch.schema.names}


def sample_batch(inputs: BenchInputs, batch_size: int) -> dict[str, np.ndarray]:
    """The first ``batch_size`` train rows, preprocessed by the pipeline's own function."""
    from ray_sticker.config import ConfigError
    from ray_sticker.data.pipeline import preprocess_batch

    if inputs.train_rows < batch_size:
        raise ConfigError(f"bench: the train split of {inputs.cfg.data.uri} has {inputs.train_rows} rows, "
                          f"fewer than --batch-size {batch_size}")
    table = split_dataset(inputs).head(batch_size, columns=inputs.spec.columns())
    out = preprocess_batch({c: table[c].to_numpy() for c in table.column_names}, inputs.spec)
    skipped = int(np.count_nonzero(out.pop("skip")))
    out.pop("truncated", None)
    if skipped:
        raise ConfigError(f"bench: {skipped} of the first {batch_size} rows of {inputs.cfg.data.uri} are unusable")
    return out


def torch_batch(batch: dict[str, np.ndarray], pool, device) -> dict[str, Any]:
    """A numpy batch on ``device``, with its candidates gathered from the pool (selection,
    ``RunInputs.load_pool``), as the training loop hands it to the model."""
    import torch

    from ray_sticker.train.batches import attach_candidates

    out = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}
    if pool is not None:
        out = attach_candidates(out, pool)
    return out
