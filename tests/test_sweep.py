"""A sweep end to end on the real Ray Tune, Ray Train and DeepSpeed, through the command
line: 3 trials of the tiny M2SA, ASHA stopping the ones that do not learn, Ctrl-C while a
trial is mid-run, ``--resume`` finishing the sweep without rerunning what had finished, the
outputs, and the best config ready to train."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ray_sticker.cli import main as cli_main
from ray_sticker.config import load_config
from ray_sticker.train.inputs import check_inputs
from tests.conftest import interruptible

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Trials 0 and 2 learn (the same rate, two seeds), 1 cannot: ASHA (halving after each epoch)
# stops trial 1 at its first epoch, trial 2 learns past it and is interrupted.
SWEEP = """
name: lr-range
config: m2sa-tiny
overrides: [train.epochs=2, data.uri=%(data)s, data.synthetic_rows=800, data.synthetic_if_missing=true]
metric: val_loss
mode: min
points:
  - {train.lr: 3.0e-3, train.seed: 1}
  - {train.lr: 1.0e-8, train.seed: 1}
  - {train.lr: 3.0e-3, train.seed: 2}
search: {algorithm: grid, max_concurrent_trials: 1}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
resources: {num_workers: 0}
storage_path: %(storage)s
"""


def _table(exp: Path) -> list[dict]:
    try:
        return pq.read_table(exp / "results.parquet").to_pylist()
    except (OSError, ValueError):  # not written yet, or being rewritten
        return []


def _interrupted_sweep(sweep: Path, exp: Path) -> subprocess.CompletedProcess:
    """``ray-sticker tune`` as its own driver on the suite's cluster, sent SIGINT (Ctrl-C) once
    two trials have finished and a third has checkpointed its first epoch. The driver exits,
    so its trials end with it, as when a user interrupts a sweep."""
    import ray

    address = ray.get_runtime_context().gcs_address
    log_path = exp.parent / "interrupted.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # a file, not a pipe nobody reads while polling
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from ray_sticker.cli import main; sys.exit(main())",
                             "tune", "--sweep", str(sweep), "--address", address],
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=interruptible, text=True)
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            rows = _table(exp)
            finished = [r for r in rows if r["status"] == "TERMINATED"]
            running = [r for r in rows if r["status"] == "RUNNING" and r["epochs_completed"] >= 1]
            if len(finished) >= 2 and running:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.2)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, log_path.read_text(), "")


def _mtimes(path: Path) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime for p in path.rglob("*") if p.is_file()}


def test_sweep_asha_interrupt_resume_outputs_and_best_config(ray_cluster, tmp_path, capsys):
    storage = tmp_path / "sweeps"
    sweep = tmp_path / "lr-range.yaml"
    sweep.write_text(SWEEP % {"storage": storage, "data": tmp_path / "data"})
    exp = storage / "lr-range"

    interrupted_run = _interrupted_sweep(sweep, exp)
    assert interrupted_run.returncode == 130, interrupted_run.stdout[-3000:]  # interrupted, resumable
    assert "continue with: ray-sticker tune --sweep" in interrupted_run.stdout
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

    assert len(rows) == 3 and all(r["status"] == "TERMINATED" for r in rows.values()), rows
    for trial_id in finished:  # finished trials were not run again
        assert _mtimes(exp / "runs" / trial_id) == kept[trial_id], trial_id
        assert rows[trial_id]["epochs_completed"] == before[trial_id]["epochs_completed"]
    # the interrupted trial resumed from its checkpoint instead of starting over
    assert _mtimes(exp / "runs" / interrupted[0] / "epoch-0000") == first_epoch
    assert rows[interrupted[0]]["epochs_completed"] > before[interrupted[0]]["epochs_completed"]

    for row in rows.values():
        assert row["val_loss"] is not None and row["val_accuracy"] is not None and row["train.lr"] > 0
    learns, cannot = [rows[t] for t in sorted(rows)][0], [rows[t] for t in sorted(rows)][1]
    assert cannot["stopped_early"] and cannot["epochs_completed"] == 1 and cannot["train.lr"] == 1e-8
    assert not learns["stopped_early"] and learns["epochs_completed"] == 2
    assert learns["val_loss"] < cannot["val_loss"]

    for name in ("results.csv", "results.parquet", "best.yaml", "metric_vs_train.lr.png", "learning_curves.png"):
        assert (exp / name).stat().st_size > 100, name
    assert "best: " in out and "learning_curves" in out
    best = load_config(str(exp / "best.yaml"))
    assert best.train.lr == 3e-3 and best.name == "lr-range-best"
    inputs = check_inputs(best)  # ready to train: dataset, model, columns and labels fit
    assert inputs.manifest.splits["validation"] == 100
