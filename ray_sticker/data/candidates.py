"""Candidate sets for sticker response selection: the positive plus distractors.

A candidate set is ``num_candidates`` distinct sticker ids in a seeded random order with the
positive exactly once; the positive is never among its own distractors (a bug of some
public loaders that makes the task ill-posed). Converters store the sets in
``examples.candidate_ids`` where the release fixes them; rows without a stored set get one
drawn from the whole pool, seeded by the example id, so every worker sees the same set.

Where a paper samples its negatives (``data.train_negatives: per_epoch``), the training
workers redraw those drawn sets every epoch (:func:`redraw_candidates`), seeded by (example,
seed, epoch): fresh negatives each epoch, the same ones on any rank and after a resume.
Evaluation and stored sets keep the fixed draw.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np


def sample_candidates(positive: str, pool: Sequence[str], num_candidates: int, rng: np.random.Generator,
                      exclude: Sequence[str] = ()) -> list[str]:
    """``positive`` + ``num_candidates - 1`` distinct distractors from ``pool`` (without the
    positive and ``exclude``), shuffled."""
    banned = set(exclude) | {positive}
    choices = [s for s in dict.fromkeys(pool) if s not in banned]
    need = num_candidates - 1
    if need < 0:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if len(choices) < need:
        raise ValueError(f"need {need} distractors for sticker {positive!r} but the pool offers {len(choices)}")
    picked = [choices[i] for i in rng.choice(len(choices), size=need, replace=False)] if need else []
    out = picked + [positive]
    return [out[i] for i in rng.permutation(len(out))]


def example_key(example_id: str) -> int:
    """A stable non-negative integer of an example id (CRC-32): what its draws are seeded by."""
    return zlib.crc32(example_id.encode("utf-8"))


def example_rng(example_id: str, seed: int) -> np.random.Generator:
    """A generator seeded by (example id, seed): the same candidates on every worker and epoch."""
    return np.random.default_rng([example_key(example_id), seed])


def redraw_candidates(positive: np.ndarray, keys: np.ndarray, pool_size: int, num_candidates: int, seed: int,
                      epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate sets as pool rows for one epoch: per example, its positive (pool row
    ``positive[i]``) and ``num_candidates - 1`` distinct other rows, shuffled, from a generator
    seeded by (``keys[i]``, ``seed``, ``epoch``). Returns (``candidate_idx`` (B, K), ``target`` (B,))."""
    need = num_candidates - 1
    if pool_size - 1 < need:
        raise ValueError(f"need {need} distractors per example but the pool has {pool_size} stickers")
    idx = np.empty((len(positive), num_candidates), dtype=np.int64)
    target = np.empty(len(positive), dtype=np.int64)
    for i, (pos, key) in enumerate(zip(positive.tolist(), keys.tolist())):
        rng = np.random.default_rng([key, seed, epoch])
        picked = rng.choice(pool_size - 1, size=need, replace=False)
        picked += picked >= pos  # the rows other than the positive's
        order = rng.permutation(num_candidates)
        idx[i] = np.append(picked, pos)[order]
        target[i] = int(np.flatnonzero(order == need)[0])
    return idx, target
