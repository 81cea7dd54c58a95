"""A torch process group outside Ray Train (which otherwise creates it): for local mode
(``train.num_workers: 0``, the loop in the driver as the only rank) and the benchmarks that run
the engine themselves. The rendezvous variables Ray Train sets, then ``init_process_group``."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Iterator

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
    forget_deepspeed_groups()
    try:
        yield True
    finally:
        dist.destroy_process_group()
        forget_deepspeed_groups()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def forget_deepspeed_groups() -> None:
    """DeepSpeed keeps a clone of the world group for the process: one cloned from a group that
    has ended must not reach the next (called when a group starts and ends here)."""
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        groups._WORLD_GROUP = None
