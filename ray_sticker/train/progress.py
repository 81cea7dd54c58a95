"""One line per epoch on the driver while a run trains.

Ray Train calls user callbacks in its controller actor, which it places on the driver's node
(Ray 2.60: a node-affinity label). :class:`ReportCallback` there appends each epoch's
metrics (rank 0's report) as a JSON line to a file of the driver's (in local mode, which runs
no callbacks, the loop calls them itself); :class:`EpochProgress`
follows that file from a thread and logs one line per epoch to ``ray_sticker.progress``
(the console shows it unless ``-q``): epoch, step, loss, the main validation figure,
samples/s, data wait, epoch time and the estimated time left.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from typing import Any

from ray.train import UserCallback

log = logging.getLogger("ray_sticker.progress")

VALIDATION_KEYS = ("val_accuracy", "val_map", "val_pool_map", "val_loss")


class ReportCallback(UserCallback):
    """Appends rank 0's metrics of every report to ``path`` (runs in Ray Train's controller)."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics and "epoch" in metrics[0]:
            with open(self.path, "a") as f:
                f.write(json.dumps(metrics[0], default=str) + "\n")


def format_epoch(run: str, metrics: dict[str, Any], epochs: int) -> str:
    """``<run> epoch 2/3 step 114 | loss 0.4123 | val_accuracy 0.8133 | 312 samples/s | data wait 6% | 12.3 s | ETA 12 s``."""
    epoch = int(metrics["epoch"])
    if epoch < 0:
        head = f"{run} evaluation"
    else:
        head = f"{run} epoch {epoch + 1}/{epochs} step {metrics.get('global_step', 0)}"
    parts = [head]
    if "train_loss" in metrics:
        parts.append(f"loss {metrics['train_loss']:.4f}")
    key = next((k for k in VALIDATION_KEYS if k in metrics), None)
    if key:
        parts.append(f"{key} {metrics[key]:.4f}")
    if "samples_per_s" in metrics:
        parts.append(f"{metrics['samples_per_s']:.0f} samples/s")
    if "data_wait_fraction" in metrics:
        parts.append(f"data wait {metrics['data_wait_fraction']:.0%}")
    if "epoch_s" in metrics:
        parts.append(f"{metrics['epoch_s']:.1f} s")
        if epoch >= 0:
            parts.append(f"ETA {metrics['epoch_s'] * max(0, epochs - epoch - 1):.0f} s")
    return " | ".join(parts)


class EpochProgress:
    """Context manager of one run: :meth:`callback` goes into its ``RunConfig``; while open, a
    thread logs each epoch's line as the controller writes it."""

    def __init__(self, run: str, epochs: int, poll_s: float = 0.5):
        self.run, self.epochs, self.poll_s = run, epochs, poll_s
        fd, self.path = tempfile.mkstemp(prefix="ray-sticker-progress-", suffix=".jsonl")
        os.close(fd)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"progress-{run}", daemon=True)
        self._offset = 0

    def callback(self) -> ReportCallback:
        return ReportCallback(self.path)

    def __enter__(self) -> "EpochProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        os.unlink(self.path)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._drain()

    def _drain(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            log.info("%s", format_epoch(self.run, json.loads(line), self.epochs))
