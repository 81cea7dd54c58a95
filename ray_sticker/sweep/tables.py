"""Published tables as sweeps: ``ray-sticker reproduce NAME`` runs the rows of one table or
figure of a paper as one Ray Tune grid and prints the measured figures beside the published
ones.

A table definition is data, ``tuning/tables/<name>.yaml``::

    name: eigml-table4
    paper: EIGML
    source: "Table 4: ablations on StickerChat"
    config: eigml                  # the shipped experiment config of the paper's setting
    tiny: eigml-tiny               # its test-size counterpart (synthetic data): --tiny
    metrics: {val_map: MAP}        # measured key -> the paper's column
    scale: 100                     # the paper's unit: 100 for percentages, 1 for fractions
    seeds: [42]                    # one trial per row and seed; mean +/- std over the seeds
    rows:
      - {label: EIGML (full), overrides: {}, published: {val_map: 81.15}}
      - {label: w/o SAMM, overrides: {model.overrides.use_samm: false}, published: {val_map: 80.48}}

Each (row, seed) is one point of the sweep (``train.seed`` and the row's overrides); the
first metric is the sweep's. The report (:func:`compare`) takes each trial's last epoch.
``by_group: val_macro_f1`` also reports that metric per value of the config's ``data.eval_by``
column (M2SA's per-language table), a column per group.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ray_sticker import storage
from ray_sticker.config import ConfigError
from ray_sticker.sweep.spec import POINT_KEY, ResourcesConfig, SweepSpec, one_line_error, sweeps_dir

TABLES_DIR = "tables"
PAPERS = ("MMSAIR", "Int-RA", "M2SA", "MDSE", "EIGML")
# Trials of --tiny: in local mode (each trains in its own trial process), so that two fit a
# 2-CPU machine beside Ray Data.
TINY_RESOURCES = ResourcesConfig(num_workers=0)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TableRow(_Section):
    label: str
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted config fields of this row")
    published: dict[str, float] = Field(default_factory=dict, description="the paper's figures, by metric key")


class TableSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    paper: str
    source: str = Field(description="the paper's table or figure number and caption")
    config: str = Field(description="the shipped experiment config of the paper's setting")
    tiny: str = Field(description="its test-size counterpart, on synthetic data")
    metrics: dict[str, str] = Field(description="measured metric key -> the paper's column name")
    scale: float = Field(default=1.0, gt=0, description="100 when the paper reports percentages")
    mode: str = Field(default="max", pattern="^(max|min)$")
    seeds: list[int] = Field(default_factory=lambda: [42])
    overrides: list[str] = Field(default_factory=list, description="dotted overrides for every row")
    by_group: str | None = Field(default=None, description="a metric also reported per value of data.eval_by "
                                                            "(measured as <metric>_<value>), a column per group")
    rows: list[TableRow]

    @model_validator(mode="after")
    def _consistent(self) -> "TableSpec":
        if self.paper not in PAPERS:
            raise ValueError(f"paper '{self.paper}' is none of {', '.join(PAPERS)}")
        if not self.metrics or not self.rows or not self.seeds:
            raise ValueError("a table needs metrics, rows and seeds")
        for row in self.rows:
            unknown = sorted(set(row.published) - set(self.metrics))
            if unknown:
                raise ValueError(f"row '{row.label}': published {unknown} are not among the metrics {list(self.metrics)}")
            if "train.seed" in row.overrides:
                raise ValueError(f"row '{row.label}': the seeds are the table's `seeds`, not a row override")
        if self.by_group is not None and self.by_group not in self.metrics:
            raise ValueError(f"by_group '{self.by_group}' is not among the metrics {list(self.metrics)}")
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            raise ValueError("row labels must differ")
        return self

    @property
    def metric(self) -> str:
        return next(iter(self.metrics))

    def select(self, numbers: list[int]) -> "TableSpec":
        """Only rows ``numbers`` (1-based, as ``--list`` shows them)."""
        bad = [n for n in numbers if not 1 <= n <= len(self.rows)]
        if bad:
            raise ConfigError(f"table {self.name} has rows 1..{len(self.rows)}; no row {bad[0]}")
        return self.model_copy(update={"rows": [self.rows[n - 1] for n in numbers]})

    def sweep(self, tiny: bool = False, overrides: list[str] | None = None, name: str | None = None,
              storage_path: str | None = None) -> SweepSpec:
        """The table as one grid: a point per (row, seed)."""
        points = [{**row.overrides, "train.seed": seed} for row in self.rows for seed in self.seeds]
        data: dict[str, Any] = {
            "name": name or (f"{self.name}-tiny" if tiny else self.name),
            "description": f"{self.paper} {self.source}",
            "config": self.tiny if tiny else self.config,
            "overrides": [*self.overrides, *(overrides or [])],
            "metric": self.metric, "mode": self.mode, "points": points,
            "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
        }
        if tiny:
            data["resources"] = TINY_RESOURCES.model_dump()
        if storage_path:
            data["storage_path"] = storage_path
        return SweepSpec.model_validate(data)


def tables_dir() -> Path | None:
    root = sweeps_dir()
    return root / TABLES_DIR if root is not None and (root / TABLES_DIR).is_dir() else None


def list_tables() -> list[TableSpec]:
    directory = tables_dir()
    return [load_table(str(p)) for p in sorted(directory.glob("*.yaml"))] if directory else []


def load_table(name_or_path: str) -> TableSpec:
    """A table by name (``tuning/tables/NAME.yaml``) or path, validated."""
    path = Path(name_or_path)
    if not path.is_file():
        directory = tables_dir()
        path = directory / f"{name_or_path}.yaml" if directory else path
        if not path.is_file():
            known = ", ".join(t.name for t in list_tables()) or "none found"
            raise ConfigError(f"unknown table '{name_or_path}'; tables: {known} (ray-sticker reproduce --list)")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return TableSpec.model_validate(data)
    except ValidationError as exc:
        raise one_line_error(exc, f"table {path}") from None


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None below two values)."""
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def compare(table: TableSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per table row: for every metric the measured mean and std over the seeds (in
    the paper's unit), the published figure and measured - published; ``trials`` counts the
    finished trials of the row. ``rows`` are the sweep's result rows (their ``point``)."""
    per_point = {r.get(POINT_KEY): r for r in rows if r.get("status") == "TERMINATED"}
    seeds = len(table.seeds)
    groups = group_names(table, list(per_point.values()))
    out = []
    for i, row in enumerate(table.rows):
        trials = [per_point[p] for p in range(i * seeds, (i + 1) * seeds) if p in per_point]
        line: dict[str, Any] = {"row": i + 1, "label": row.label, "trials": len(trials)}
        for key in table.metrics:
            mean, std = _stats(_values(table, trials, key))
            published = row.published.get(key)
            line.update({f"{key}:measured": mean, f"{key}:std": std, f"{key}:published": published,
                         f"{key}:diff": mean - published if mean is not None and published is not None else None})
        for group in groups:
            mean, std = _stats(_values(table, trials, f"{table.by_group}_{group}"))
            line.update({f"{table.by_group}@{group}:measured": mean, f"{table.by_group}@{group}:std": std})
        out.append(line)
    return out


def _values(table: TableSpec, trials: list[dict[str, Any]], key: str) -> list[float]:
    return [float(t[key]) * table.scale for t in trials if isinstance(t.get(key), (int, float))]


def group_names(table: TableSpec, trials: list[dict[str, Any]]) -> list[str]:
    """The groups of ``table.by_group`` found in the trials' metrics (``<metric>_<group>``), sorted."""
    if table.by_group is None:
        return []
    prefix = f"{table.by_group}_"
    return sorted({k[len(prefix):] for t in trials for k in t if k.startswith(prefix)})


def _cell(value: float | None, std: float | None = None, signed: bool = False) -> str:
    if value is None:
        return "—"
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    return f"{text} ± {std:.2f}" if std is not None else text


def markdown(table: TableSpec, lines: list[dict[str, Any]], tiny: bool, where: str) -> str:
    """The comparison as a Markdown table, with what was run above it."""
    head = ["#", "row"]
    for key, column in table.metrics.items():
        head += [f"{column} measured", f"{column} paper", "diff"]
    out = [f"## {table.paper} {table.source}", "",
           f"`{table.tiny if tiny else table.config}`{' (--tiny: synthetic data, test size)' if tiny else ''}, "
           f"seeds {table.seeds}, each trial's last epoch on the validation split, in the paper's unit "
           f"(x{table.scale:g}); {where}", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in lines:
        cells = [str(line["row"]), line["label"] + ("" if line["trials"] == len(table.seeds) else
                                                   f" ({line['trials']}/{len(table.seeds)} trials)")]
        for key in table.metrics:
            cells += [_cell(line[f"{key}:measured"], line[f"{key}:std"]), _cell(line[f"{key}:published"]),
                      _cell(line[f"{key}:diff"], signed=True)]
        out.append("| " + " | ".join(cells) + " |")
    prefix = f"{table.by_group}@"
    groups = [k[len(prefix):-len(":measured")] for k in lines[0] if k.startswith(prefix) and k.endswith(":measured")]
    if groups:
        out += ["", f"{table.metrics[table.by_group]} per group (data.eval_by), measured:", "",
                "| # | row | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 2)]
        for line in lines:
            out.append(f"| {line['row']} | {line['label']} | " + " | ".join(
                _cell(line[f"{table.by_group}@{g}:measured"], line[f"{table.by_group}@{g}:std"]) for g in groups) + " |")
    return "\n".join(out) + "\n"


def write_report(table: TableSpec, lines: list[dict[str, Any]], exp_dir: str, tiny: bool) -> dict[str, str]:
    """``reproduce.md``, ``reproduce.csv`` and ``reproduce.png`` in the sweep's directory."""
    import csv
    import io

    outputs = {"markdown": storage.join(exp_dir, "reproduce.md"), "csv": storage.join(exp_dir, "reproduce.csv"),
               "plot": storage.join(exp_dir, "reproduce.png")}
    storage.write_text(outputs["markdown"], markdown(table, lines, tiny, exp_dir))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(lines[0]))
    writer.writeheader()
    writer.writerows(lines)
    storage.write_text(outputs["csv"], buf.getvalue())
    _plot(table, lines, outputs["plot"])
    return outputs


def _plot(table: TableSpec, lines: list[dict[str, Any]], uri: str) -> None:
    """Measured (with the seeds' std) beside published, per row, for the table's first metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ray_sticker.train.plots import png_bytes

    key = table.metric
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(lines)), 3.6))
    xs = range(len(lines))
    measured = [line[f"{key}:measured"] if line[f"{key}:measured"] is not None else math.nan for line in lines]
    errors = [line[f"{key}:std"] or 0.0 for line in lines]
    published = [line[f"{key}:published"] if line[f"{key}:published"] is not None else math.nan for line in lines]
    ax.bar([x - 0.2 for x in xs], published, width=0.4, label="paper", color="#999999")
    ax.bar([x + 0.2 for x in xs], measured, width=0.4, yerr=errors, label="measured", color="#1f77b4")
    ax.set_xticks(list(xs), [line["label"] for line in lines], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(table.metrics[key])
    ax.set_title(f"{table.paper} {table.source}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    storage.write_bytes(uri, png_bytes(fig))
