"""Consolidated model export and loading: ``model.safetensors`` + ``config.json``.

Under ZeRO-3 the parameters are gathered from every rank first (all ranks call
:func:`export_model`); rank 0 writes. ``config.json`` holds the experiment config, the
resolved architecture config and the dataset's label maps, so that an export is enough
to rebuild and evaluate the model anywhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ray_sticker import storage
from ray_sticker.config import ExperimentConfig, from_dict
from ray_sticker.train.checkpoints import INTEGRITY_DIR, verify

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def consolidated_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full fp32 state dict on every rank (ZeRO-3 parameters gathered from all ranks first)."""
    from ray_sticker.train.engine import load_deepspeed

    deepspeed = load_deepspeed()
    module = engine.module
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in module.state_dict().items()}
    return state


def write_run_config(directory: str, cfg: ExperimentConfig, model_config: dict[str, Any],
                     label_maps: dict[str, list[str]]) -> None:
    """``config.json``: experiment config, resolved architecture and label maps, keys in their
    order: the order of a model's heads is part of it (the first head's metrics are the short
    ``accuracy``/``f1`` names; an MLLM's prompt lists the heads and its answer follows them)."""
    meta = {"experiment": cfg.to_dict(), "architecture": model_config, "label_maps": label_maps}
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(meta, f, indent=2)


def export_model(engine, cfg: ExperimentConfig, model_config: dict[str, Any], uri: str,
                 label_maps: dict[str, list[str]], rank: int) -> None:
    state = consolidated_state_dict(engine)
    if rank != 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(tmp, WEIGHTS),
                  metadata={"format": "pt"})
        storage.upload_dir(tmp, uri)
        # config.json last: readers take a directory without it for an unfinished export.
        write_run_config(tmp, cfg, model_config, label_maps)
        with open(os.path.join(tmp, CONFIG), "rb") as f:
            storage.write_bytes(storage.join(uri, CONFIG), f.read())


def load_model(uri: str):
    """An export or a training checkpoint directory (local or s3://) ->
    (model in eval mode with its weights, experiment config, label maps)."""
    from ray_sticker.models.registry import build_from_config

    local = storage.local_copy(uri)
    if not os.path.exists(os.path.join(local, CONFIG)):
        raise FileNotFoundError(f"{uri} is neither an export nor a checkpoint: {CONFIG} not found")
    with open(os.path.join(local, CONFIG)) as f:
        meta = json.load(f)
    has_weights = os.path.exists(os.path.join(local, WEIGHTS))
    problem = verify(local) if not has_weights and os.path.isdir(os.path.join(local, INTEGRITY_DIR)) else None
    if problem:
        raise ValueError(f"checkpoint {uri} cannot be used: {problem}")
    model = build_from_config(meta["architecture"])
    state = load_file(os.path.join(local, WEIGHTS)) if has_weights else state_dict_from_checkpoint(local)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"export {uri} does not match its architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval(), from_dict(meta["experiment"]), meta.get("label_maps", {})


def state_dict_from_checkpoint(checkpoint_dir: str, tag: str = "state") -> dict[str, Any]:
    """Consolidate a DeepSpeed checkpoint directory (any ZeRO stage) into one fp32 state dict."""
    from ray_sticker.train.engine import load_deepspeed

    load_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    files = os.listdir(os.path.join(checkpoint_dir, tag))
    if any(f.startswith("zero_pp_rank_") for f in files):  # ZeRO stages 1-3
        # DeepSpeed prints its progress (and a progress bar): into the log, not the console.
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
            state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=tag)
        logging.getLogger("deepspeed.zero_to_fp32").info("%s%s", out.getvalue(), err.getvalue())
        return state
    # ZeRO stage 0: the full module is in the model-states file.
    state = torch.load(os.path.join(checkpoint_dir, tag, "mp_rank_00_model_states.pt"),
                       map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in state["module"].items()}
