"""Connecting to Ray (the cluster of a submitted job, a given address, or a new local one) and
the logging of the processes it runs."""

from __future__ import annotations

import logging
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
    """Attach to ``address`` / ``RAY_ADDRESS`` (e.g. inside ``ray job submit``) or start a local Ray.
    Whether the output of tasks and actors is echoed here is Ray's ``RAY_LOG_TO_DRIVER`` (the
    command line turns it off unless ``--verbose``); else it stays in Ray's log files on each
    node (``<ray temp dir>/session_latest/logs/``)."""
    import ray

    from ray_sticker.console import route_library_loggers

    if ray.is_initialized():
        return
    quiet_data_progress()
    route_library_loggers()  # ray and ray.data are imported by now
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        num_cpus = num_cpus or os.cpu_count() or 1
        ray.init(address="local", num_cpus=num_cpus, _system_config=local_system_config(num_cpus))


def worker_logging() -> None:
    """INFO logs with timestamps from the library inside Ray worker processes."""
    logger = logging.getLogger("ray_sticker")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
