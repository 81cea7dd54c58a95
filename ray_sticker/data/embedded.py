"""The synthetic datasets of either task, written on demand: the embedded default of the tiny
configs (``data.synthetic_if_missing``), ``ray-sticker prepare synthetic`` and the benchmarks."""

from __future__ import annotations

from typing import Any

from ray_sticker import storage
from ray_sticker.data import schema


def make_synthetic(uri: str, task: str, num_rows: int, seed: int, **options: Any) -> schema.Manifest:
    """Write the synthetic dataset of ``task`` to ``uri``; ``options`` go to its generator
    (``image_size``, ``rows_per_shard``, and for classification ``corrupt_fraction``)."""
    if task == "select":
        from ray_sticker.data.synthetic_select import make_select_dataset

        return make_select_dataset(uri, num_rows=num_rows, seed=seed, **options)
    from ray_sticker.data.synthetic import make_classify_dataset

    return make_classify_dataset(uri, num_rows=num_rows, seed=seed, **options)


def ensure_synthetic(uri: str, task: str, num_rows: int, seed: int, **options: Any) -> bool:
    """Write the synthetic dataset of ``task`` to ``uri`` when it holds no dataset, or one written
    by an older generator; returns whether it wrote. Anything else at ``uri`` is left alone."""
    from ray_sticker.data.synthetic import VERSION

    if storage.exists(storage.join(uri, schema.MANIFEST)):
        manifest = schema.read_manifest(uri)
        if manifest.source_format != "synthetic" or manifest.source_version == VERSION:
            return False
    make_synthetic(uri, task, num_rows, seed, **options)
    return True
