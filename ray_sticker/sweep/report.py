"""A sweep's outputs in its experiment directory (local or S3).

- ``results.csv`` and ``results.parquet``: one row per trial — id, status, whether the
  scheduler stopped it early, epochs completed, every swept field, the sweep's metric at the
  last epoch and at its best, the other scalar metrics of the last epoch, the run directory
  and the error if any. Rewritten after every reported epoch, so a running sweep can be read.
- ``best.yaml``: the base experiment config with the best trial's fields (by the metric at
  its last epoch, as Tune ranks), ready for ``ray-sticker train --config``.
- ``metric_vs_<field>.png`` per swept field and ``learning_curves.png`` (the metric and the
  training loss per epoch, one line per trial).
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import yaml
from ray.tune import Callback

from ray_sticker import storage
from ray_sticker.config import set_values, validate
from ray_sticker.sweep.spec import POINT_KEY, SweepSpec
from ray_sticker.train.plots import png_bytes

RESULTS = "results"
BEST = "best.yaml"
SKIPPED_METRICS = ("config", "checkpoint_path", "params_per_rank", "worker_nodes", "trial_id", "experiment_tag", "date",
                   "hostname", "node_ip", "pid", "timestamp", "time_this_iter_s", "time_total_s",
                   "time_since_restore", "iterations_since_restore", "training_iteration", "done")


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) and not (isinstance(value, float) and math.isnan(value))


def trial_row(spec: SweepSpec, base: dict[str, Any], exp_dir: str, trial_id: str, status: str,
              params: dict[str, Any], last: dict[str, Any], history: list[dict[str, Any]],
              error: str | None) -> dict[str, Any]:
    values = spec.trial_values(params) if params else {}
    epochs = validate(set_values(base, values)).train.epochs if values else None
    done = int(last.get("epochs_completed", 0) or 0)
    seen = [h[spec.metric] for h in history if _scalar(h.get(spec.metric))] or (
        [last[spec.metric]] if _scalar(last.get(spec.metric)) else [])
    best = (max if spec.mode == "max" else min)(seen) if seen else None
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "status": status,
        "stopped_early": status == "TERMINATED" and epochs is not None and done < epochs,
        "epochs_completed": done,
        **({POINT_KEY: params.get(POINT_KEY)} if spec.points else {}),  # which of the sweep's points
        **{field: values.get(field) for field in spec.swept_fields},
        spec.metric: last.get(spec.metric),
        f"best_{spec.metric}": best,
    }
    for key, value in last.items():
        if key not in row and key not in SKIPPED_METRICS and _scalar(value) and not key.startswith("config/"):
            row[key] = value
    row["run_dir"] = storage.join(exp_dir, "runs", trial_id)
    row["error"] = error
    return row


def rows_from_trials(spec: SweepSpec, base: dict[str, Any], exp_dir: str, trials: list,
                     histories: dict[str, list[dict[str, Any]]] | None = None,
                     status: dict[str, str] | None = None,
                     last: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Table rows from Tune ``Trial`` objects (status, config, last result, error);
    ``status`` and ``last`` (result) replace some trials' own, which Tune updates only after
    calling its callbacks."""
    histories, status, last = histories or {}, status or {}, last or {}
    trials = sorted(trials, key=lambda t: t.trial_id)
    return [trial_row(spec, base, exp_dir, t.trial_id, status.get(t.trial_id, str(t.status)), dict(t.config or {}),
                      dict(last.get(t.trial_id, t.last_result) or {}), histories.get(t.trial_id, []), _error_text(t))
            for t in trials]


def _error_text(trial) -> str | None:
    if trial.status != "ERROR":
        return None
    path = getattr(trial, "error_file", None)
    try:
        text = open(path).read().strip() if path else ""
    except OSError:
        text = ""
    return (text.splitlines()[-1] if text else "error (no message recorded)")[:500]


def to_table(rows: list[dict[str, Any]]):
    """A pyarrow table; a column mixing numbers and text becomes text, one of numbers float."""
    import pyarrow as pa

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    arrays = {}
    for col in columns:
        values = [row.get(col) for row in rows]
        present = [v for v in values if v is not None]
        if all(isinstance(v, bool) for v in present):
            arrays[col] = pa.array(values, type=pa.bool_())
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            arrays[col] = pa.array(values, type=pa.int64())
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            arrays[col] = pa.array([None if v is None else float(v) for v in values], type=pa.float64())
        else:
            arrays[col] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.table(arrays)


def write_table(rows: list[dict[str, Any]], exp_dir: str) -> dict[str, str]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = to_table(rows)
    csv_buf = io.BytesIO()
    pacsv.write_csv(table, csv_buf)
    pq_buf = io.BytesIO()
    pq.write_table(table, pq_buf)
    out = {"csv": storage.join(exp_dir, f"{RESULTS}.csv"), "parquet": storage.join(exp_dir, f"{RESULTS}.parquet")}
    storage.write_bytes(out["csv"], csv_buf.getvalue())
    storage.write_bytes(out["parquet"], pq_buf.getvalue())
    return out


def best_row(spec: SweepSpec, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the best metric at its last epoch (errored trials excluded)."""
    ranked = [r for r in rows if r["status"] != "ERROR" and _scalar(r.get(spec.metric))]
    if not ranked:
        return None
    pick = max if spec.mode == "max" else min
    return pick(ranked, key=lambda r: r[spec.metric])


def best_config_yaml(spec: SweepSpec, base: dict[str, Any], best: dict[str, Any]) -> str:
    values = {k: best[k] for k in spec.swept_fields if best.get(k) is not None}
    data = set_values(base, {**values, "name": f"{spec.name}-best"})
    validate(data, source=f"best config of sweep {spec.name}")
    header = (f"# Best trial of sweep '{spec.name}' ({best['trial_id']}): {spec.metric} = {best[spec.metric]:.6g} "
              f"at its last epoch ({spec.mode}).\n# Swept fields: "
              + ", ".join(f"{k}={v!r}" for k, v in values.items())
              + "\n# Train it: ray-sticker train --config best.yaml\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def _filename(field: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", field)


def plot_metric_vs_field(rows: list[dict[str, Any]], field: str, metric: str, uri: str) -> None:
    """The metric of every trial against one swept field: a scatter on a number axis (log
    when the values span more than two decades), or categories."""
    from matplotlib.figure import Figure

    pts = [(r[field], r[metric]) for r in rows if r.get(field) is not None and _scalar(r.get(metric))]
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts)
    if numeric:
        xs = [float(x) for x, _ in pts]
        ax.scatter(xs, [y for _, y in pts])
        positive = [x for x in xs if x > 0]
        if positive and len(positive) == len(xs) and max(positive) / min(positive) > 100:
            ax.set_xscale("log")
    else:
        cats = sorted({str(x) for x, _ in pts})
        ax.scatter([cats.index(str(x)) for x, _ in pts], [y for _, y in pts])
        ax.set_xticks(range(len(cats)), cats)
    stopped = [(r[field], r[metric]) for r in rows if r.get("stopped_early") and r.get(field) is not None
               and _scalar(r.get(metric))]
    if numeric and stopped:
        ax.scatter([float(x) for x, _ in stopped], [y for _, y in stopped], marker="x", color="red",
                   label="stopped early")
        ax.legend()
    ax.set_xlabel(field)
    ax.set_ylabel(f"{metric} (last epoch)")
    ax.set_title(f"{metric} vs {field}")
    ax.grid(alpha=0.3)
    storage.write_bytes(uri, png_bytes(fig))


def plot_learning_curves(histories: dict[str, list[dict[str, Any]]], metric: str, uri: str) -> None:
    """The metric and the training loss per epoch, one line per trial."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4))
    for i, key in enumerate((metric, "train_loss")):
        ax = fig.add_subplot(1, 2, i + 1)
        for trial_id, history in histories.items():
            pts = [(h["epochs_completed"], h[key]) for h in history if _scalar(h.get(key)) and "epochs_completed" in h]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=trial_id)
        ax.set_xlabel("epochs completed")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if i == 0 and 0 < len(histories) <= 12:
            ax.legend(fontsize=7)
    storage.write_bytes(uri, png_bytes(fig))


def write_outputs(spec: SweepSpec, base: dict[str, Any], exp_dir: str, trials: list,
                  histories: dict[str, list[dict[str, Any]]]):
    """Table, best config and plots; returns (rows, best row or None, {output: uri})."""
    rows = rows_from_trials(spec, base, exp_dir, trials, histories)
    outputs = write_table(rows, exp_dir)
    best = best_row(spec, rows)
    if best is not None:
        outputs["best"] = storage.join(exp_dir, BEST)
        storage.write_text(outputs["best"], best_config_yaml(spec, base, best))
    for field in spec.swept_fields:
        uri = storage.join(exp_dir, f"metric_vs_{_filename(field)}.png")
        plot_metric_vs_field(rows, field, spec.metric, uri)
        outputs[f"plot:{field}"] = uri
    outputs["learning_curves"] = storage.join(exp_dir, "learning_curves.png")
    plot_learning_curves(histories, spec.metric, outputs["learning_curves"])
    return rows, best, outputs


class ProgressWriter(Callback):
    """Rewrites ``results.csv`` / ``results.parquet`` whenever a trial reports an epoch,
    finishes or fails, so a running sweep can be followed (and its table survives a crash)."""

    def __init__(self, spec: SweepSpec, base: dict[str, Any], exp_dir: str) -> None:
        self.spec, self.base, self.exp_dir = spec, base, exp_dir

    def _write(self, trials, **changes) -> None:
        write_table(rows_from_trials(self.spec, self.base, self.exp_dir, list(trials), **changes), self.exp_dir)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._write(trials, last={trial.trial_id: result})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(trials, status={trial.trial_id: "TERMINATED"})

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trials)
