"""``ray-sticker bench load``: each rank's peak resident memory while the model of a config is
built and while DeepSpeed initializes it, at ZeRO-0 (every rank builds the whole model)
against ZeRO-3 (towers built partitioned, see models/partitioned.py), from random weights
(nothing downloaded), against the model's bytes.

Each stage runs in fresh rank processes (torch.multiprocessing, gloo), built by the training
loop's own ``train.engine.build_model`` and ``initialize``. Every figure is the rank's peak
resident memory (``VmHWM``, restarted just before construction) minus its resident memory
at that moment: the libraries imported and the process group up, the constant left out
(printed in the notes).

Goals, per rank, as a multiple of the model's bytes: construction at ZeRO-3 <= 0.6 (1/N for
N = 2 ranks, plus the largest module, which exists whole until zero.Init partitions it), at
ZeRO-0 about 1.0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_sticker.bench.report import BenchResult, Goal

STAGE3_GOAL: Goal = ("<=", 0.6)
STAGE0_GOAL: Goal = ("~", 0.15)


@dataclass
class LoadOptions:
    config: str = "mmsair"
    overrides: list[str] = field(default_factory=list)
    workers: int = 2
    stages: tuple[int, ...] = (0, 3)
    threads: int = 1  # torch threads per rank


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    """This process's peak resident memory since :func:`_reset_peak` (``VmHWM``). Not
    ``ru_maxrss``: Linux carries a parent's resident size at fork into the ``ru_maxrss`` of a
    spawned child, so a large parent (a test worker) would be read as the child's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    """Start ``VmHWM`` again from the current resident size (Linux 4.0+: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rank_main(rank: int, world: int, port: int, job: dict[str, Any], out_dir: str) -> None:
    import torch

    from ray_sticker.train.procgroup import process_group
    from ray_sticker.config import from_dict
    from ray_sticker.models.registry import list_archs
    from ray_sticker.train import engine as ds_engine

    torch.set_num_threads(job["threads"])
    cfg = from_dict(job["experiment"])
    ds_engine.prepare_deepspeed(on_gpu=False)
    list_archs()  # every model module imported
    import open_clip  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    with process_group(rank, world, port, "gloo"):
        _reset_peak()
        before = _resident()
        model = ds_engine.build_model(job["model_config"], cfg, "fp32", on_gpu=False)
        built = _peak()
        engine, _ = ds_engine.initialize(model, cfg, 10, on_gpu=False, precision="fp32")
        initialized = _peak()
        local, total = ds_engine.partition_numel(engine)
        figures = {"rank": rank, "stage": cfg.deepspeed.zero_stage, "before": before,
                   "construction": max(0, built - before), "initialize": max(0, initialized - before),
                   "after": max(0, _resident() - before), "numel": total, "local_numel": local}
    with open(os.path.join(out_dir, f"stage{cfg.deepspeed.zero_stage}-rank{rank}.json"), "w") as f:
        json.dump(figures, f)


def _measure(opts: LoadOptions, experiment: dict[str, Any], model_config: dict[str, Any]) -> list[dict[str, Any]]:
    from ray_sticker.bench.procgroup import spawn_ranks

    jobs = [{"experiment": {**experiment, "deepspeed": {**experiment["deepspeed"], "zero_stage": stage}},
             "model_config": model_config, "threads": opts.threads}
            for stage in opts.stages]  # fresh processes per stage: a peak only grows
    return spawn_ranks(_rank_main, opts.workers, jobs)


def run_load(opts: LoadOptions) -> BenchResult:
    from ray_sticker.config import ConfigError, load_config
    from ray_sticker.models.params import random_weights
    from ray_sticker.models.registry import get_model_config

    if opts.workers < 2:
        raise ConfigError("bench load: --workers must be at least 2 (ZeRO-3 partitions over ranks)")
    cfg = load_config(opts.config, list(opts.overrides)).resolved()
    model_config = random_weights(get_model_config(cfg.model.name, cfg.model.overrides))
    found = _measure(opts, cfg.to_dict(), model_config)
    model_bytes = found[0]["numel"] * 4  # fp32

    result = BenchResult(
        "load",
        f"load: {cfg.model.name} (random weights), peak resident memory per rank above its level before "
        f"construction, {opts.workers} ranks (processes, gloo), fp32",
        [("stage", "stage", "d"), ("moment", "moment", ""), ("MB/rank", "mb", ",.0f"),
         ("ranks min..max MB", "spread", ""), ("x model bytes", "ratio", ".3f"), ("goal", "goal", ""),
         ("", "status", "")],
        options=vars(opts),
    )
    for stage in opts.stages:
        ranks = [r for r in found if r["stage"] == stage]
        for key, moment in (("construction", "construction (peak)"), ("initialize", "to end of initialize (peak)"),
                            ("after", "resident after initialize")):
            values = [r[key] for r in ranks]
            row = {"stage": stage, "moment": moment, "mb": float(np.mean(values)) / 2**20,
                   "spread": f"{min(values) / 2**20:,.0f}..{max(values) / 2**20:,.0f}",
                   "ratio": float(np.mean(values)) / model_bytes}
            goals = {0: STAGE0_GOAL, 3: STAGE3_GOAL} if key == "construction" else {}
            result.add(goals.get(stage), **row)
    before = [r["before"] for r in found]
    result.notes.append(f"model: {found[0]['numel']:,} parameters, {model_bytes / 2**20:,.0f} MB in fp32")
    result.notes.append(f"constant not counted: each rank's resident memory before construction (imports, "
                        f"process group), {min(before) / 2**20:,.0f}..{max(before) / 2**20:,.0f} MB")
    return result
