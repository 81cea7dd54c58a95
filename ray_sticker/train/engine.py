"""DeepSpeed engine setup inside a Ray Train worker.

Ray Train has already created the process group (gloo on CPU, nccl on GPU);
``deepspeed.initialize`` reuses it. The optimizer is built here with one parameter group
per tower so that frozen towers and per-tower learning rates work at every ZeRO stage
(frozen parameters are simply left out of the optimizer).
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from typing import Any

import torch
from torch import nn

from ray_sticker.config import ExperimentConfig
from ray_sticker.models.partitioned import full_numel, full_shape

log = logging.getLogger("ray_sticker.train")

# DeepSpeed's default: ZeRO-3 never partitions a parameter of at most this many elements.
ZERO3_PERSISTENCE_THRESHOLD = 100_000


def gpu_precision(device: int | None = None) -> tuple[str, str]:
    """(precision, why) for ``deepspeed.precision: auto`` on a CUDA GPU: bf16 where the GPU
    computes it natively (Ampere and later; emulated bf16 on older cards is slow), else fp16
    with dynamic loss scaling on GPUs with tensor cores (compute capability 7.0+: V100, T4),
    else fp32."""
    name = torch.cuda.get_device_name(device)
    capability = torch.cuda.get_device_capability(device)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16", f"{name} computes bf16"
    if capability >= (7, 0):
        return "fp16", f"{name} (compute capability {capability[0]}.{capability[1]}) lacks bf16; fp16 with loss scaling"
    return "fp32", f"{name} (compute capability {capability[0]}.{capability[1]}) has no fast half precision"


def resolve_precision(cfg: ExperimentConfig, on_gpu: bool) -> tuple[str, str]:
    """(precision, why) of a worker: ``deepspeed.precision``, with ``auto`` resolved."""
    requested = cfg.deepspeed.precision
    if not on_gpu:  # half precision on CPU is slower and unsupported by several ops
        return "fp32", "CPU workers train in fp32"
    if requested == "auto":
        return gpu_precision()
    return requested, "deepspeed.precision"


def deepspeed_config(cfg: ExperimentConfig, precision: str) -> dict[str, Any]:
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True,
                    stage3_param_persistence_threshold=ZERO3_PERSISTENCE_THRESHOLD)
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # Offloaded optimizer states are stepped by DeepSpeedCPUAdam on GPUs and by torch's own
        # optimizer on CPU-only workers (see build_optimizer).
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": precision == "bf16"},
        # loss_scale 0: dynamic loss scaling (start at 2^16, halve on overflow, grow after 1000 clean steps)
        "fp16": ({"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                  "hysteresis": 2, "min_loss_scale": 1} if precision == "fp16" else {"enabled": False}),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def tower_kind(module: nn.Module) -> str | None:
    """"text" / "vision" for backbone modules (TextTower, VisionTower, or any module that
    declares ``tower_kind``), None otherwise."""
    from ray_sticker.models.encoders import TextTower, VisionTower

    if isinstance(module, TextTower):
        return "text"
    if isinstance(module, VisionTower):
        return "vision"
    return getattr(module, "tower_kind", None)


def tower_of_parameters(model: nn.Module) -> dict[str, str]:
    """Parameter name -> "text" | "vision" | "head", by the backbone module that holds it."""
    kinds: dict[str, str] = {}
    for prefix, module in model.named_modules():
        kind = tower_kind(module)
        if kind is None:
            continue
        for name, _ in module.named_parameters(prefix=prefix):
            kinds.setdefault(name, kind)
    return {name: kinds.get(name, "head") for name, _ in model.named_parameters()}


def freeze_towers(model: nn.Module, cfg: ExperimentConfig) -> None:
    frozen = {"text": cfg.model.freeze_text, "vision": cfg.model.freeze_vision}
    kinds = tower_of_parameters(model)
    for name, p in model.named_parameters():
        if frozen.get(kinds[name]):
            p.requires_grad_(False)


def param_groups(model: nn.Module, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Trainable parameters grouped by tower (own lr) and by decay (no decay on biases/norms)."""
    lrs = {"text": cfg.model.text_lr or cfg.train.lr, "vision": cfg.model.vision_lr or cfg.train.lr}
    kinds = tower_of_parameters(model)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = len(full_shape(p)) >= 2  # (ZeRO-3 partitions built partitioned are flat and empty)
        groups.setdefault((kinds[name], decay), []).append(p)
    return [
        {"params": params, "lr": lrs.get(tower, cfg.train.lr), "name": f"{tower}{'' if decay else '-no-decay'}",
         "weight_decay": cfg.train.weight_decay if decay else 0.0}
        for (tower, decay), params in sorted(groups.items())
    ]


def build_optimizer(groups: list[dict[str, Any]], cfg: ExperimentConfig, on_gpu: bool = False) -> torch.optim.Optimizer:
    """The optimizer of ``train.optimizer``; with ``deepspeed.offload_optimizer`` on GPUs, Adam(W)
    is DeepSpeed's vectorised CPU Adam, which steps the states kept in CPU memory."""
    if not groups:
        raise ValueError("nothing to train: every tower is frozen and the model has no other parameters")
    betas = (cfg.train.adam_beta1, cfg.train.adam_beta2)
    if on_gpu and cfg.deepspeed.offload_optimizer and cfg.train.optimizer in ("adam", "adamw"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.train.lr, betas=betas, adamw_mode=cfg.train.optimizer == "adamw")
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=betas)
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.train.lr, betas=betas)
    from transformers.optimization import Adafactor

    return Adafactor(groups, lr=cfg.train.lr, scale_parameter=False, relative_step=False, warmup_init=False)


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def check_parameters(model: nn.Module) -> None:
    """DeepSpeed broadcasts parameters as byte views, which fails on 0-dim tensors: learnable
    scalars (temperatures, gates) must have shape (1,)."""
    scalars = [name for name, p in model.named_parameters() if not full_shape(p)]
    if scalars:
        raise ValueError(f"0-dim parameters {scalars} cannot be trained under DeepSpeed; give them shape (1,)")


def check_root_parameters(model: nn.Module, zero_stage: int) -> None:
    """ZeRO-3 gathers a module's partitioned parameters before its backward through a hook on
    the tensors its forward returns. Models return ``ModelOutput``, a dataclass the hook cannot
    look into (DeepSpeed warns: "tensors embedded in it cannot be detected ... may not get
    triggered properly"), so the hook never fires for the model itself; every submodule returns
    tensors, tuples or Hugging Face outputs (dicts), whose hooks do fire. That is harmless as
    long as the model's own parameters (not its submodules') are never partitioned, which
    ZeRO-3 guarantees below its persistence threshold: learnable temperatures and gates are
    of shape (1,). A larger one belongs in a submodule; refused here rather than left to fail
    in backward."""
    if zero_stage != 3:
        return
    large = [(name, full_numel(p)) for name, p in model.named_parameters(recurse=False)
             if full_numel(p) > ZERO3_PERSISTENCE_THRESHOLD]
    if large:
        raise ValueError(f"{type(model).__name__} holds parameters {large} itself: under ZeRO-3 parameters of more "
                         f"than {ZERO3_PERSISTENCE_THRESHOLD} elements must live in a submodule (see "
                         "engine.check_root_parameters)")


def skip_cpu_inference_comm_op() -> None:
    """When its communication backend starts, DeepSpeed builds (on a fresh machine: compiles,
    about 80 s on 2 cores) and loads a CPU shared-memory all-reduce that only its CPU inference
    path uses; training over gloo never does. The op counts as unavailable when DeepSpeed's
    table of compatible ops says so (``deepspeed/comm/torch.py:build_shm_op``, its only reader):
    an empty table, set before the table is first probed, skips it."""
    import deepspeed.ops  # after load_deepspeed()

    if "__compatible_ops__" not in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__ = {}


def load_deepspeed():
    """``import deepspeed`` without two import-time costs of parts this library never uses,
    together about 6 s of CPU in every worker of every run (2-core machine):

    - ``deepspeed.autotuning`` imports mlflow when it is installed (3 s), for its autotuner.
      mlflow is hidden while DeepSpeed is imported, so the autotuner sees none; this
      library's MLflow tracking imports it later as usual.
    - its ZeRO optimizers import its Muon optimizer to test ``isinstance(optimizer, Muon)``,
      and that module's ``@torch.compile`` decorators import ``torch._inductor`` (3.5 s).
      It is imported once with ``torch.compile`` the identity: Muon, which no config here
      selects, would run eagerly.
    """
    if "deepspeed" in sys.modules and _MUON in sys.modules:
        return sys.modules["deepspeed"]
    hide_mlflow = "mlflow" not in sys.modules
    if hide_mlflow:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # `import mlflow` raises ImportError
    try:
        import deepspeed
    finally:
        if hide_mlflow:
            del sys.modules["mlflow"]
    if _MUON not in sys.modules:
        compile_ = torch.compile
        torch.compile = _no_compile  # type: ignore[assignment]
        try:
            importlib.import_module(_MUON)
        except ImportError:  # a DeepSpeed without Muon
            pass
        finally:
            torch.compile = compile_
    return deepspeed


_MUON = "deepspeed.runtime.zero.muon.muon_optimizer"


def prepare_deepspeed(on_gpu: bool):
    """DeepSpeed imported (:func:`load_deepspeed`) and, on CPU workers, without its CPU
    inference op (:func:`skip_cpu_inference_comm_op`): before anything starts its backend."""
    deepspeed = load_deepspeed()
    if not on_gpu:
        skip_cpu_inference_comm_op()
    return deepspeed


def _no_compile(model=None, **_):
    return model if model is not None else (lambda fn: fn)


def build_model(model_config: dict[str, Any], cfg: ExperimentConfig, precision: str, on_gpu: bool) -> nn.Module:
    """The model of a run. At ZeRO-3 its towers are built partitioned over the ranks, their
    pretrained weights copied in module by module (see models/partitioned.py); no rank holds
    a whole tower at any moment. Call on every rank together, in the process group."""
    from ray_sticker.models.partitioned import partitioned_construction
    from ray_sticker.models.registry import build_from_config

    prepare_deepspeed(on_gpu)  # zero.Init starts DeepSpeed's communication backend
    with partitioned_construction(deepspeed_config(cfg, precision)):
        return build_from_config(model_config)


def initialize(model: nn.Module, cfg: ExperimentConfig, total_steps: int, on_gpu: bool, precision: str | None = None):
    """-> (engine, precision). ``total_steps`` counts optimizer steps (after accumulation);
    ``precision`` as :func:`resolve_precision` gave it (resolved here when None)."""
    deepspeed = prepare_deepspeed(on_gpu)
    check_parameters(model)
    check_root_parameters(model, cfg.deepspeed.zero_stage)
    freeze_towers(model, cfg)
    if precision is None:
        precision, why = resolve_precision(cfg, on_gpu)
        log.info("precision %s (deepspeed.precision=%s: %s)", precision, cfg.deepspeed.precision, why)
    optimizer = build_optimizer(param_groups(model, cfg), cfg, on_gpu)
    warmup = int(cfg.train.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.scheduler, total_steps, warmup))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, precision),
        dist_init_required=False,
    )
    return engine, precision


def partition_numel(engine) -> tuple[int, int]:
    """(parameters held by this rank, full parameter count): ZeRO-3 partitions are visible
    as ``p.ds_tensor`` (this rank's shard) and ``p.ds_numel`` (full size)."""
    local = total = 0
    for p in engine.module.parameters():
        if hasattr(p, "ds_numel"):
            total += p.ds_numel
            local += p.ds_tensor.numel()
        else:
            total += p.numel()
            local += p.numel()
    return local, total
