"""``ray-sticker bench ingest``: the Ray Data pipeline's samples/s against two baselines
measured in the same run, every one running the pipeline's own ``preprocess_batch`` (decode,
resize, tokenize, labels) on the same Parquet files:

- ceiling: one process, a pyarrow + PIL loop, times the number of cores the others use;
- torch DataLoader: an iterable dataset over the split's files, shared out over one worker per core.

Each variant makes full passes over the train split, consuming torch batches of
``--batch-size``; one warm-up pass each (process start, imports) is left out; the passes are
interleaved and the median is reported: the time to the first batch, and the samples/s over the
last three quarters of a pass (its steady state).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ray_sticker.bench.inputs import BenchInputs, bench_config, numpy_columns, prepare, split_dataset
from ray_sticker.bench.report import BenchResult

CEILING_GOAL = (">=", 0.8)
DATALOADER_GOAL = (">=", 1.0)


@dataclass
class IngestOptions:
    config: str = "m2sa-tiny"
    overrides: list[str] = field(default_factory=list)
    rows: int = 8000  # rows of the synthetic dataset (the train split is 3/4 of them)
    image_px: int | None = None  # side of the synthetic source images (default 48, as training writes them)
    batch_size: int | None = None  # default: the config's data.preprocess_batch_size
    repeats: int = 3
    warmup: int = 1
    workers: int | None = None  # cores used by Ray Data and DataLoader workers (default: all, or the cluster's)
    address: str | None = None


class ParquetBatches(IterableDataset):
    """The split's Parquet files shared out over the DataLoader's workers (file i to worker
    i mod n), their record batches preprocessed into dicts of tensors by the pipeline's own
    function."""

    def __init__(self, inputs: BenchInputs, batch_size: int) -> None:
        self.inputs, self.batch_size = inputs, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        shard = (info.id, info.num_workers) if info is not None else (0, 1)
        return _preprocessed(self.inputs, self.batch_size, shard)


def _preprocessed(inputs: BenchInputs, batch_size: int, shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Any]]:
    """Torch batches of the files of ``shard`` = (index, count), in file order."""
    from ray_sticker.data.pipeline import preprocess_batch

    index, count = shard
    fragments = sorted(split_dataset(inputs).get_fragments(), key=lambda f: f.path)
    for fragment in fragments[index::count]:
        for rb in fragment.to_batches(columns=inputs.spec.columns(), batch_size=batch_size):
            yield {k: torch.from_numpy(v) for k, v in preprocess_batch(numpy_columns(rb), inputs.spec).items()}


@dataclass
class Pass:
    """One pass: its samples, the seconds to its first batch, and the samples/s of its steady
    state (the last three quarters of its samples: what a pass does before the first batch,
    Ray Data's tasks running ahead, is left out with the ramp)."""

    samples: int
    first_batch_s: float
    steady: float


def _timed(batches) -> Pass:
    t0 = time.perf_counter()
    marks = []  # (seconds, samples so far) after each batch
    samples = 0
    for batch in batches:
        samples += len(batch["skip"])
        marks.append((time.perf_counter() - t0, samples))
    if not marks:
        return Pass(0, time.perf_counter() - t0, 0.0)
    t_q, n_q = next(m for m in marks if m[1] >= samples / 4)
    t_end = marks[-1][0]
    return Pass(samples, marks[0][0], (samples - n_q) / max(1e-9, t_end - t_q))


def _ceiling_pass(inputs: BenchInputs, batch_size: int) -> Pass:
    return _timed(_preprocessed(inputs, batch_size))


def _ray_pass(inputs: BenchInputs, batch_size: int, preserve_order: bool) -> Pass:
    from ray_sticker.data.pipeline import build_dataset

    ds = build_dataset(inputs.cfg.data.uri, inputs.cfg.data.train_split, inputs.spec, batch_size=batch_size)
    ds.context.execution_options.preserve_order = preserve_order  # as the trainer sets it
    return _timed(ds.iter_torch_batches(batch_size=batch_size, prefetch_batches=2))


def _ray_cpus(requested: int | None, address: str | None) -> int:
    import os

    import ray

    from ray_sticker.runtime import init_ray

    init_ray(address, num_cpus=requested or os.cpu_count() or 1)
    return int(ray.cluster_resources().get("CPU", 1))


def run_ingest(opts: IngestOptions) -> BenchResult:
    cfg = bench_config(opts.config, opts.overrides, opts.rows, image_px=opts.image_px)
    inputs = prepare(cfg, opts.image_px)
    batch_size = opts.batch_size or cfg.data.preprocess_batch_size
    cpus = _ray_cpus(opts.workers, opts.address)
    loader = DataLoader(ParquetBatches(inputs, batch_size), batch_size=None, num_workers=cpus,
                        persistent_workers=True, prefetch_factor=2, multiprocessing_context="spawn")
    order = cfg.data.deterministic
    variants: dict[str, Callable[[], Pass]] = {
        "single process (pyarrow + PIL)": lambda: _ceiling_pass(inputs, batch_size),
        f"torch DataLoader ({cpus} workers)": lambda: _timed(loader),
        f"Ray Data (preserve_order={order})": lambda: _ray_pass(inputs, batch_size, order),
        f"Ray Data (preserve_order={not order})": lambda: _ray_pass(inputs, batch_size, not order),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    firsts: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(opts.warmup + opts.repeats):
        for name, one_pass in variants.items():
            found = one_pass()
            if rep >= opts.warmup:
                rates[name].append(found.steady)
                firsts[name].append(found.first_batch_s)
    med = {name: statistics.median(r) for name, r in rates.items()}
    first = {name: statistics.median(f) for name, f in firsts.items()}

    names = list(variants)
    ceiling = med[names[0]] * cpus
    px = f", {inputs.source_image_px}-px images to {cfg.data.image_size} px" if inputs.source_image_px else ""
    result = BenchResult(
        bench="ingest",
        title=f"ingest: {cfg.model.name} preprocessing of {inputs.train_rows} rows{px} from {cfg.data.uri}, "
              f"batches of {batch_size}, {cpus} cores, median of {opts.repeats} passes",
        columns=[("variant", "variant", ""), ("first batch s", "first_batch_s", ".2f"),
                 ("samples/s", "samples_per_s", ".1f"), ("vs", "baseline", ""),
                 ("ratio", "ratio", ".3f"), ("goal", "goal", ""), ("", "status", "")],
        options={**vars(opts), "batch_size": batch_size, "cpus": cpus},
    )
    result.add(variant=names[0], first_batch_s=first[names[0]], samples_per_s=med[names[0]], rates=rates[names[0]])
    result.add(variant=f"ceiling = single process x {cpus}", samples_per_s=ceiling)
    result.add(variant=names[1], first_batch_s=first[names[1]], samples_per_s=med[names[1]], rates=rates[names[1]],
               baseline="ceiling", ratio=med[names[1]] / ceiling)
    for name, goal in ((names[2], True), (names[3], False)):
        result.add(CEILING_GOAL if goal else None, variant=name, first_batch_s=first[name], samples_per_s=med[name],
                   rates=rates[name], baseline="ceiling", ratio=med[name] / ceiling)
        result.add(DATALOADER_GOAL if goal else None, variant=name, samples_per_s=med[name],
                   baseline="DataLoader", ratio=med[name] / med[names[1]])
    result.notes.append("samples/s of the train split over the last three quarters of each pass (its steady state), "
                        "consumed as torch batches in this process; the time to the first batch beside it (Ray Data "
                        "plans and starts its tasks every pass, the DataLoader's workers persist); the goals apply "
                        "to Ray Data as the trainer runs it (data.deterministic)")
    return result
