"""Benchmarks as commands (``ray-sticker bench ingest|step|zero``): each measures the library's
own code beside a baseline in the same run and prints one table of ratios against goals.

- ``ingest``: Ray Data preprocessing vs a single-process loop x cores (the ceiling) and a
  torch DataLoader, same preprocessing (bench/ingest.py);
- ``step``: a worker's DeepSpeed step (ZeRO 0 and 2) vs a plain PyTorch loop; MFU on GPUs
  (bench/step.py);
- ``zero``: per-rank parameter and optimizer-state bytes under ZeRO 0-3 vs the ZeRO paper
  (bench/zero.py);
- ``load``: per-rank peak memory while a model is built and initialized, ZeRO-3 (built
  partitioned) vs ZeRO-0, against the model's bytes (bench/load.py);
- ``scale``: the sticker pool's gather rate and per-worker memory, and the pipeline's samples/s,
  at growing sizes up to the papers' real ones, against the smallest size (bench/scale.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray_sticker.bench.report import BenchResult

BENCHES = ("ingest", "step", "zero", "load", "scale")


def _options_class(what: str):
    if what == "ingest":
        from ray_sticker.bench.ingest import IngestOptions

        return IngestOptions
    if what == "step":
        from ray_sticker.bench.step import StepOptions

        return StepOptions
    if what == "zero":
        from ray_sticker.bench.zero import ZeroOptions

        return ZeroOptions
    if what == "load":
        from ray_sticker.bench.load import LoadOptions

        return LoadOptions
    if what == "scale":
        from ray_sticker.bench.scale import ScaleOptions

        return ScaleOptions
    raise ValueError(f"unknown benchmark '{what}'; available: {', '.join(BENCHES)}")


def make_options(what: str, values: dict[str, Any]):
    """The options of benchmark ``what`` from ``values`` (e.g. parsed arguments): the fields it
    has, None meaning its default."""
    cls = _options_class(what)
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in values.items() if k in names and v is not None}
    for name in ("stages", "stickers", "examples"):  # integers, as a list or comma-separated
        value = given.get(name)
        if isinstance(value, str):
            value = value.split(",")
        if value is not None:
            given[name] = tuple(int(s) for s in value if str(s).strip())
    return cls(**given)


def run_bench(what: str, values: dict[str, Any] | None = None) -> BenchResult:
    """Run one benchmark with options from ``values`` and return its figures."""
    opts = make_options(what, values or {})
    if what == "ingest":
        from ray_sticker.bench.ingest import run_ingest

        return run_ingest(opts)
    if what == "step":
        from ray_sticker.bench.step import run_step

        return run_step(opts)
    if what == "zero":
        from ray_sticker.bench.zero import run_zero

        return run_zero(opts)
    if what == "scale":
        from ray_sticker.bench.scale import run_scale

        return run_scale(opts)
    from ray_sticker.bench.load import run_load

    return run_load(opts)
