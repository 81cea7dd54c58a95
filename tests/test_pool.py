"""The sticker pool kept encoded and shared (data/pool.py): rows decoded on demand, evaluation
over the whole pool in chunks equal to the ranking of the pool embedded at once, and a
worker's memory that does not grow with the pool."""

import gc
import os

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from ray_sticker.config import load_config
from ray_sticker.data import schema, synthetic_select
from ray_sticker.data.pipeline import PoolSpec, preprocess_batch, read_sticker_ids
from ray_sticker.data.pool import StickerPool, read_pool, share_pool
from ray_sticker.train.batches import attach_candidates, keep_usable
from ray_sticker.train.evaluation import Evaluation, compute_metrics, embed_pool, evaluate, pool_embeddings


class ListSplit:
    """A split as evaluate() reads one (``iter_torch_batches``), from one in-memory batch."""

    def __init__(self, batch: dict[str, np.ndarray]):
        self.batch = batch

    def iter_torch_batches(self, batch_size: int, device="cpu", drop_last: bool = False):
        n = len(next(iter(self.batch.values())))
        for i in range(0, n, batch_size):
            yield {k: torch.from_numpy(np.ascontiguousarray(v[i:i + batch_size])) for k, v in self.batch.items()}


def test_rows_decode_each_sticker_once_and_cache_within_the_bound(tmp_path):
    uri = str(tmp_path / "ds")
    synthetic_select.make_select_dataset(uri, num_rows=32, image_size=16, stickers_per_pair=1)
    ids = read_sticker_ids(uri)
    encoded = read_pool(uri, PoolSpec(image_size=16), ids)
    assert encoded.image_offsets[-1] == encoded.image_bytes.size and encoded.image_ok.all()
    one_sticker_mb = 3 * 16 * 16 / 2**20
    pool = StickerPool(encoded, cache_mb=5 * one_sticker_mb)
    rows = pool.rows(np.array([[3, 1, 3], [0, 27, 1]]))
    assert rows["pixel_values"].shape == (2, 3, 3, 16, 16)
    np.testing.assert_array_equal(rows["pixel_values"][0, 0], rows["pixel_values"][0, 2])
    np.testing.assert_array_equal(rows["intent"], encoded.labels["intent"][[[3, 1, 3], [0, 27, 1]]])
    assert len(pool._cache) == 4  # 3, 1, 0, 27: each decoded once
    pool.rows(np.arange(10, 20))
    assert len(pool._cache) == 5  # the bound holds
    uncached = StickerPool(encoded, cache_mb=0)
    np.testing.assert_array_equal(uncached.rows(np.arange(28))["pixel_values"], pool.rows(np.arange(28))["pixel_values"])
    assert not uncached._cache
    threaded = StickerPool(encoded, cache_mb=0, threads=3)
    np.testing.assert_array_equal(threaded.rows(np.arange(28))["pixel_values"], pool.rows(np.arange(28))["pixel_values"])
    assert threaded._executor is not None  # 28 stickers went over 3 threads
    with pytest.raises(IndexError, match="outside a pool of 28"):
        pool.rows(np.array([28]))


def test_full_pool_evaluation_in_chunks_equals_the_ranking_of_the_pool_embedded_at_once(tmp_path):
    from ray_sticker.models.registry import build_from_config
    from ray_sticker.train.inputs import check_inputs

    uri = str(tmp_path / "ds")
    synthetic_select.make_select_dataset(uri, num_rows=80, image_size=32, stickers_per_pair=2)
    cfg = load_config("intra-tiny", [f"data.uri={uri}", "data.synthetic_if_missing=false"])
    inputs = check_inputs(cfg)
    torch.manual_seed(0)
    model = build_from_config(inputs.model_config).eval()
    pool = inputs.load_pool()
    chunk = 8
    assert len(pool) == 56 and len(pool) > 3 * chunk

    table = pads.dataset(schema.split_uri(uri, "validation"), format="parquet").to_table()
    batch = preprocess_batch({c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}, inputs.spec)
    got, _ = evaluate(model, ListSplit(batch), inputs.cfg, chunk, pool=pool, prefix="")

    with torch.no_grad():
        at_once = torch.nn.functional.normalize(model.embed_stickers(pool.take(torch.arange(len(pool)))).float(), dim=-1)
        torch.testing.assert_close(embed_pool(model, pool, chunk), at_once, atol=1e-5, rtol=1e-5)
        whole, _, _ = keep_usable({k: torch.from_numpy(v) for k, v in batch.items()})
        whole = attach_candidates(whole, pool)
        acc = Evaluation({}, select=True, pool_relevance=pool.labels["intent"])
        acc.add(whole, model(whole))
        q = torch.nn.functional.normalize(model.embed_queries(whole).float(), dim=-1)
        acc.add_pool(whole, q @ at_once.t())
    want, _ = compute_metrics(acc.local_arrays(), {})
    assert got["pool_map"] > 0 and got["examples"] == table.num_rows
    for key in [k for k in want if k.startswith("pool_")] + ["map", "r10@1"]:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 * 8 * 8, 4)

    def embed_stickers(self, pool):
        return self.proj(pool["pixel_values"].flatten(1).float())


class Tower(Linear):
    def sticker_parameters(self):
        return self.proj.parameters()


def test_a_frozen_sticker_towers_pool_embeddings_are_computed_once_per_run(tmp_path):
    uri = str(tmp_path / "ds")
    synthetic_select.make_select_dataset(uri, num_rows=32, image_size=8, stickers_per_pair=1)
    pool = StickerPool(read_pool(uri, PoolSpec(image_size=8), read_sticker_ids(uri)))
    model, kept = Tower(), {}
    with torch.no_grad():
        pool_embeddings(model, pool, 8, "cpu", kept)
        assert not kept  # trainable: embedded anew every evaluation
        model.proj.requires_grad_(False)
        first = pool_embeddings(model, pool, 8, "cpu", kept)
        model.proj.weight.add_(1.0)  # would change them, were they computed again
        assert pool_embeddings(model, pool, 8, "cpu", kept) is first
        assert not torch.allclose(embed_pool(model, pool, 8), first)


def _embed_on_ranks(rank, world, port, job, out_dir):
    import json

    from ray_sticker.train.procgroup import process_group

    pool = StickerPool(job["encoded"], cache_mb=0)
    with process_group(rank, world, port, "gloo"), torch.no_grad():
        found = {chunk: embed_pool(Linear(), pool, chunk).tolist() for chunk in job["chunks"]}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(found, f)


def test_pool_embedded_in_chunks_spread_over_ranks_equals_one_process(tmp_path):
    from ray_sticker.bench.procgroup import spawn_ranks

    uri = str(tmp_path / "ds")
    synthetic_select.make_select_dataset(uri, num_rows=32, image_size=8, stickers_per_pair=1)
    encoded = read_pool(uri, PoolSpec(image_size=8), read_sticker_ids(uri))
    with torch.no_grad():
        want = embed_pool(Linear(), StickerPool(encoded), 64)
    chunks = [5, 64]  # 6 chunks over 2 ranks; 1 chunk, rank 1 repeats it and keeps nothing
    ranks = spawn_ranks(_embed_on_ranks, 2, [{"encoded": encoded, "chunks": chunks}])
    assert len(ranks) == 2
    for found in ranks:
        for chunk in chunks:
            np.testing.assert_allclose(np.array(found[str(chunk)]), want.numpy(), atol=1e-6)


@pytest.mark.ray
def test_a_workers_memory_does_not_grow_with_the_pool(ray_cluster, tmp_path):
    """Two pools, the larger 18x, read by a fresh process each through the object store, the
    same batch gathered from both: the process's own memory (USS) differs by at most the index
    and a small slack, far below what the larger pool decoded would take."""
    import ray

    @ray.remote(num_cpus=0)
    class Worker:
        def uss_growth(self, refs, idx):  # refs in a list: passed as refs, not resolved by Ray
            warm_ref, ref = refs
            import psutil

            proc = psutil.Process()
            StickerPool(ray.get(warm_ref)).rows(np.array([0, 1]))  # imports and first decode, before measuring
            gc.collect()
            before = proc.memory_full_info().uss
            pool = StickerPool(ray.get(ref))
            rows = pool.rows(idx)
            assert rows["pixel_values"].shape == (*idx.shape, 3, 128, 128)
            del rows
            gc.collect()
            return proc.memory_full_info().uss - before, len(pool)

    from ray_sticker.bench.scale import pool_dataset

    growth, index, warm_ref = {}, {}, None
    idx = np.arange(16 * 10).reshape(16, 10) % 100  # the same batch of candidates from both pools
    for name, size in (("small", 112), ("large", 2016)):
        uri = pool_dataset(size, 128, per_pair=4)  # 112 distinct images, tiled
        ids = read_sticker_ids(uri)
        if warm_ref is None:
            warm_ref = ray.put(read_pool(uri, PoolSpec(image_size=128), ids[:2]))
        ref = share_pool(uri, PoolSpec(image_size=128), ids)
        encoded = ray.get(ref)
        index[name] = encoded.index_nbytes
        growth[name], found = ray.get(Worker.remote().uss_growth.remote([warm_ref, ref], idx))
        assert found == size
        del encoded
    decoded_large = 2016 * 3 * 128 * 128
    slack = 6 * 2**20
    assert growth["large"] - growth["small"] <= index["large"] + slack, (growth, index)
    assert decoded_large > 10 * (index["large"] + slack)  # the bound means something
