"""Small layers shared by the model modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageNormalize(nn.Module):
    """uint8 CHW batches from the pipeline -> normalised floats in the model's dtype.
    Accepts any leading shape (``(B, 3, H, W)`` or candidates ``(B, K, 3, H, W)``)."""

    def __init__(self, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    @classmethod
    def for_tower(cls, vision_spec: dict[str, Any] | None) -> "ImageNormalize":
        spec = vision_spec or {}
        return cls(spec.get("image_mean", CLIP_MEAN), spec.get("image_std", CLIP_STD))

    def forward(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = pixels.float()
        if pixels.dtype == torch.uint8:
            x = x / 255.0
        return ((x - self.mean) / self.std).to(dtype)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the token axis of ``(B, T, D)``; ``mask`` ``(B, T)`` (1 = real token)."""
    if mask is None:
        return tokens.mean(dim=1)
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def model_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's floating-point parameters (bf16/fp16 under DeepSpeed)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
