"""Evaluate an export or a training checkpoint on a dataset split, streaming it with Ray Data."""

from __future__ import annotations

from typing import Any

from ray_sticker.train.evaluation import evaluate
from ray_sticker.train.export import load_model
from ray_sticker.train.inputs import check_inputs


def evaluate_export(uri: str, data_uri: str | None = None, split: str = "test", batch_size: int = 64,
                    address: str | None = None) -> dict[str, Any]:
    """Metrics of the model at ``uri`` (export or checkpoint directory) on ``split``: the
    training loop's evaluation (``train/evaluation.py``), with its skip counts and threshold."""
    from ray_sticker.data.pipeline import build_dataset
    from ray_sticker.runtime import init_ray

    model, cfg, _ = load_model(uri)
    if data_uri:
        cfg.data.uri = data_uri
    inputs = check_inputs(cfg, model_config=model.config, split=split)
    cfg = inputs.cfg
    init_ray(address)
    ds = build_dataset(cfg.data.uri, split, inputs.spec, batch_size=cfg.data.preprocess_batch_size)
    metrics, _ = evaluate(model, ds, cfg, batch_size, pool=inputs.load_pool(), prefix="", where=f"split '{split}'")
    return metrics
