"""Candidate sets for sticker response selection: the positive plus distractors.

A candidate set is ``num_candidates`` distinct sticker ids in a seeded random order with the
positive exactly once; the positive is never among its own distractors (a bug of some
public loaders that makes the task ill-posed). Converters store the sets in
``examples.candidate_ids``; rows without a stored set get one drawn from the whole pool,
seeded by the example id, so every epoch and every worker sees the same set.
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


def example_rng(example_id: str, seed: int) -> np.random.Generator:
    """A generator seeded by (example id, seed): the same candidates on every worker and epoch."""
    return np.random.default_rng([zlib.crc32(example_id.encode("utf-8")), seed])
