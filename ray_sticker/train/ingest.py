"""The Ray Data side of a run: the datasets its workers read and how they are split.

The train split is split equally (every worker steps the same number of times); the
evaluation split with ``equal=False``, so that no row is dropped. A cached split is cut once
into fixed shards; a streamed one is shared out as it streams (see :func:`data_config`).
Both are preprocessed by ``data/pipeline.py``; the evaluation split, and the train split
when it is small enough, once, and kept in the object store for every epoch.
"""

from __future__ import annotations

import logging

from ray_sticker.data.pipeline import build_dataset
from ray_sticker.train.inputs import RunInputs

log = logging.getLogger("ray_sticker.train")

TRAIN, VALIDATION = "train", "validation"


def cache_train(inputs: RunInputs) -> bool:
    """``data.cache_train``, where null means: when the preprocessed split takes under a quarter
    of the connected cluster's object store."""
    cfg = inputs.cfg
    if cfg.data.cache_train is not None:
        return cfg.data.cache_train
    import ray

    store = ray.cluster_resources().get("object_store_memory", 0.0)
    size = inputs.train_rows * inputs.train_spec.row_bytes()
    log.info("train split: %d rows, %.1f MB preprocessed; object store %.1f MB: %s", inputs.train_rows,
             size / 1e6, store / 1e6, "cached after one pass" if size < store / 4 else "streamed every epoch")
    return size < store / 4


def run_datasets(inputs: RunInputs) -> dict:
    """The ``train`` and ``validation`` Ray Datasets of a run (Ray must be connected)."""
    cfg = inputs.cfg
    datasets = {
        TRAIN: build_dataset(cfg.data.uri, cfg.data.train_split, inputs.train_spec,
                             batch_size=cfg.data.preprocess_batch_size),
        VALIDATION: build_dataset(cfg.data.uri, cfg.data.eval_split, inputs.spec,
                                  batch_size=cfg.data.preprocess_batch_size),
    }
    for ds in datasets.values():
        ds.context.execution_options.preserve_order = cfg.data.deterministic
    if cfg.data.cache_eval:
        datasets[VALIDATION] = datasets[VALIDATION].materialize()
    if cache_train(inputs):
        datasets[TRAIN] = datasets[TRAIN].materialize()
    return datasets


def data_config(preserve_order: bool):
    """How the datasets reach the workers: see the module doc. ``preserve_order``: blocks reach
    the workers in file order, so each rank sees the same rows in the same order every run.

    A materialized (cached) split is cut into fixed per-rank shards of its blocks
    (``Dataset.split``); a streamed one is shared out by a split coordinator per dataset
    (``Dataset.streaming_split``). Both drop the remainder of the train split (``equal``) and
    none of the evaluation split. A coordinator is an actor: a process started every run,
    about 3 s of CPU, that a cached split does not need.
    """
    from ray.data.dataset import MaterializedDataset
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = preserve_order

    class SplitOnceDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            streamed = {k: v for k, v in datasets.items() if not isinstance(v, MaterializedDataset)}
            out = super().configure({k: v for k, v in streamed.items() if k != VALIDATION}, world_size,
                                    worker_handles, worker_node_ids, **kwargs)
            for name, ds in datasets.items():
                if isinstance(ds, MaterializedDataset):
                    splits = [split.iterator() for split in ds.split(world_size, equal=name != VALIDATION)]
                elif name == VALIDATION:
                    ds = ds.copy(ds)
                    ds.context.execution_options = self._resolve_execution_options(name)
                    splits = ds.streaming_split(world_size, equal=False)
                else:
                    continue
                for i, split in enumerate(splits):
                    out[i][name] = split
            return out

    return SplitOnceDataConfig(execution_options=options)
