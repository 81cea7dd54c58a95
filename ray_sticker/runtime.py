"""Connecting to Ray: the cluster of a submitted job, a given address, or a new local one."""

from __future__ import annotations

import os


def local_system_config(num_cpus: int) -> dict:
    """Settings of a local Ray this library starts: idle worker processes are kept (10 min, up
    to ``max(4, num_cpus)``) instead of being ended after a second, so that Ray Data tasks of the
    next epoch or run do not re-import torch and the tokenizers in fresh processes (a 1-epoch
    tiny run on 2 CPUs: 30 s instead of 38 s once warm)."""
    return {"idle_worker_killing_time_threshold_ms": 600_000, "num_workers_soft_limit": max(4, num_cpus)}


def quiet_data_progress() -> None:
    """No Ray Data progress bars from this process: epoch logs report throughput instead (a
    sweep's trials call this too, since each drives its own datasets)."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to ``address`` / ``RAY_ADDRESS`` (e.g. inside ``ray job submit``) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    quiet_data_progress()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        num_cpus = num_cpus or os.cpu_count() or 1
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=True, _system_config=local_system_config(num_cpus))
