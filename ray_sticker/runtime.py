"""Connecting to Ray: the cluster of a submitted job, a given address, or a new local one."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to ``address`` / ``RAY_ADDRESS`` (e.g. inside ``ray job submit``) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # epoch logs report throughput instead
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), log_to_driver=True)
