"""``ray-sticker bench zero``: per-rank memory of parameters and optimizer states under ZeRO
stages 0-3 with N ranks, against the ZeRO paper's expectation (stage 1 partitions the
optimizer states, 2 also the gradients, 3 also the parameters).

The ranks are N processes (torch.multiprocessing, gloo) that build the engine with the
training loop's own ``train.engine.initialize`` and take one real step, so that the optimizer
states exist. Cheaper than a Ray Train run: no cluster, no data pipeline, and every stage
runs in the same processes one after another; memory is read from the tensors, which needs
nothing of Ray.

Measured per rank, in bytes:
- parameters: the module's parameters, ZeRO-3's ``p.ds_tensor`` shard where partitioned;
- optimizer states: the tensors of the (inner) torch optimizer's ``state`` (Adam: exp_avg,
  exp_avg_sq);
- fp32 master weights: the fp32 partitions ZeRO 1-3 keep and step in its optimizer wrapper
  (``single_partition_of_fp32_groups``, ``fp32_partitioned_groups_flat``): the tensors the
  inner optimizer steps where they are not the parameters' own storage; none at stage 0 in
  fp32 (the optimizer steps the parameters).

Expectation, with Psi parameters (trainable Psi_t), N ranks and b bytes per parameter
(4 fp32, 2 bf16/fp16): parameters Psi*b, at stage 3 Psi*b/N; Adam states 8*Psi_t, at stages
1-3 8*Psi_t/N; master weights 0 at stage 0 in fp32 (4*Psi_t in bf16/fp16), 4*Psi_t/N at 1-3
(the paper's K = 12 bytes of optimizer state per parameter = master + two moments).
Gradients are not measured (stage 2 keeps them in transient reduce buckets).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_sticker.bench.inputs import bench_config, prepare, sample_batch
from ray_sticker.bench.report import BenchResult, Goal

MATCH_GOAL: Goal = ("~", 0.1)  # measured / expected within 10%
ADAM_STATE_BYTES = 8  # exp_avg + exp_avg_sq, fp32
MASTER_BYTES = 4


@dataclass
class ZeroOptions:
    config: str = "m2sa-tiny"
    overrides: list[str] = field(default_factory=list)
    workers: int = 2
    stages: tuple[int, ...] = (0, 1, 2, 3)
    batch_size: int | None = None
    rows: int | None = None
    threads: int = 1  # torch threads per rank


def _bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def memory_of(engine) -> dict[str, int]:
    """Bytes this rank holds: parameters (ZeRO-3 shards), optimizer states, fp32 master weights
    (the tensors the inner optimizer steps, where they are not the parameters' own storage);
    and the full (Psi) and trainable (Psi_t) parameter counts."""
    import torch

    params = list(engine.module.parameters())
    local = [p.ds_tensor if hasattr(p, "ds_tensor") else p for p in params]
    numel = sum(int(p.ds_numel) if hasattr(p, "ds_numel") else p.numel() for p in params)
    trainable = sum(int(p.ds_numel) if hasattr(p, "ds_numel") else p.numel() for p in params if p.requires_grad)
    wrapper = engine.optimizer
    inner = getattr(wrapper, "optimizer", None)
    torch_opt = inner if isinstance(inner, torch.optim.Optimizer) else wrapper
    states = [v for s in torch_opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    own = {t.untyped_storage().data_ptr() for t in local}
    # The optimizer's state is keyed by the tensors it steps (ZeRO-3 empties its param groups after a step).
    masters = [t for t in torch_opt.state if t.untyped_storage().data_ptr() not in own]
    return {"params": _bytes(local), "optimizer_states": _bytes(states), "master_weights": _bytes(masters),
            "numel": numel, "trainable": trainable, "param_bytes": params[0].element_size() if params else 4}


def expected(stage: int, numel: int, trainable: int, world: int, param_bytes: int, precision: str) -> dict[str, float]:
    """The ZeRO paper's per-rank bytes (see the module docstring)."""
    master = 0 if precision == "fp32" else MASTER_BYTES * trainable  # fp32: the parameters are the master weights
    return {
        "params": numel * param_bytes / (world if stage == 3 else 1),
        "optimizer_states": ADAM_STATE_BYTES * trainable / (world if stage >= 1 else 1),
        "master_weights": master / (world if stage >= 1 else 1),
    }


def _rank_main(rank: int, world: int, port: int, job: dict[str, Any], out_dir: str) -> None:
    """One rank: for every stage, build the engine, take one step, write its memory as JSON."""
    import gc

    import torch

    from ray_sticker.bench.inputs import torch_batch
    from ray_sticker.train.procgroup import process_group
    from ray_sticker.config import from_dict
    from ray_sticker.train import engine as ds_engine
    from ray_sticker.train.loop import set_seed

    torch.set_num_threads(job["threads"])
    cfg = from_dict(job["experiment"])
    batch = torch_batch(job["batch"], job["pool"], torch.device("cpu"))
    with process_group(rank, world, port, "gloo"):
        for stage in job["stages"]:
            staged = cfg.model_copy(deep=True)
            staged.deepspeed.zero_stage = stage
            set_seed(cfg.train.seed)
            model = ds_engine.build_model(job["model_config"], staged, "fp32", on_gpu=False)  # ZeRO-3: built partitioned
            engine, precision = ds_engine.initialize(model, staged, 10, on_gpu=False, precision="fp32")
            out = engine(dict(batch))
            engine.backward(out.loss)
            engine.step()
            figures = {**memory_of(engine), "stage": stage, "rank": rank, "precision": precision}
            with open(os.path.join(out_dir, f"stage{stage}-rank{rank}.json"), "w") as f:
                json.dump(figures, f)
            del engine, out
            gc.collect()


def _measure(opts: ZeroOptions, job: dict[str, Any]) -> list[dict[str, Any]]:
    from ray_sticker.bench.procgroup import spawn_ranks

    return spawn_ranks(_rank_main, opts.workers, [job])


def run_zero(opts: ZeroOptions) -> BenchResult:
    from ray_sticker.config import ConfigError

    if opts.workers < 2:
        raise ConfigError("bench zero: --workers must be at least 2 (ZeRO partitions over ranks)")
    overrides = list(opts.overrides) + ([f"train.batch_size={opts.batch_size}"] if opts.batch_size else [])
    cfg = bench_config(opts.config, overrides, opts.rows)
    inputs = prepare(cfg)
    job = {"experiment": cfg.to_dict(), "model_config": inputs.model_cfg, "stages": list(opts.stages),
           "batch": sample_batch(inputs, cfg.train.batch_size), "pool": inputs.run.load_pool(), "threads": opts.threads}
    found = _measure(opts, job)

    result = BenchResult(
        "zero",
        f"zero: {cfg.model.name}, bytes per rank, {opts.workers} ranks (processes, gloo), after one step; "
        "expected = ZeRO paper",
        [("stage", "stage", "d"), ("memory", "memory", ""), ("expected B/rank", "expected", ",.0f"),
         ("measured B/rank", "measured", ",.0f"), ("ranks min..max", "spread", ""), ("vs ZeRO-0", "vs_stage0", ".3f"),
         ("measured/expected", "ratio", ".3f"), ("goal", "goal", ""), ("", "status", "")],
        options={**vars(opts), "batch_size": cfg.train.batch_size},
    )
    by_stage = {s: [r for r in found if r["stage"] == s] for s in opts.stages}
    stage0: dict[str, float] = {}
    extra: list[int] = []  # stages holding memory the paper expects none of
    for stage, ranks in by_stage.items():
        first = ranks[0]
        want = expected(stage, first["numel"], first["trainable"], opts.workers, first["param_bytes"],
                        first["precision"])
        for key, label in (("params", "parameters"), ("optimizer_states", "optimizer states"),
                           ("master_weights", "fp32 master weights")):
            values = [r[key] for r in ranks]
            mean = float(np.mean(values))
            if stage == 0:
                stage0[key] = mean
            ratio = mean / want[key] if want[key] else (1.0 if mean == 0 else None)
            result.add(MATCH_GOAL, stage=stage, memory=label, expected=want[key], measured=mean,
                       spread=f"{min(values):,}..{max(values):,}",
                       vs_stage0=mean / stage0[key] if stage0.get(key) else None, ratio=ratio,
                       status=None if ratio is not None else "MISS")
            if ratio is None:
                extra.append(stage)
    total = by_stage[opts.stages[0]][0]
    result.notes.append(f"{total['numel']:,} parameters ({total['trainable']:,} trainable), "
                        f"{total['param_bytes']} bytes each, {total['precision']}, optimizer {cfg.train.optimizer}")
    result.notes.append("vs ZeRO-0: measured / stage 0's measured (ZeRO-1/2 optimizer states: 1/N expected)")
    if extra:
        result.notes.append(f"ZeRO-{'/'.join(map(str, extra))}: DeepSpeed steps an fp32 copy of each rank's partition "
                            "even when training in fp32, where the paper counts none (the parameters are the "
                            "master weights): +4 B x trainable / N per rank")
    if cfg.train.optimizer not in ("adam", "adamw"):
        result.notes.append(f"the expectation counts Adam's two moments; {cfg.train.optimizer} keeps other states")
    return result
