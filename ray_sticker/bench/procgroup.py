"""Benchmark ranks in fresh processes (the process group itself: train/procgroup.py)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

from ray_sticker.train.procgroup import free_port


def spawn_ranks(fn: Callable[..., None], workers: int, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each job in turn, ``fn(rank, workers, port, job, out_dir)`` on ``workers`` fresh
    processes (torch.multiprocessing; a free rendezvous port each time); -> what the ranks
    wrote to ``out_dir`` as JSON files, in the order of their names."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        for job in jobs:
            mp.spawn(fn, args=(workers, free_port(), job, out_dir), nprocs=workers, join=True)
        found = []
        for name in sorted(os.listdir(out_dir)):
            with open(os.path.join(out_dir, name)) as f:
                found.append(json.load(f))
    return found
