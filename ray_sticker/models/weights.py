"""Pretrained weights that no hub serves in the form a tower loads: converted once by
``ray-sticker weights``, then named by the model config's ``pretrained`` (local or s3://)."""

from __future__ import annotations

import os
import tempfile

import torch

from ray_sticker import storage


def convert_albef(src: str, out: str, image_size: int = 128) -> str:
    """ALBEF's checkpoint (``ALBEF.pth``: ``{"model": {...}, ...}``) at ``src`` -> the state dict
    of EIGML's vision tower (see ``eigml.albef_vision_weights``) written to ``out``."""
    from ray_sticker.models.eigml import albef_vision_weights

    if not storage.exists(src):
        raise FileNotFoundError(f"ALBEF checkpoint not found: {src}")
    try:
        checkpoint = torch.load(storage.local_copy(src), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle and zip errors have no common type
        raise ValueError(f"{src} is not a readable torch checkpoint: {exc}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{src} holds a {type(checkpoint).__name__}, not ALBEF's checkpoint dict")
    state = albef_vision_weights(checkpoint, image_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.pt")
        torch.save(state, path)
        with open(path, "rb") as f:
            storage.write_bytes(out, f.read())
    return out
