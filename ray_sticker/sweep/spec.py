"""Sweep definitions: typed, validated, read from ``tuning/<name>.yaml`` (or any path/URI).

A sweep names a base experiment config and the fields it varies. Field names are the
dotted paths of the experiment config, as in ``ray-sticker train`` overrides
(``train.lr``, ``model.overrides.w_e``, ``model.overrides.loss_weights.intent``)::

    name: eigml-loss-weights
    config: eigml                      # shipped experiment config or a YAML path/URI
    overrides: [train.epochs=10]       # fixed changes to it, for every trial
    metric: val_map
    mode: max
    space:                             # one domain per field
      model.overrides.w_e: {uniform: [0.0, 1.0]}
      train.lr: {loguniform: [1.0e-5, 1.0e-4]}
      model.overrides.fusion_heads: {choice: [8, 12]}
    points:                            # optional: explicit trials, crossed with the space's grid
      - {model.overrides.w_e: 0.0, model.overrides.w_i: 0.5}
    search: {algorithm: random, num_samples: 16, seed: 0, max_concurrent_trials: 4}
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
    resources: {num_workers: 2, cpus_per_worker: 4, use_gpu: true}

Domains: ``grid`` (every value, crossed with the other grids), ``choice`` (one value drawn
per trial), ``uniform`` / ``loguniform`` ``[low, high]``, ``quniform`` ``[low, high, q]``,
``randint`` ``[low, high)``. The number of trials is
``len(points or [{}]) * product(grid sizes) * search.num_samples``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ray_sticker.config import ConfigError, read_path_or_uri

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "quniform", "randint")
SWEEP_DIR = "tuning"
POINT_KEY = "point"  # Tune parameter holding a trial's index into ``points``


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Domain(_Section):
    """One field's values: exactly one of the kinds is set."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    quniform: list[float] | None = None
    randint: list[int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Domain":
        set_kinds = [k for k in DOMAIN_KINDS if getattr(self, k) is not None]
        if len(set_kinds) != 1:
            raise ValueError(f"give exactly one of {', '.join(DOMAIN_KINDS)} (got {set_kinds or 'none'})")
        kind = set_kinds[0]
        values = getattr(self, kind)
        if kind in ("grid", "choice") and not values:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint") and (len(values) != 2 or values[0] >= values[1]):
            raise ValueError(f"{kind} needs [low, high] with low < high (got {values})")
        if kind == "quniform" and (len(values) != 3 or values[0] >= values[1] or values[2] <= 0):
            raise ValueError(f"quniform needs [low, high, q] with low < high and q > 0 (got {values})")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {values})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DOMAIN_KINDS if getattr(self, k) is not None)

    @property
    def args(self) -> list[Any]:
        return getattr(self, self.kind)

    def to_tune(self):
        from ray import tune

        a = self.args
        return {
            "grid": lambda: tune.grid_search(list(a)),
            "choice": lambda: tune.choice(list(a)),
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
            "randint": lambda: tune.randint(a[0], a[1]),
        }[self.kind]()

    def representatives(self) -> list[Any]:
        """Values checked before a sweep starts: every listed value, or both ends of a range."""
        a = self.args
        if self.kind in ("grid", "choice"):
            return list(a)
        if self.kind == "randint":
            return [a[0], a[1] - 1]
        return [a[0], a[1]]


class SearchConfig(_Section):
    algorithm: Literal["grid", "random"] = Field(
        default="grid", description="grid: only grid domains and points, every combination once; "
                                    "random: choice/range domains drawn per trial (grids still crossed)")
    num_samples: int = Field(default=1, gt=0, description="repeats of the grid (random: trials drawn)")
    seed: int | None = Field(default=0, description="seed of the drawn values (null: unseeded)")
    max_concurrent_trials: int | None = Field(
        default=None, gt=0, description="trials running at once (default: as many as the cluster's current "
                                        "CPUs/GPUs fit, at least 1)")
    reuse_actors: bool = Field(
        default=True, description="a finished trial's process starts the next trial of the same resources, "
                                  "its imports (torch, transformers, DeepSpeed: seconds per trial) already done")


class SchedulerConfig(_Section):
    type: Literal["fifo", "asha"] = "fifo"
    time_attr: str = Field(default="epochs_completed",
                           description="counter the workers report (continues across resumption)")
    grace_period: int = Field(default=1, gt=0, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: float = Field(default=2.0, gt=1.0)
    max_t: int | None = Field(default=None, gt=0, description="ASHA: last rung (default: train.epochs)")


class ResourcesConfig(_Section):
    """Per trial; unset fields keep the experiment config's ``train`` values."""

    num_workers: int | None = Field(default=None, ge=0)
    cpus_per_worker: float | None = Field(default=None, gt=0)
    use_gpu: bool | None = None
    driver_cpus: float = Field(
        default=0.0, ge=0,
        description="CPUs reserved for the trial's driver, which mostly waits on its workers (a fraction "
                    "held here is missing from the trial's Ray Data tasks, which take whole CPUs)")
    driver_memory_mb: int = Field(default=256, gt=0, description="memory reserved for the trial's driver")

    def driver_resources(self, train_cpus: float = 0.0) -> dict[str, float]:
        """The trial process's reservation; ``train_cpus``: a local-mode trial's training (its
        loop runs in the trial process, so the trial holds that rank's CPUs)."""
        return {"cpu": max(self.driver_cpus, train_cpus), "memory": self.driver_memory_mb * 2**20}

    def overrides(self) -> dict[str, Any]:
        fields = {"num_workers": self.num_workers, "cpus_per_worker": self.cpus_per_worker, "use_gpu": self.use_gpu}
        return {f"train.{k}": v for k, v in fields.items() if v is not None}


class SweepSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    config: str = Field(description="base experiment config: shipped name or YAML path/URI")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides of the base config")
    metric: str
    mode: Literal["max", "min"]
    space: dict[str, Domain] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage_path: str = Field(default="${RAY_STICKER_HOME}/sweeps",
                              description="local directory or s3:// URI; the experiment is <storage_path>/<name>")

    @field_validator("space", mode="before")
    @classmethod
    def _domains(cls, space: Any) -> Any:
        if isinstance(space, dict):
            for key, value in space.items():
                if not isinstance(value, dict):
                    raise ValueError(f"'{key}': a domain mapping such as {{grid: [...]}} or {{uniform: [lo, hi]}} "
                                     f"(got {value!r}; fixed values go in overrides)")
        return space

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        if not self.space and not self.points:
            raise ValueError("a sweep needs a space or points")
        for i, point in enumerate(self.points):
            if not point:
                raise ValueError(f"points[{i}] is empty")
        if self.search.algorithm == "grid":
            drawn = [k for k, d in self.space.items() if d.kind != "grid"]
            if drawn:
                raise ValueError(f"search.algorithm grid takes grid domains only; {', '.join(drawn)} are drawn "
                                 "(use algorithm: random)")
        return self

    @property
    def swept_fields(self) -> list[str]:
        """Every field a trial may set, points' first, in definition order."""
        keys: list[str] = []
        for point in self.points:
            keys += [k for k in point if k not in keys]
        return keys + [k for k in self.space if k not in keys]

    def num_trials(self) -> int:
        grids = [len(d.args) for d in self.space.values() if d.kind == "grid"]
        return max(1, len(self.points)) * math.prod(grids) * self.search.num_samples

    def param_space(self) -> dict[str, Any]:
        """Tune's param_space: the domains, and the point index as a grid."""
        from ray import tune

        space = {key: domain.to_tune() for key, domain in self.space.items()}
        if self.points:
            space[POINT_KEY] = tune.grid_search(list(range(len(self.points))))
        return space

    def trial_values(self, params: dict[str, Any]) -> dict[str, Any]:
        """The dotted fields a trial sets, from its Tune params: its point, then its domains."""
        values = dict(self.points[params[POINT_KEY]]) if self.points else {}
        values.update({k: params[k] for k in self.space})
        return values

    def representative_values(self) -> list[dict[str, Any]]:
        """Field settings covering every point, grid value and range end (checked before a sweep
        starts). Each domain's representatives are crossed with the points; other domains sit at
        their first representative meanwhile, so the count stays sum-like, not a product."""
        points = self.points or [{}]
        out: list[dict[str, Any]] = []
        firsts = {k: d.representatives()[0] for k, d in self.space.items()}
        for point in points:
            out.append({**point, **firsts})
            for key, domain in self.space.items():
                for value in domain.representatives()[1:]:
                    out.append({**point, **firsts, key: value})
        unique = []
        for values in out:
            if values not in unique:
                unique.append(values)
        return unique


def list_sweeps(root: str | Path | None = None) -> list[str]:
    """Names of the sweep definitions in the sweeps directory."""
    directory = Path(root) if root else sweeps_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory and directory.is_dir() else []


def sweeps_dir() -> Path | None:
    """``./tuning`` (e.g. a ``ray job submit --working-dir``), else the checkout's ``tuning/``."""
    for candidate in (Path.cwd() / SWEEP_DIR, Path(__file__).resolve().parents[2] / SWEEP_DIR):
        if candidate.is_dir():
            return candidate
    return None


def _read(name_or_path: str) -> tuple[str, str]:
    """(text, source) of a sweep name, file path or URI."""
    found = read_path_or_uri(name_or_path, "sweep")
    if found is not None:
        return found
    directory = sweeps_dir()
    if directory is None or not (directory / f"{name_or_path}.yaml").is_file():
        known = ", ".join(list_sweeps()) or "none found"
        raise ConfigError(f"unknown sweep '{name_or_path}'; sweeps in {directory or './' + SWEEP_DIR}: {known} "
                          "(or give a path to a .yaml file)")
    path = directory / f"{name_or_path}.yaml"
    return path.read_text(), str(path)


def load_sweep(name_or_path: str, **changes: Any) -> SweepSpec:
    """Read and validate a sweep; ``changes`` set top-level or dotted fields
    (``name="x"``, ``**{"search.num_samples": 4}``) before validation."""
    text, source = _read(name_or_path)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"sweep {source}: top level must be a mapping")
    for key, value in changes.items():
        if value is None:
            continue
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise one_line_error(exc, f"sweep {source}") from None


def one_line_error(exc: ValidationError, where: str) -> ConfigError:
    """A validation error as one line: ``<where>: <field>: <what is wrong>``."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    detail = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
    return ConfigError(f"{where}: {field}: {detail}")

