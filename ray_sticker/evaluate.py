"""Evaluate an export or a training checkpoint on a dataset split, streaming it with Ray Data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ray_sticker.data import schema
from ray_sticker.data.pipeline import SKIP_OK, build_dataset, count_skips, load_sticker_pool, read_sticker_ids
from ray_sticker.train.evaluation import Evaluation, attach_candidates, compute_metrics, embed_pool, pool_scores
from ray_sticker.train.export import load_model


def evaluate_export(uri: str, data_uri: str | None = None, split: str = "test", batch_size: int = 64,
                    address: str | None = None) -> dict[str, Any]:
    """Metrics of the model at ``uri`` (export or checkpoint directory) on ``split``: the
    same metrics as the training loop's evaluation (see ``train/evaluation.py``)."""
    from ray_sticker.runtime import init_ray
    from ray_sticker.train.trainer import pool_spec, preprocess_spec

    model, cfg, _ = load_model(uri)
    if data_uri:
        cfg.data.uri = data_uri
    cfg = cfg.resolved()
    manifest = schema.read_manifest(cfg.data.uri)
    if split not in manifest.splits:
        raise ValueError(f"dataset {cfg.data.uri} has no split '{split}'; it has {sorted(manifest.splits)}")
    select = cfg.task == "select"
    sticker_ids = tuple(read_sticker_ids(cfg.data.uri)) if select else ()
    spec = preprocess_spec(cfg, model.config, manifest, sticker_ids)
    pool = None
    if select:
        arrays = load_sticker_pool(cfg.data.uri, pool_spec(cfg, model.config), list(sticker_ids),
                                   cfg.data.max_corrupt_fraction)
        pool = {k: torch.from_numpy(v) for k, v in arrays.items()}
    full_pool = select and cfg.data.eval_candidates == "pool"
    init_ray(address)
    ds = build_dataset(cfg.data.uri, split, spec, batch_size=cfg.data.preprocess_batch_size)
    heads = dict(model.heads_spec)
    acc = Evaluation(heads, select=select, pool_relevance=pool["intent"].numpy() if full_pool else None)
    skipped: dict[str, int] = {}
    truncated = 0
    with torch.no_grad():
        sticker_emb = embed_pool(model, pool, batch_size) if full_pool else None
        for batch in ds.iter_torch_batches(batch_size=batch_size, drop_last=False):
            skip = batch.pop("skip").numpy()
            truncated += int(np.count_nonzero(batch.pop("truncated").numpy()))
            for reason, n in count_skips(skip).items():
                skipped[reason] = skipped.get(reason, 0) + n
            keep = torch.from_numpy(skip == SKIP_OK)
            if not bool(keep.any()):
                continue
            batch = {k: v[keep] for k, v in batch.items()}
            if pool is not None:
                batch = attach_candidates(batch, pool)
            acc.add(batch, model(batch))
            if full_pool:
                acc.add_pool(batch, pool_scores(model, batch, sticker_emb))
    metrics, _ = compute_metrics(acc.local_arrays(), heads)
    metrics.update({f"skipped[{r}]": n for r, n in skipped.items()}, rows_text_truncated=truncated)
    return metrics
