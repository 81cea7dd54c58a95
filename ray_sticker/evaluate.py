"""Evaluate an export or a training checkpoint on a dataset split, streaming it with Ray Data."""

from __future__ import annotations

import numpy as np
import torch

from ray_sticker.data import schema
from ray_sticker.data.pipeline import SKIP_OK, build_dataset, count_skips
from ray_sticker.train.export import load_model
from ray_sticker.train.metrics import classification_metrics


def evaluate_export(uri: str, data_uri: str | None = None, split: str = "test", batch_size: int = 64,
                    address: str | None = None) -> dict[str, float]:
    """Metrics of the model at ``uri`` (export or checkpoint directory) on ``split``."""
    from ray_sticker.train.trainer import init_ray, preprocess_spec

    model, cfg, _ = load_model(uri)
    if data_uri:
        cfg.data.uri = data_uri
    cfg = cfg.resolved()
    manifest = schema.read_manifest(cfg.data.uri)
    if split not in manifest.splits:
        raise ValueError(f"dataset {cfg.data.uri} has no split '{split}'; it has {sorted(manifest.splits)}")
    spec = preprocess_spec(cfg, model.config, manifest, train=False)
    init_ray(address)
    ds = build_dataset(cfg.data.uri, split, spec, train=False, batch_size=cfg.data.preprocess_batch_size)
    heads = dict(model.heads_spec)
    preds = {h: [] for h in heads}
    labels = {h: [] for h in heads}
    skipped: dict[str, int] = {}
    with torch.no_grad():
        for batch in ds.iter_torch_batches(batch_size=batch_size, drop_last=False):
            skip = batch.pop("skip").numpy()
            for reason, n in count_skips(skip).items():
                skipped[reason] = skipped.get(reason, 0) + n
            keep = torch.from_numpy(skip == SKIP_OK)
            if not bool(keep.any()):
                continue
            batch = {k: v[keep] for k, v in batch.items()}
            out = model(batch)
            for h in heads:
                preds[h].append(out.logits[h].argmax(-1).numpy())
                labels[h].append(batch[f"label_{h}"].numpy())
    metrics: dict[str, float] = {}
    for h, n in heads.items():
        m = classification_metrics(np.concatenate(labels[h]), np.concatenate(preds[h]), n)
        metrics.update({f"{h}_{k}": v for k, v in m.items()})
        metrics["examples"] = float(sum(len(x) for x in labels[h]))
    metrics.update({f"skipped[{r}]": float(n) for r, n in skipped.items()})
    return metrics
