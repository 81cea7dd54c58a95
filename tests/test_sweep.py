"""A sweep end to end on the real Ray Tune, Ray Train and DeepSpeed, through the command
line: 4 trials of the tiny M2SA, ASHA stopping the ones that do not learn, an interruption
(Tune's own graceful stop, as on Ctrl-C) while a trial is mid-run, ``--resume`` finishing
the sweep without rerunning what had finished, the outputs, and the best config trained."""

import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ray_sticker.cli import main as cli_main
from ray_sticker.config import load_config
from ray_sticker.train.trainer import run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Two learning rates that learn and two that cannot, alternating: ASHA (halving after each
# epoch) stops the second trial at its first epoch, the third learns past it and is interrupted.
SWEEP = """
name: lr-range
config: m2sa-tiny
overrides: [train.epochs=3, train.checkpoints_to_keep=3]
metric: val_loss
mode: min
space:
  train.lr: {grid: [3.0e-3, 1.0e-8, 2.0e-3, 1.0e-7]}
search: {algorithm: grid, max_concurrent_trials: 1}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
resources: {num_workers: 2, cpus_per_worker: 0.5}
storage_path: %s
"""


def _table(exp: Path) -> list[dict]:
    try:
        return pq.read_table(exp / "results.parquet").to_pylist()
    except (OSError, ValueError):  # not written yet, or being rewritten
        return []


def _interrupt_mid_trial(exp: Path, stop: threading.Event) -> None:
    """SIGUSR1 to this process (Tune's stop signal, like SIGINT) once two trials have finished
    and a third has checkpointed its first epoch."""
    while not stop.is_set():
        rows = _table(exp)
        finished = [r for r in rows if r["status"] == "TERMINATED"]
        running = [r for r in rows if r["status"] == "RUNNING" and r["epochs_completed"] >= 1]
        if len(finished) >= 2 and running:
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        time.sleep(0.2)


def _mtimes(path: Path) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime for p in path.rglob("*") if p.is_file()}


def test_sweep_asha_interrupt_resume_outputs_and_best_config(ray_cluster, tmp_path, capsys):
    storage = tmp_path / "sweeps"
    sweep = tmp_path / "lr-range.yaml"
    sweep.write_text(SWEEP % storage)
    exp = storage / "lr-range"

    stop = threading.Event()
    watcher = threading.Thread(target=_interrupt_mid_trial, args=(exp, stop), daemon=True)
    watcher.start()
    try:
        assert cli_main(["tune", "--sweep", str(sweep)]) == 130  # interrupted, resumable
    finally:
        stop.set()
        watcher.join()
    assert "continue with: ray-sticker tune --sweep" in capsys.readouterr().err
    before = {r["trial_id"]: r for r in _table(exp)}
    finished = [t for t, r in before.items() if r["status"] == "TERMINATED"]
    interrupted = [t for t, r in before.items() if r["status"] not in ("TERMINATED", "ERROR")
                   and r["epochs_completed"] >= 1]
    assert len(finished) == 2 and len(interrupted) == 1, before
    kept = {t: _mtimes(exp / "runs" / t) for t in finished}
    first_epoch = _mtimes(exp / "runs" / interrupted[0] / "epoch-0000")

    # A second start without --resume is refused; --resume finishes the sweep.
    assert cli_main(["tune", "--sweep", str(sweep)]) == 2
    assert cli_main(["tune", "--sweep", str(sweep), "--resume"]) == 0
    out = capsys.readouterr().out
    rows = {r["trial_id"]: r for r in _table(exp)}

    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows.values()), rows
    for trial_id in finished:  # finished trials were not run again
        assert _mtimes(exp / "runs" / trial_id) == kept[trial_id], trial_id
        assert rows[trial_id]["epochs_completed"] == before[trial_id]["epochs_completed"]
    # the interrupted trial resumed from its checkpoint instead of starting over
    assert _mtimes(exp / "runs" / interrupted[0] / "epoch-0000") == first_epoch
    assert rows[interrupted[0]]["epochs_completed"] > before[interrupted[0]]["epochs_completed"]

    for row in rows.values():
        assert row["val_loss"] is not None and row["val_accuracy"] is not None and row["train.lr"] > 0
    by_lr = {r["train.lr"]: r for r in rows.values()}
    assert by_lr[1e-8]["stopped_early"] and by_lr[1e-8]["epochs_completed"] == 1
    assert not by_lr[3e-3]["stopped_early"] and by_lr[3e-3]["epochs_completed"] == 3
    assert by_lr[3e-3]["val_loss"] < by_lr[1e-8]["val_loss"]

    for name in ("results.csv", "results.parquet", "best.yaml", "metric_vs_train.lr.png", "learning_curves.png"):
        assert (exp / name).stat().st_size > 100, name
    assert "best: " in out and "learning_curves" in out
    best = load_config(str(exp / "best.yaml"), ["train.epochs=1", "train.export=false"])
    assert best.train.lr in (3e-3, 2e-3) and best.name == "lr-range-best"
    result = run_training(best)
    assert result.final["epochs_completed"] == 1 and result.final["val_examples"] == 300
