"""Partitioned construction under ZeRO-3: towers built so that no rank ever holds all of
their parameters, and pretrained weights copied into the partitions module by module.

Inside :func:`partitioned_construction` (the training loop enters it when
``deepspeed.zero_stage`` is 3, before the model is built):

- Hugging Face towers and models (``from_pretrained``, ``from_config``) see the DeepSpeed
  config through ``transformers.integrations.HfDeepSpeedConfig``: transformers builds them
  under ``deepspeed.zero.Init`` and loads a checkpoint with rank 0 reading it (the others read
  only its keys) while each module's parameters are gathered, filled and partitioned again.
  transformers holds that config only weakly, so it is referenced here until the context ends.
- open_clip towers (:class:`~ray_sticker.models.encoders.VisionTower`) are built under
  :func:`module_init` (``deepspeed.zero.Init``: every submodule's parameters are partitioned
  as soon as its constructor returns) and load their weights with :func:`load_partitioned`.
- Heads and other small modules are built whole and partitioned by ``deepspeed.initialize``.

A partitioned parameter's tensor is empty; its full shape is ``p.ds_shape``
(:func:`full_shape`). Outside the context (stages 0-2, evaluation, export) models are built
whole, as usual.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

_DS_CONFIG: dict[str, Any] | None = None


@contextlib.contextmanager
def partitioned_construction(ds_config: dict[str, Any]) -> Iterator[bool]:
    """Within: models are built partitioned when ``ds_config`` is ZeRO-3 (yields whether)."""
    global _DS_CONFIG
    if ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield False
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(ds_config)  # noqa: F841  (transformers keeps only a weak reference)
    _DS_CONFIG = ds_config
    _mmap_threshold(CONSTRUCTION_MMAP_THRESHOLD)
    try:
        yield True
    finally:
        _DS_CONFIG = None
        unset_hf_deepspeed_config()
        del hf_config
        _mmap_threshold(GLIBC_MMAP_THRESHOLD_MAX)


# glibc's malloc serves a block from its heap unless it is larger than its mmap threshold,
# which starts at 128 KiB and rises to the size of every mapped block freed (up to 32 MiB).
# A block freed into the heap stays resident: the full-size buffers that zero.Init frees
# once it has partitioned a module would pile up there (measured: a rank at 0.83 of the
# model's bytes instead of 0.56 for a 156M-parameter model on 2 ranks). During construction
# every block of 1 MiB or more is its own mapping, returned to the system when freed; after
# it, the threshold is where glibc's own adjustment ends.
CONSTRUCTION_MMAP_THRESHOLD = 1 << 20
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _mmap_threshold(size: int) -> None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "mallopt"):  # glibc; elsewhere left to the allocator
        libc.mallopt(_M_MMAP_THRESHOLD, size)


def active() -> bool:
    return _DS_CONFIG is not None


def module_init():
    """``deepspeed.zero.Init`` with the current config while partitioned construction is on,
    else a null context: modules built inside are partitioned as they are built."""
    if _DS_CONFIG is None:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=_DS_CONFIG)


def is_partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """A parameter's shape, also when ZeRO-3 has partitioned it (its own tensor is then empty)."""
    return tuple(p.ds_shape) if is_partitioned(p) else tuple(p.shape)


def full_numel(p: torch.Tensor) -> int:
    return int(p.ds_numel) if is_partitioned(p) else p.numel()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def read_on_rank0(read: Callable[[], Mapping[str, torch.Tensor]]) -> tuple[Mapping[str, torch.Tensor] | None, dict]:
    """-> (state, shapes) for :func:`load_partitioned`: ``read()`` runs on rank 0 only while
    partitioned construction is on (on every rank otherwise), and the names and shapes of what
    it read, or the error it raised, reach every rank."""
    if not active():
        state = read()
        return state, {k: tuple(v.shape) for k, v in state.items()}
    import torch.distributed as dist

    state, payload = None, None
    if rank() == 0:
        try:
            state = read()
            payload = {k: tuple(v.shape) for k, v in state.items()}
        except Exception as exc:  # noqa: BLE001 - every rank raises it below
            payload = exc
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException):
        raise box[0]
    return state, box[0]


def load_partitioned(module: nn.Module, state: Mapping[str, torch.Tensor] | None,
                     shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """``module.load_state_dict(state, strict=False)`` for a module whose parameters may be
    partitioned: -> (missing, unexpected). ``shapes`` (every rank) names the checkpoint's
    tensors and their shapes; ``state`` (the values) is needed on rank 0 only when the module is
    partitioned (every rank otherwise). Keys and shapes are checked on every rank before any
    value moves, so all ranks fail alike; then one submodule at a time, its own parameters
    are gathered, rank 0 copies the values in and they are partitioned again (peak: the
    partitions plus the largest submodule); buffers, never partitioned, are sent from rank 0.
    Raises ValueError naming the first tensor whose shape differs."""
    own = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    for name, tensor in {**own, **buffers}.items():
        if name in shapes and tuple(shapes[name]) != full_shape(tensor):
            raise ValueError(f"size mismatch for {name}: the checkpoint has {tuple(shapes[name])}, "
                             f"the model {full_shape(tensor)}")
    missing = [k for k in own if k not in shapes] + [k for k in buffers if k not in shapes]
    unexpected = [k for k in shapes if k not in own and k not in buffers]
    partitioned = any(is_partitioned(p) for p in own.values())
    if not partitioned:
        with torch.no_grad():
            for name, tensor in {**own, **buffers}.items():
                if name in shapes:
                    tensor.copy_(state[name])
        return missing, unexpected

    import deepspeed
    import torch.distributed as dist

    rank0 = rank() == 0
    with torch.no_grad():
        for prefix, sub in module.named_modules():
            dot = f"{prefix}." if prefix else ""
            params = [(f"{dot}{n}", p) for n, p in sub.named_parameters(recurse=False) if f"{dot}{n}" in shapes]
            if params:
                with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0):
                    if rank0:
                        for name, p in params:
                            p.data.copy_(state[name])
            for n, buf in sub.named_buffers(recurse=False):
                name = f"{dot}{n}"
                if name in shapes and buf is not None:
                    if rank0:
                        buf.copy_(state[name])
                    dist.broadcast(buf, src=0)
    return missing, unexpected


def gathered_init(module: nn.Module, init) -> None:
    """Run ``init(module)`` (an initialisation that writes the parameters of submodules, which
    ``deepspeed.zero.Init`` has already partitioned) on rank 0 with the module's parameters
    gathered, then partition them again; directly when nothing is partitioned."""
    params = list(module.parameters())
    if not any(is_partitioned(p) for p in params):
        init(module)
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        if rank() == 0:
            init(module)
