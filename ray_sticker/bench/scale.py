"""``ray-sticker bench scale``: the sticker pool and the pipeline at growing sizes, up to the
papers' real ones (StickerChat's pool of 174k stickers, M2SA's 258k examples), each size's
figures against the smallest size's, measured in the same run.

- pool: the stickers table is read once into the object store (data/pool.py, its time and
  bytes reported); then ``--workers`` fresh processes, as training workers do, map it and gather
  ``--batches`` batches of ``--batch-size`` x ``--candidates`` random stickers (after a few
  untimed ones), decoding each (no decode cache unless ``--cache-mb``); the sizes take turns for
  ``--repeats`` rounds and the median is reported. Goals: candidates/s within 10% of the smallest pool's, and
  each worker's own memory (USS: what is not shared with the object store) within 10% of the
  smallest pool's plus the growth of the index (offsets, flags, labels);
- pipeline: Ray Data preprocesses the train split of a classification dataset of each size,
  consumed as torch batches here: time to the first batch, then steady samples/s (goal: within
  10% of the smallest) and this process's peak resident memory;
- convert: ``ray-sticker prepare m2sa`` of an M2SA release of ``--convert-rows`` tweets (its
  official layout, one JPEG each) with Ray Data held to 1 core, then to 2: rows/s, and the
  second against the first.

The datasets tile a small synthetic one (distinct ids, the same images and texts): they are
written once under ``$RAY_STICKER_HOME/bench/datasets/``.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_sticker.bench.report import BenchResult

RATE_GOAL = (">=", 0.9)
MEMORY_GOAL = ("<=", 1.1)
MIB = 2**20
WARMUP_BATCHES = 5


@dataclass
class ScaleOptions:
    stickers: tuple[int, ...] = (10875, 43500, 174000)  # pool sizes: 1/16, 1/4 and all of StickerChat's
    examples: tuple[int, ...] = (16125, 64500, 258000)  # train rows: 1/16, 1/4 and all of M2SA's
    image_px: int | None = None  # side of the stickers' and examples' images (default 48)
    batch_size: int = 32
    candidates: int = 10
    batches: int = 50  # gathered per worker, pool size and repeat, after 5 untimed ones
    repeats: int = 5
    workers: int = 2
    cache_mb: float = 0.0
    convert_rows: int = 20000  # tweets of the M2SA release converted at 1 and 2 cores (0: skip)
    address: str | None = None


class PeakRSS:
    """The highest resident set size of this process while the block runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def start(self) -> "PeakRSS":
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak

    def __enter__(self) -> "PeakRSS":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class PoolWorker:
    """A training worker's side of the pool, in a fresh process: map it, gather batches; its
    resident memory is sampled from start to end."""

    def __init__(self, shared: list, cache_mb: float) -> None:
        import ray

        from ray_sticker.data.pool import StickerPool

        self.rss = PeakRSS().start()
        self.pool = StickerPool(ray.get(shared[0]), cache_mb)

    def gather(self, batches: int, shape: tuple[int, int], seed: int) -> float:
        """Candidates/s over ``batches`` batches of random stickers (after a few untimed ones)."""
        rng = np.random.default_rng(seed)
        for _ in range(WARMUP_BATCHES):
            self.pool.rows(rng.integers(0, len(self.pool), size=shape))
        t0 = time.perf_counter()
        for _ in range(batches):
            self.pool.rows(rng.integers(0, len(self.pool), size=shape))
        return batches * shape[0] * shape[1] / (time.perf_counter() - t0)

    def memory(self) -> dict[str, int]:
        import psutil

        return {"peak_rss": self.rss.stop(), "uss": psutil.Process().memory_full_info().uss}


def _tile(table, rows: int, id_column: str):
    """``rows`` rows of ``table`` repeated, the copies' ids suffixed ``~<copy>``."""
    import pyarrow as pa

    copies = []
    for r in range(math.ceil(rows / table.num_rows)):
        if r:
            i = table.schema.get_field_index(id_column)
            ids = pa.array([f"{s}~{r}" for s in table[id_column].to_pylist()], table.schema.field(i).type)
            copies.append(table.set_column(i, table.schema.field(i), ids))
        else:
            copies.append(table)
    return pa.concat_tables(copies).slice(0, rows)


def _write_shards(table, where: str, rows_per_shard: int) -> None:
    import pyarrow.parquet as pq

    from ray_sticker import storage

    fs, base = storage.resolve(where)
    fs.create_dir(base, recursive=True)
    for k in range(math.ceil(table.num_rows / rows_per_shard)):
        pq.write_table(table.slice(k * rows_per_shard, rows_per_shard), f"{base}/part-{k:05d}.parquet", filesystem=fs)


def _done(uri: str) -> bool:
    from ray_sticker import storage

    return storage.exists(storage.join(uri, "_COMPLETE"))


def _finish(uri: str) -> str:
    from ray_sticker import storage

    storage.write_text(storage.join(uri, "_COMPLETE"), "")
    return uri


def pool_dataset(stickers: int, px: int, per_pair: int = 100) -> str:
    """A stickers table of ``stickers`` rows: 28 x up to ``per_pair`` distinct synthetic images, tiled."""
    from ray_sticker.data import schema
    from ray_sticker.data.synthetic_select import stickers_table
    from ray_sticker.config import default_home

    per_pair = min(per_pair, math.ceil(stickers / 28))
    uri = f"{default_home()}/bench/datasets/scale-pool-{stickers}-of-{28 * per_pair}-{px}px"
    if not _done(uri):
        base = stickers_table(per_pair, image_size=px)
        _write_shards(_tile(base, stickers, "sticker_id"), schema.stickers_uri(uri), 16384)
        _finish(uri)
    return uri


def examples_dataset(rows: int, px: int, base_rows: int):
    """The train split of a classification dataset of ``rows`` rows (the train split of
    ``base_rows`` synthetic rows, tiled), and the checked inputs of m2sa-tiny on that dataset."""
    import pyarrow.dataset as pads

    from ray_sticker.bench.inputs import bench_config, prepare
    from ray_sticker.data import schema
    from ray_sticker.config import default_home

    inputs = prepare(bench_config("m2sa-tiny", rows=base_rows, image_px=px), px)
    uri = f"{default_home()}/bench/datasets/scale-examples-{rows}-of-{base_rows}-{px}px"
    if not _done(uri):
        train = pads.dataset(schema.split_uri(inputs.cfg.data.uri, "train"), format="parquet").to_table()
        _write_shards(_tile(train, rows, "example_id"), schema.split_uri(uri, "train"), 1024)
        _finish(uri)
    return uri, inputs


def _pools(opts: ScaleOptions, px: int) -> list[dict[str, Any]]:
    """Each pool read into the object store and mapped by ``--workers`` processes; then
    ``--repeats`` rounds in which each size's workers gather in turn (sizes interleaved, so a busy
    machine slows them alike), the median per size; then each worker's memory."""
    import ray

    from ray_sticker.data.pipeline import PoolSpec, read_sticker_ids
    from ray_sticker.data.pool import share_pool

    worker = ray.remote(num_cpus=0)(PoolWorker)  # one size's workers run at a time
    found = []
    for stickers in opts.stickers:
        uri = pool_dataset(stickers, px)
        t0 = time.perf_counter()
        ref = share_pool(uri, PoolSpec(image_size=px), read_sticker_ids(uri))
        ray.wait([ref], fetch_local=False)
        read_s = time.perf_counter() - t0
        encoded = ray.get(ref)
        found.append({"stickers": stickers, "read_s": read_s, "shared": encoded.nbytes, "rates": [],
                      "index": encoded.index_nbytes,
                      "actors": [worker.remote([ref], opts.cache_mb) for _ in range(opts.workers)]})
        del encoded
    shape = (opts.batch_size, opts.candidates)
    for rep in range(opts.repeats):
        for f in found:
            rates = ray.get([a.gather.remote(opts.batches, shape, 1000 * rep + i) for i, a in enumerate(f["actors"])])
            f["rates"].append(float(np.mean(rates)))
    for f in found:
        memory = ray.get([a.memory.remote() for a in f.pop("actors")])
        f.update(candidates_per_s=statistics.median(f["rates"]), uss=max(m["uss"] for m in memory),
                 peak_rss=max(m["peak_rss"] for m in memory))
    return found


def _pipeline_size(rows: int, px: int, batch_size: int, base_rows: int) -> dict[str, Any]:
    from ray_sticker.data.pipeline import build_dataset

    uri, inputs = examples_dataset(rows, px, base_rows)
    ds = build_dataset(uri, "train", inputs.spec, batch_size=inputs.cfg.data.preprocess_batch_size)
    seen = 0
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        first = None
        for batch in ds.iter_torch_batches(batch_size=batch_size, prefetch_batches=2):
            if first is None:
                first, t_first = time.perf_counter() - t0, time.perf_counter()
            else:
                seen += len(batch["skip"])
        steady = seen / max(1e-9, time.perf_counter() - t_first)
    return {"rows": rows, "first_batch_s": first, "samples_per_s": steady, "peak_rss": rss.peak}


def m2sa_release(rows: int, px: int) -> str:
    """An M2SA release as its official code reads it: one corpus file of ``rows`` labelled tweets
    (cut 90/5/5 by the converter) and one JPEG per tweet (16 distinct images, repeated)."""
    import io
    import json
    import os

    from PIL import Image

    from ray_sticker.config import default_home

    root = f"{default_home()}/bench/releases/m2sa-{rows}-{px}px"
    if _done(root):
        return root
    os.makedirs(f"{root}/final_dataset", exist_ok=True)
    os.makedirs(f"{root}/images", exist_ok=True)
    images = []
    for k in range(16):
        buf = io.BytesIO()
        Image.new("RGB", (px, px), (16 * k, 255 - 16 * k, 90)).save(buf, format="JPEG")
        images.append(buf.getvalue())
    labels = ("negative", "neutral", "positive")
    with open(f"{root}/final_dataset/116.twitter-15@German_Twitter_sentiment.json", "w") as f:
        for i in range(rows):
            tid = 568000000000000000 + i
            f.write(json.dumps({"tweetid": tid, "ds_language": "de", "language": "de", "label": labels[i % 3],
                                "normalized_text": f"tweet nummer {i}", "image_paths": [f"images/{tid}_0.jpg"]}) + "\n")
            with open(f"{root}/images/{tid}_0.jpg", "wb") as img:
                img.write(images[i % 16])
    return _finish(root)


def _convert_rate(src: str, cpus: int) -> float:
    """Rows/s of converting ``src`` with Ray Data held to ``cpus`` CPUs."""
    import tempfile

    from ray.data import DataContext, ExecutionResources

    from ray_sticker.data.convert.runner import convert

    options = DataContext.get_current().execution_options
    before = options.resource_limits
    options.resource_limits = ExecutionResources(cpu=cpus)
    try:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            manifest, _ = convert("m2sa", src, out)
            return sum(manifest.splits.values()) / (time.perf_counter() - t0)
    finally:
        options.resource_limits = before


def run_scale(opts: ScaleOptions) -> BenchResult:
    import os

    from ray_sticker.bench.inputs import SYNTHETIC_IMAGE_PX
    from ray_sticker.config import ConfigError
    from ray_sticker.runtime import init_ray

    if not opts.stickers and not opts.examples and not opts.convert_rows:
        raise ConfigError("bench scale: give a pool size (--stickers), a dataset size (--examples) or "
                          "--convert-rows")
    px = opts.image_px or SYNTHETIC_IMAGE_PX
    init_ray(opts.address, num_cpus=os.cpu_count() or 1)
    result = BenchResult(
        bench="scale",
        title=f"scale: the sticker pool ({opts.workers} workers gathering {opts.batches} batches of "
              f"{opts.batch_size}x{opts.candidates} candidates, decode cache {opts.cache_mb:g} MiB, median of "
              f"{opts.repeats} rounds) and the "
              f"pipeline (m2sa-tiny preprocessing), {px}-px images, each size against the smallest",
        columns=[("variant", "variant", ""), ("size", "size", ""), ("figure", "figure", ""),
                 ("value", "value", ".1f"), ("shared MiB", "shared_mib", ".1f"), ("index MiB", "index_mib", ".2f"),
                 ("peak RSS MiB", "peak_rss_mib", ".0f"), ("ratio", "ratio", ".3f"), ("goal", "goal", ""),
                 ("", "status", "")],
        options={**vars(opts), "image_px": px},
    )
    pools = _pools(opts, px)
    for p in pools:
        base = pools[0]
        size = f"{p['stickers']:,} stickers"
        result.add(variant="pool: read into the object store", size=size, figure="stickers/s",
                   value=p["stickers"] / p["read_s"], shared_mib=p["shared"] / MIB, index_mib=p["index"] / MIB)
        result.add(RATE_GOAL if p is not base else None, variant="pool: gather per worker", size=size,
                   figure="candidates/s", value=p["candidates_per_s"], rates=p["rates"],
                   ratio=p["candidates_per_s"] / base["candidates_per_s"])
        bound = base["uss"] + (p["index"] - base["index"])
        result.add(MEMORY_GOAL if p is not base else None, variant="pool: worker memory (USS)", size=size,
                   figure="MiB", value=p["uss"] / MIB, peak_rss_mib=p["peak_rss"] / MIB, ratio=p["uss"] / bound)
    base_rows = min([4096, *opts.examples])
    runs = [_pipeline_size(n, px, opts.batch_size, base_rows) for n in opts.examples]
    for r in runs:
        size = f"{r['rows']:,} rows"
        result.add(variant="pipeline: first batch", size=size, figure="s", value=r["first_batch_s"])
        result.add(RATE_GOAL if r is not runs[0] else None, variant="pipeline: steady", size=size,
                   figure="samples/s", value=r["samples_per_s"], peak_rss_mib=r["peak_rss"] / MIB,
                   ratio=r["samples_per_s"] / runs[0]["samples_per_s"])
    if opts.convert_rows:
        src = m2sa_release(opts.convert_rows, px)
        rates = {cpus: _convert_rate(src, cpus) for cpus in (1, 2)}
        for cpus, rate in rates.items():
            result.add(variant="convert: m2sa release", size=f"{opts.convert_rows:,} tweets", figure=f"rows/s, {cpus} CPU",
                       value=rate, ratio=rate / rates[1])
    result.notes.append("worker memory ratio: USS / (the smallest pool's USS + the index's growth); peak RSS "
                        "also counts the pages of the shared pool a worker touched")
    return result
