"""What training and evaluation do alike to each batch the pipeline delivers: drop the rows it
marked unusable (counted per reason, summed over ranks, checked against
``data.max_corrupt_fraction``) and gather each example's candidates from the sticker pool;
and what training alone adds (fresh negatives, augmentation)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

import numpy as np
import torch

from ray_sticker.config import ExperimentConfig
from ray_sticker.data.pipeline import SKIP_OK, SKIP_REASONS, DataQualityError, count_skips
from ray_sticker.train.metrics import all_reduce_sum

if TYPE_CHECKING:
    from ray_sticker.data.pool import StickerPool


class RowCodes(NamedTuple):
    """What the pipeline says of each row of a batch: its skip code, and whether text was cut."""

    skip: np.ndarray
    truncated: np.ndarray


def keep_usable(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], RowCodes, bool]:
    """Drop rows the pipeline marked unusable; returns (batch, row codes, all-skipped flag).
    A fully skipped batch keeps one row with zero loss weight so every rank still runs the
    same collectives (ZeRO-3 gathers parameters inside forward)."""
    skip = batch.pop("skip")
    truncated = batch.pop("truncated", None)
    codes = RowCodes(skip.cpu().numpy(), truncated.cpu().numpy() > 0 if truncated is not None
                     else np.zeros(len(skip), dtype=bool))
    keep = skip == SKIP_OK
    empty = not bool(keep.any())
    if empty:
        keep[0] = True
    if bool(keep.all()):
        return batch, codes, empty
    return {k: v[keep] for k, v in batch.items()}, codes, empty


def attach_candidates(batch: dict[str, torch.Tensor], pool: "StickerPool",
                      redraw: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Gather the candidates' pool rows into the batch as ``candidate_<key>`` (B, K, ...), their
    images decoded here (data/pool.py). ``redraw=(seed, epoch)``: first draw anew the sets the
    pipeline drew (``candidate_key`` >= 0) for that epoch (data/candidates.py); the sets a
    dataset stores are kept."""
    keys = batch.pop("candidate_key", None)
    if redraw is not None and keys is not None:
        _redraw(batch, keys, len(pool), *redraw)
    for key, value in pool.take(batch["candidate_idx"]).items():
        batch[f"candidate_{key}"] = value
    return batch


def prepare_train_batch(batch: dict[str, torch.Tensor], pool: "StickerPool | None",
                        cfg: ExperimentConfig, epoch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """What training adds to a usable batch: its candidates from the pool (selection; redrawn
    for the epoch where ``data.train_negatives`` says so) and, with ``data.augment``, a random
    resized crop and flip of its images, the candidate stickers' included, then random erasing
    with probability ``data.random_erasing`` (train/augment.py); with ``data.synonym_replacement``,
    each row's text or one of its synonym-replaced copies (:func:`pick_text_copies`)."""
    from ray_sticker.train.augment import random_erasing, random_resized_crop_flip

    if pool is not None:
        redraw = (cfg.train.seed, epoch) if cfg.data.train_negatives == "per_epoch" else None
        batch = attach_candidates(batch, pool, redraw)
    pick_text_copies(batch, generator)
    if cfg.data.augment:
        for key in ("pixel_values", "candidate_pixel_values"):
            if key in batch:  # candidates (B, K, 3, H, W): each sticker cropped on its own
                pixels = batch[key]
                flat = random_resized_crop_flip(pixels.reshape(-1, *pixels.shape[-3:]), generator)
                if cfg.data.random_erasing > 0:
                    flat = random_erasing(flat, generator, cfg.data.random_erasing)
                batch[key] = flat.reshape(pixels.shape)
    return batch


def pick_text_copies(batch: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Per row, uniformly among its text and its ``V`` synonym copies (``synonym_<key>``
    ``(B, V, ...)``, data/synonyms.py), as EDA trains on the original and its augmented copies;
    the copies leave the batch."""
    keys = [k for k in batch if k.startswith("synonym_")]
    if not keys:
        return
    b, v = batch[keys[0]].shape[:2]
    choice = torch.randint(0, v + 1, (b,), generator=generator, device=generator.device)  # 0: the text itself
    for key in keys:
        copies = batch.pop(key)
        own = batch[key[len("synonym_"):]]
        picked = copies[torch.arange(b, device=copies.device), (choice - 1).clamp(min=0).to(copies.device)]
        use = (choice > 0).to(copies.device).view(b, *[1] * (own.dim() - 1))
        batch[key[len("synonym_"):]] = torch.where(use, picked, own)


def _redraw(batch: dict[str, torch.Tensor], keys: torch.Tensor, pool_size: int, seed: int, epoch: int) -> None:
    from ray_sticker.data.candidates import redraw_candidates

    drawn = (keys >= 0).nonzero().squeeze(1)
    if drawn.numel() == 0:
        return
    idx, target = batch["candidate_idx"], batch["target"]
    positive = idx[drawn].gather(1, target[drawn].unsqueeze(1)).squeeze(1)
    new_idx, new_target = redraw_candidates(positive.cpu().numpy(), keys[drawn].cpu().numpy(), pool_size,
                                            idx.shape[1], seed, epoch)
    idx, target = idx.clone(), target.clone()
    idx[drawn] = torch.from_numpy(new_idx).to(idx.device)
    target[drawn] = torch.from_numpy(new_target).to(target.device)
    batch["candidate_idx"], batch["target"] = idx, target


def timed(iterable: Iterable) -> Iterator[tuple[Any, float]]:
    """Yield (item, seconds spent waiting for it)."""
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield item, time.perf_counter() - t0


class SkipCounter:
    """Rows seen, skipped per reason, and with text cut at its input's ``max_length``."""

    def __init__(self) -> None:
        self.seen = 0
        self.truncated = 0
        self.by_reason: dict[str, int] = {}

    def add(self, codes: RowCodes) -> None:
        self.seen += int(codes.skip.size)
        self.truncated += int(np.count_nonzero(codes.truncated))
        for reason, n in count_skips(codes.skip).items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n

    def check(self, max_fraction: float, where: str) -> dict[str, float]:
        """Sum over ranks; raise DataQualityError above the threshold; return the counts."""
        reasons = list(SKIP_REASONS.values())
        totals = all_reduce_sum([self.seen, self.truncated] + [self.by_reason.get(r, 0) for r in reasons])
        seen, truncated = int(totals[0]), int(totals[1])
        counts = {r: int(c) for r, c in zip(reasons, totals[2:]) if c}
        skipped = sum(counts.values())
        if seen and skipped / seen > max_fraction:
            detail = ", ".join(f"{n} {r}" for r, n in counts.items())
            raise DataQualityError(
                f"{where}: skipped {skipped} of {seen} rows ({skipped / seen:.1%}: {detail}), "
                f"above data.max_corrupt_fraction={max_fraction}"
            )
        return {"rows_seen": seen, "rows_skipped": skipped, "rows_text_truncated": truncated,
                **{f"skipped[{r}]": n for r, n in counts.items()}}
