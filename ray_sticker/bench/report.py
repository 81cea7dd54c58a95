"""What every benchmark prints: one aligned table of variants measured side by side in the
same run, each with its ratio to the run's baseline, the goal and PASS/MISS, plus one line
naming the machine. The same figures go to JSON with ``--json PATH``."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from typing import Any

Goal = tuple[str, float]  # on a row's ratio: (">=", b), ("<=", b), or ("~", tol): within 1 +/- tol


def machine_info() -> dict[str, Any]:
    """CPU count, GPU name (or None) and the versions that decide the figures (Ray's: None
    where it is not installed, as on a GPU host that runs only ``bench step``)."""
    import torch

    from ray_sticker.train.engine import load_deepspeed

    deepspeed = load_deepspeed()

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {"cpus": os.cpu_count() or 1, "cpus_usable": usable, "gpu": gpu, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "ray": _version("ray"),
            "deepspeed": deepspeed.__version__, "load_average": _load_average()}


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_line(info: dict[str, Any]) -> str:
    load = f", load avg {info['load_average']:.1f}" if info.get("load_average") is not None else ""
    return (f"machine: {info['cpus']} CPUs ({info['cpus_usable']} usable{load}), GPU {info['gpu'] or 'none'}; "
            f"torch {info['torch']}, ray {info['ray'] or 'not installed'}, deepspeed {info['deepspeed']}, python {info['python']}")


def judge(ratio: float | None, goal: Goal | None) -> str:
    """PASS / MISS of a ratio against its goal; "" when the row has no goal."""
    if goal is None or ratio is None or not math.isfinite(ratio):
        return ""
    op, bound = goal
    if op == "~":
        ok = abs(ratio - 1.0) <= bound
    else:
        ok = ratio >= bound if op == ">=" else ratio <= bound
    return "PASS" if ok else "MISS"


def goal_text(goal: Goal | None) -> str:
    if goal is None:
        return ""
    return f"1 +/- {goal[1]:g}" if goal[0] == "~" else f"{goal[0]} {goal[1]:g}"


@dataclass
class BenchResult:
    """One benchmark's figures. ``rows`` are dicts keyed by ``columns``' keys; every row may
    carry ``ratio`` (against ``baseline``, measured in the same run) and ``goal``."""

    bench: str
    title: str
    columns: list[tuple[str, str, str]]  # (header, key, format spec), as cli.format_table takes them
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def add(self, goal: Goal | None = None, **row: Any) -> dict[str, Any]:
        """Append a row; ``goal`` turns its ``ratio`` into PASS/MISS (unless the row brings a status)."""
        row["goal"] = goal_text(goal)
        row["status"] = row.get("status") or judge(row.get("ratio"), goal)
        self.rows.append(row)
        return row

    def table(self) -> str:
        from ray_sticker.console import format_table

        columns = [c for c in self.columns if any(r.get(c[1]) not in (None, "") for r in self.rows)]
        lines = [self.title, "", format_table(self.rows, columns), ""]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(machine_line(self.machine))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"bench": self.bench, "title": self.title, "rows": self.rows, "notes": self.notes,
                "options": self.options, "machine": self.machine}

    def write_json(self, path: str) -> None:
        """The figures as JSON (local path or URI); non-finite numbers become null."""
        from ray_sticker import storage

        storage.write_text(path, json.dumps(_finite(self.to_dict()), indent=2, sort_keys=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
