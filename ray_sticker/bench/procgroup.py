"""A torch process group for benchmarks that run the engine outside Ray Train (which
otherwise creates it): the rendezvous variables Ray Train sets, then ``init_process_group``."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from typing import Any, Callable, Iterator

_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group(rank: int = 0, world: int = 1, port: int | None = None, backend: str = "gloo") -> Iterator[bool]:
    """Join (or, for one rank, create) a process group on 127.0.0.1:``port``; yields whether it
    was created here. An existing group is reused and left alone. The group and the
    environment variables are restored on exit."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield False
        return
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port or free_port()), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        yield True
    finally:
        dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
