"""Training-time image augmentation on the worker's device, reproducible by construction.

Ray Data tasks see each row again every epoch without knowing which epoch it is, so random
augmentation there cannot be both fresh per epoch and repeatable. The workers know: each
draws its crops from a generator seeded by ``(seed, epoch, rank)`` (see :func:`epoch_seed`), so
the same seed and world size give the same augmented batches — also after a restart from a
checkpoint mid-run. The images arrive resized and centre-cropped (uint8 CHW).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's randomness (augmentation, dropout) in one epoch."""
    return (seed * 1_000_003 + (epoch + 1) * 10_007 + rank) % (2**63 - 1)


def random_resized_crop_flip(pixels: torch.Tensor, generator: torch.Generator,
                             scale: tuple[float, float] = (0.7, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per image: a crop of ``scale`` of the area with aspect ``ratio``, resized back to the
    input size (bilinear), mirrored with probability 1/2. ``pixels``: uint8 (B, C, H, W)."""
    b = pixels.shape[0]
    device = pixels.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator, device=device)

    area = uniform(*scale)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop sides as fractions of the image's
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * uniform(-1.0, 1.0)  # crop centre in [-1, 1] coordinates
    cy = (1 - h) * uniform(-1.0, 1.0)
    flip = torch.where(torch.rand(b, generator=generator, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    out = F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_erasing(pixels: torch.Tensor, generator: torch.Generator, p: float,
                   scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Per image, with probability ``p``: a rectangle of ``scale`` of the area with aspect
    ``ratio`` set to 0 (torchvision's ``RandomErasing`` defaults). ``pixels``: uint8 (B, C, H, W)."""
    b, _, h, w = pixels.shape
    device = pixels.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator, device=device)

    erase = torch.rand(b, generator=generator, device=device) < p
    area = uniform(*scale) * h * w
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (uniform(0.0, 1.0) * (h - eh + 1)).long().clamp(max=h - 1)
    left = (uniform(0.0, 1.0) * (w - ew + 1)).long().clamp(max=w - 1)
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
           & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))
    mask = (box & erase[:, None, None]).unsqueeze(1)  # (B, 1, H, W)
    return pixels.masked_fill(mask, 0)
