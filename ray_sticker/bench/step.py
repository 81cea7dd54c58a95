"""``ray-sticker bench step``: a worker's training step (DeepSpeed through
``train.engine.initialize``, as the training loop runs it: ``engine(batch)``,
``engine.backward``, ``engine.step``) against a plain PyTorch loop with the same model, batch,
optimizer, schedule and gradient clipping, measured side by side in one process.

The engine runs in a process group of one rank made here (gloo on CPU, nccl on CUDA): ZeRO
stages 0 and 2 then do their real bookkeeping but their collectives cost next to nothing, so
the figure is the engine's own overhead; with 2+ workers the gradient all-reduce adds to it.
The batch is one real batch of the pipeline, on the device, reused every step (no data wait);
``--pipeline`` adds a run fed by Ray Data as a worker is, with its data-wait share.

On CUDA the engine trains in the config's precision (``auto``: bf16) and the plain loop under
bf16 autocast; ``--compile`` adds compiled variants (``torch.compile`` / ``engine.compile()``).
MFU = FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode`` on forward + backward:
matmuls, convolutions, attention) / step time / the GPU's dense bf16 peak.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ray_sticker.bench.inputs import bench_config, prepare, sample_batch, torch_batch
from ray_sticker.train.procgroup import process_group
from ray_sticker.bench.report import BenchResult, Goal

OVERHEAD_GOAL: Goal = ("<=", 1.10)

# Dense bf16 peak TFLOP/s by GPU name (first match wins): NVIDIA's data sheets.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
    ("A800", 312.0), ("A100", 312.0),
)

# Published training speeds to print beside a model's figures (full size, one GPU).
PAPER_SPEEDS: dict[str, str] = {
    "eigml": "EIGML paper: 0.5068 it/s at batch 16 on one A800 (312 TFLOP/s bf16 peak)",
}


@dataclass
class StepOptions:
    config: str = "m2sa-tiny"
    overrides: list[str] = field(default_factory=list)
    batch_size: int | None = None  # default: the config's train.batch_size
    steps: int = 40  # timed steps per repeat
    repeats: int = 7
    warmup: int = 5
    stages: tuple[int, ...] = (0, 2)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    random_init: bool = False  # random weights + offline tokenizer (full-size configs without network)
    pipeline: bool = False
    threads: int | None = None  # torch CPU threads (default: as many as a worker gets, int(train.cpus_per_worker) or 1)
    rows: int | None = None  # rows of the synthetic dataset (default: the config's)
    address: str | None = None


def peak_flops(gpu_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU by name, None when unknown (or no GPU)."""
    if not gpu_name:
        return None
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in gpu_name:
            return tflops * 1e12
    return None


@dataclass
class Variant:
    name: str
    step: Callable[[], Any]
    baseline: str | None = None
    goal: Goal | None = None
    engine: Any = None
    times: list[float] = field(default_factory=list)  # seconds per step, one per repeat
    step_peak_bytes: int = 0  # GPU: the most its steps allocated above what was resident before them


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def _plain_variant(inputs, cfg, batch, device, precision: str, total_steps: int, compiled: bool) -> tuple[Variant, Any]:
    """The same model, optimizer (per-tower groups), schedule and clipping in a plain loop."""
    from ray_sticker.models.registry import build_from_config
    from ray_sticker.train.engine import build_optimizer, freeze_towers, lr_lambda, param_groups
    from ray_sticker.train.loop import set_seed

    set_seed(cfg.train.seed)
    model = build_from_config(inputs.model_cfg).to(device)
    freeze_towers(model, cfg)
    optimizer = build_optimizer(param_groups(model, cfg), cfg)
    warmup = int(cfg.train.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.scheduler, total_steps, warmup))
    params = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.deepspeed.gradient_clipping
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        with _autocast(device, precision):
            loss = forward(batch).loss
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    name = "plain PyTorch" + (" + compile" if compiled else "")
    return Variant(name, step, baseline=None if not compiled else "plain PyTorch"), model


def _engine_variant(inputs, cfg, batch, stage: int, on_gpu: bool, total_steps: int, compiled: bool) -> Variant:
    """A DeepSpeed engine from the training loop's own setup (ZeRO-3: built partitioned),
    stepped as the loop steps it."""
    from ray_sticker.train import engine as ds_engine
    from ray_sticker.train.loop import set_seed

    staged = cfg.model_copy(deep=True)
    staged.deepspeed.zero_stage = stage
    set_seed(cfg.train.seed)
    precision, _ = ds_engine.resolve_precision(staged, on_gpu)
    model = ds_engine.build_model(inputs.model_cfg, staged, precision, on_gpu)
    engine, _ = ds_engine.initialize(model, staged, total_steps, on_gpu, precision)
    if compiled:
        engine.compile()

    def step() -> None:
        out = engine(batch)
        engine.backward(out.loss)
        engine.step()

    suffix = " + compile" if compiled else ""
    return Variant(f"DeepSpeed ZeRO-{stage}{suffix}", step, baseline="plain PyTorch" + suffix,
                   goal=OVERHEAD_GOAL if stage == 0 else None, engine=engine)


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (forward + backward), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _time(variants: list[Variant], opts: StepOptions, device: torch.device) -> None:
    """Warm-up steps for each, then ``repeats`` rounds, each timing ``steps`` steps of every
    variant in turn (interleaved, so that a busy machine slows them alike)."""
    for v in variants:
        for _ in range(opts.warmup):
            v.step()
        _sync(device)
    on_gpu = device.type == "cuda"
    for _ in range(opts.repeats):
        for v in variants:
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            for _ in range(opts.steps):
                v.step()
            _sync(device)
            v.times.append((time.perf_counter() - t0) / opts.steps)
            if on_gpu:
                v.step_peak_bytes = max(v.step_peak_bytes, torch.cuda.max_memory_allocated(device) - resident)


def _pipeline_run(inputs, engine, opts: StepOptions, batch_size: int, device: torch.device) -> dict[str, float]:
    """Steps of ``engine`` fed by the Ray Data pipeline as a worker is (on-device batches,
    candidates gathered, images augmented): samples/s and the share of time spent waiting."""
    from ray_sticker.data.pipeline import build_dataset
    from ray_sticker.runtime import init_ray
    from ray_sticker.train.batches import prepare_train_batch

    cfg = inputs.cfg
    init_ray(opts.address)
    pool = inputs.run.load_pool()
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    wanted = opts.warmup + opts.steps * opts.repeats
    waited = stepped = 0.0
    samples = steps = 0
    while steps < wanted:  # whole passes until enough steps
        ds = build_dataset(cfg.data.uri, cfg.data.train_split, inputs.spec, batch_size=cfg.data.preprocess_batch_size)
        ds.context.execution_options.preserve_order = cfg.data.deterministic
        it = iter(ds.iter_torch_batches(batch_size=batch_size, device=device, drop_last=True, prefetch_batches=2))
        while steps < wanted:
            t0 = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            t1 = time.perf_counter()
            batch.pop("skip")
            batch.pop("truncated", None)
            batch = prepare_train_batch(batch, pool, cfg, 0, generator)
            out = engine(batch)
            engine.backward(out.loss)
            engine.step()
            _sync(device)
            t2 = time.perf_counter()
            if steps >= opts.warmup:
                waited, stepped, samples = waited + t1 - t0, stepped + t2 - t1, samples + batch_size
            steps += 1
    return {"samples_per_s": samples / max(1e-9, waited + stepped), "data_wait": waited / max(1e-9, waited + stepped)}


def _resolve_device(requested: str) -> torch.device | None:
    """The device to run on; None when CUDA was asked for and there is none."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    return torch.device("cpu")


def worker_threads(cpus_per_worker: float) -> int:
    """Torch CPU threads of a Ray Train worker: Ray sets OMP_NUM_THREADS to its whole CPUs, at least 1."""
    return max(1, int(cpus_per_worker))


def _measure(inputs, cfg, batch, device: torch.device, precision: str, opts: StepOptions):
    """-> (timed variants, FLOPs of one step, (name, figures) of the fed run or None)."""
    on_gpu = device.type == "cuda"
    total_steps = opts.warmup + opts.repeats * opts.steps + 1
    plain, model = _plain_variant(inputs, cfg, batch, device, precision, total_steps, compiled=False)
    flops = count_flops(plain.step)  # one eager step, before the warm-up
    del model
    variants = [plain] + [_engine_variant(inputs, cfg, batch, s, on_gpu, total_steps, False) for s in opts.stages]
    if opts.compile:
        variants.append(_plain_variant(inputs, cfg, batch, device, precision, total_steps, compiled=True)[0])
        variants += [_engine_variant(inputs, cfg, batch, s, on_gpu, total_steps, True) for s in opts.stages]
    _time(variants, opts, device)
    fed = None
    eager_engines = [v for v in variants if v.engine is not None and not v.name.endswith("compile")]
    if opts.pipeline and eager_engines:
        v = eager_engines[0]
        fed = (v.name, _pipeline_run(inputs, v.engine, opts, cfg.train.batch_size, device))
    return variants, flops, fed


def run_step(opts: StepOptions) -> BenchResult:
    overrides = list(opts.overrides) + ([f"train.batch_size={opts.batch_size}"] if opts.batch_size else [])
    cfg = bench_config(opts.config, overrides, opts.rows, random_init=opts.random_init)
    device = _resolve_device(opts.device)
    columns = [("variant", "variant", ""), ("ms/step", "ms_per_step", ".2f"), ("it/s", "it_per_s", ".3f"),
               ("samples/s", "samples_per_s", ".1f"), ("step peak MB", "step_peak_mb", ",.0f"),
               ("TFLOP/s", "tflops", ".4g"), ("MFU", "mfu", ".1%"), ("data wait", "data_wait", ".1%"),
               ("vs", "baseline", ""), ("ratio", "ratio", ".3f"), ("goal", "goal", ""), ("", "status", "")]
    title = f"step: {cfg.model.name}, batch {cfg.train.batch_size}"
    if device is None:
        result = BenchResult("step", title, columns, options=vars(opts))
        result.notes.append("no GPU: skipped")
        return result
    on_gpu = device.type == "cuda"
    inputs = prepare(cfg)
    batch = torch_batch(sample_batch(inputs, cfg.train.batch_size), inputs.run.load_pool(), device)
    from ray_sticker.train.engine import resolve_precision

    precision, _ = resolve_precision(cfg, on_gpu)

    threads = opts.threads or worker_threads(cfg.train.cpus_per_worker)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with process_group(backend="nccl" if on_gpu else "gloo"):
            variants, flops, fed = _measure(inputs, cfg, batch, device, precision, opts)
    finally:
        torch.set_num_threads(saved_threads)

    gpu = torch.cuda.get_device_name(device) if on_gpu else None
    peak = peak_flops(gpu) if precision in ("bf16", "fp16") else None
    result = BenchResult(
        "step",
        f"{title}, {device.type} ({gpu or f'CPU, {threads} thread(s)'}), {precision}, one rank, median of {opts.repeats} x {opts.steps} "
        f"steps after {opts.warmup} warm-up",
        columns,
        options={**vars(opts), "batch_size": cfg.train.batch_size, "device": str(device), "precision": precision,
                 "threads": threads},
    )
    med = {v.name: statistics.median(v.times) for v in variants}
    for v in variants:
        s = med[v.name]
        ratio = s / med[v.baseline] if v.baseline else None
        result.add(v.goal, variant=v.name, ms_per_step=1e3 * s, it_per_s=1.0 / s, samples_per_s=cfg.train.batch_size / s,
                   step_peak_mb=v.step_peak_bytes / 2**20 if on_gpu else None,
                   tflops=flops / s / 1e12, mfu=flops / s / peak if peak else None, baseline=v.baseline or "",
                   ratio=ratio, times_s=v.times)
    if fed is not None:
        name, figures = fed
        result.add(variant=f"{name} fed by Ray Data", samples_per_s=figures["samples_per_s"],
                   data_wait=figures["data_wait"], baseline=name,
                   ratio=(cfg.train.batch_size / med[name]) / figures["samples_per_s"])
    result.notes.append(f"FLOPs per step {flops / 1e9:.3f} G (FlopCounterMode: forward + backward of the plain "
                        "model; matmuls, convolutions, attention)" + ("" if peak else "; MFU needs a GPU of known peak"))
    result.notes.append("one rank in a process group made here: the gradient all-reduce of 2+ workers is not in "
                        "these figures; the step excludes data loading and augmentation")
    if opts.pipeline and fed is not None:
        result.notes.append("fed by Ray Data: the ratio is fixed-batch samples/s over fed samples/s (>1: data wait "
                            "slows the step)")
    if cfg.model.name in PAPER_SPEEDS and on_gpu:
        here = "; ".join(f"{v.name}: {1.0 / med[v.name]:.4f} it/s" for v in variants)
        result.notes.append(f"{PAPER_SPEEDS[cfg.model.name]}; here, batch {cfg.train.batch_size}: {here}")
    if on_gpu:
        result.notes.append(f"GPU memory: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB resident with every "
                            "variant built (weights, optimizer states); 'step peak MB' is what a variant's steps "
                            "allocated above what was resident")
    if not on_gpu:
        result.notes.append("GPU figures: " + ("no GPU: skipped" if not torch.cuda.is_available() else
                                               "run with --device cuda"))
    return result
