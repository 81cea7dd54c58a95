"""One typed config tree for every job: data, model, train and deepspeed sections.

Experiment configs are YAML files shipped in ``ray_sticker/configs/`` (or any path / URI);
``load_config("m2sa-tiny", ["train.epochs=3", "deepspeed.zero_stage=3"])`` reads one,
applies dotted overrides and validates the result before anything starts. A bad value
raises :class:`ConfigError` with a one-line message that names the field and what is
allowed. The same validated object travels into ``train_loop_config`` (as a dict) and
into Tune's ``param_space``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

CONFIG_PACKAGE = "ray_sticker.configs"


def default_home() -> str:
    """Where the embedded default keeps datasets and runs (``$RAY_STICKER_HOME``)."""
    return os.environ.get("RAY_STICKER_HOME", os.path.expanduser("~/.cache/ray-sticker"))


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    uri: str = Field(
        default="${RAY_STICKER_HOME}/datasets/synthetic-classify",
        description="canonical dataset (directory with manifest.json): local path or s3:// URI",
    )
    synthetic_if_missing: bool = Field(
        default=False, description="write the synthetic dataset to `uri` when it has no manifest"
    )
    synthetic_rows: int = Field(default=2400, gt=0, description="rows of the synthetic dataset")
    train_split: str = "train"
    eval_split: str = "validation"
    image_size: int = Field(default=224, gt=0)
    max_text_length: int = Field(default=128, gt=0, description="tokens, truncation beyond")
    augment: bool = Field(default=True, description="random resized crop + flip of train images, on the worker, "
                                                   "seeded by (train.seed, epoch, rank)")
    random_erasing: float = Field(
        default=0.0, ge=0.0, le=1.0, description="with data.augment: probability of erasing a random rectangle of each "
                                                 "train image (MDSE's augmentation), on the worker, seeded like the crop"
    )
    synonym_replacement: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="EDA's alpha_sr: train texts get data.synonym_variants copies with max(1, alpha * words) words "
                    "replaced by a synonym (MDSE's text augmentation); each epoch trains on the text or one copy",
    )
    synonym_variants: int = Field(default=4, ge=1, le=16, description="synonym-replaced copies per train row")
    synonyms: str | None = Field(
        default=None,
        description="where synonyms come from: WordNet (the WordNet 3.0 dict/ directory, or nltk's "
                    "corpora/wordnet.zip), a JSON file {word: [synonyms]}, local or s3://, or builtin:synthetic",
    )
    max_corrupt_fraction: float = Field(
        default=0.01, ge=0.0, le=1.0, description="fail the run when more rows are skipped"
    )
    preprocess_batch_size: int = Field(default=64, gt=0)
    deterministic: bool = Field(
        default=True,
        description="rows reach each worker in file order (Ray Data preserve_order), so the same seed and "
                    "number of workers give the same batches and metrics; false lets faster blocks overtake",
    )
    num_candidates: int | None = Field(
        default=None, ge=2,
        description="selection: candidates per example (default: the dataset's, else 10); rows without "
                    "a stored candidate set get one drawn from the sticker pool, seeded by example id",
    )
    train_negatives: Literal["fixed", "per_epoch"] = Field(
        default="fixed",
        description="selection: 'per_epoch' redraws the candidate sets drawn from the pool (not those the "
                    "dataset stores) every training epoch, seeded by (example, train.seed, epoch), as papers "
                    "that sample negatives train; evaluation keeps the fixed draw",
    )
    eval_candidates: Literal["candidates", "pool"] = Field(
        default="candidates",
        description="selection: rank each example's candidates (MAP, R@k) or, for two-tower models, the "
                    "whole sticker pool (P@k, mAP with intention relevance, PR curve)",
    )
    pool_cache_mb: float = Field(
        default=256.0, ge=0.0,
        description="selection: the pool stays encoded, shared through the object store; each worker keeps at "
                    "most this many MiB of recently decoded stickers (0: decode every candidate every time)",
    )
    eval_by: str | None = Field(
        default=None,
        description="classification: evaluation also reports accuracy, weighted-F1 and macro-F1 per value of this "
                    "column of the examples, named <metric>_<value> (M2SA: ds_language, each source corpus "
                    "as its official code evaluates them)",
    )
    cache_eval: bool = Field(
        default=True,
        description="preprocess the evaluation split once and keep it in the object store for every epoch",
    )
    cache_train: bool | None = Field(
        default=None,
        description="preprocess the train split once, before training, and keep it in the object store for "
                    "every epoch (augmentation happens on the workers, so epochs stay random); null: when it "
                    "takes under a quarter of the cluster's object store",
    )


class ModelConfig(_Section):
    name: str = Field(default="m2sa-tiny", description="architecture config in the registry")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="architecture fields to override, e.g. {'dropout': 0.2}"
    )
    freeze_text: bool = False
    freeze_vision: bool = False
    allow_random_init: bool = Field(
        default=False, description="train a paper-size model (not '-tiny') whose towers have no pretrained weights; "
                                   "refused otherwise, naming the tower"
    )
    text_lr: float | None = Field(default=None, gt=0, description="learning rate of the text tower")
    vision_lr: float | None = Field(default=None, gt=0, description="learning rate of the vision tower")


    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from ray_sticker.architectures import list_models

        if name not in list_models():
            raise ValueError(f"unknown model; registered: {', '.join(list_models())}")
        return name


class TrainConfig(_Section):
    epochs: int = Field(default=3, ge=0, description="0: evaluate the initial (e.g. pretrained, zero-shot) model only")
    batch_size: int = Field(default=16, gt=0, description="micro-batch per worker")
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    optimizer: Literal["adamw", "adam", "adafactor"] = "adamw"
    adam_beta1: float = Field(default=0.9, ge=0, lt=1, description="Adam(W)'s beta1")
    adam_beta2: float = Field(default=0.999, ge=0, lt=1, description="Adam(W)'s beta2 (MDSE's code: 0.98)")
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 42
    num_workers: int = Field(default=2, ge=0, description="Ray Train workers (ranks); 0: local mode, the loop "
                                                         "runs in the driver's process as the only rank, for "
                                                         "debugging and quick checks (Ray Data still streams)")
    cpus_per_worker: float = Field(default=0.5, gt=0)
    use_gpu: bool = False
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources each worker also asks for, e.g. {accelerator_type:A100: "
                                          "0.001} or a node label's resource; CPU and GPU are cpus_per_worker and use_gpu")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="how Ray places the workers on nodes: PACK fills few nodes, SPREAD spreads them "
                                    "over nodes; STRICT_ fails to place rather than bend the rule")
    storage_path: str = Field(
        default="${RAY_STICKER_HOME}/runs", description="local directory or s3:// URI for runs"
    )
    run_name: str | None = Field(
        default=None, description="a run with an existing name resumes from its latest checkpoint"
    )
    storage_shared: bool = Field(
        default=False, description="a local storage_path that every node mounts at the same place (NFS): allowed "
                                   "on a multi-node cluster, where a node's own disk is refused")
    checkpoints_to_keep: int = Field(default=2, gt=0)
    early_stopping_patience: int | None = Field(
        default=None, gt=0, description="stop after this many epochs in a row without a better train.select_metric; "
                                        "the export is then the best epoch's model (M2SA: 3 on val_loss)"
    )
    select_metric: str = Field(default="val_loss", description="the epoch metric that picks the best epoch")
    select_mode: Literal["min", "max"] = "min"
    max_failures: int = Field(default=0, ge=-1)
    log_every_steps: int = Field(default=20, gt=0)
    export: bool = Field(default=True, description="write model.safetensors + config at the end")

    @field_validator("worker_resources")
    @classmethod
    def _custom_resources_only(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name in ("CPU", "GPU"):
                raise ValueError(f"{name} is not a custom resource: set train.{'cpus_per_worker' if name == 'CPU' else 'use_gpu'}")
            if not amount > 0:
                raise ValueError(f"{name}: an amount above 0, got {amount}")
        return resources


class DeepSpeedConfig(_Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 on GPUs that compute it natively, else fp16 with dynamic loss "
                                    "scaling on GPUs with tensor cores, else fp32; fp32 on CPU (logged by each worker)"
    )
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    gradient_clipping: float = Field(default=1.0, ge=0)
    offload_optimizer: bool = False
    offload_param: bool = False

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> "DeepSpeedConfig":
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        return self


class ExperimentConfig(_Section):
    name: str = "experiment"
    task: Literal["classify", "select"] = "classify"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)

    @field_validator("deepspeed")
    @classmethod
    def _half_precision_needs_gpu(cls, ds: DeepSpeedConfig, info: ValidationInfo) -> DeepSpeedConfig:
        # DeepSpeed refuses fp16 on CPUs without fp16 kernels, and CPU workers train in fp32
        # (train/engine.py): an explicit bf16/fp16 would silently not happen.
        train = info.data.get("train")
        if train is not None and not train.use_gpu and ds.precision in ("bf16", "fp16"):
            raise ValueError(f"precision={ds.precision} needs train.use_gpu=true; CPU workers train in fp32 "
                             "(use precision auto or fp32)")
        return ds

    def resolved(self) -> "ExperimentConfig":
        """A copy with ``${VAR}`` and ``~`` expanded in the URI fields."""
        out = self.model_copy(deep=True)
        out.data.uri = expand(out.data.uri)
        out.train.storage_path = expand(out.train.storage_path)
        return out

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def expand(value: str) -> str:
    """Expand ``${RAY_STICKER_HOME}``, other environment variables and ``~`` in a path or URI."""
    env = {**os.environ, "RAY_STICKER_HOME": default_home()}
    for key in ("RAY_STICKER_HOME",):
        value = value.replace("${%s}" % key, env[key])
    value = os.path.expandvars(value)
    return value if "://" in value else os.path.expanduser(value)


def list_configs() -> list[str]:
    """Names of the experiment configs shipped with the package."""
    files = resources.files(CONFIG_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def read_path_or_uri(name_or_path: str, what: str) -> tuple[str, str] | None:
    """(text, source) when ``name_or_path`` is a URI or a file path (``.yaml``/``.yml`` or an
    existing file); None when it is a name, for the caller to look up. ``what`` names the kind
    of file in the error of a path that does not exist."""
    if "://" in name_or_path:
        from ray_sticker import storage

        return storage.read_text(name_or_path), name_or_path
    path = Path(os.path.expanduser(name_or_path))
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{what} file not found: {name_or_path}")
        return path.read_text(), str(path)
    return None


def _read_yaml(name_or_path: str) -> dict[str, Any]:
    found = read_path_or_uri(name_or_path, "config")
    if found is not None:
        text = found[0]
    else:
        ref = resources.files(CONFIG_PACKAGE) / f"{name_or_path}.yaml"
        if not ref.is_file():
            raise ConfigError(
                f"unknown config '{name_or_path}'; shipped configs: {', '.join(list_configs())} "
                "(or give a path to a .yaml file)"
            )
        text = ref.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {name_or_path}: top level must be a mapping")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3); values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {item!r} has no field name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, LookupError, AttributeError, RecursionError):
        # PyYAML's constructors raise plain errors for tagged scalars they cannot build
        # (``!!int abc``, ``!!bool maybe``) and deep nesting exhausts its recursion.
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``section.field=value`` strings applied in order.

    Synthetic data stands in only where a config's own file points: an override that moves
    ``data.uri`` turns the file's ``data.synthetic_if_missing`` off, unless the overrides set
    it themselves. A mistyped dataset path is then an error, not a synthetic dataset trained on
    as if it were the user's."""
    out = _deep_copy(data)
    moved = asked = False
    for item in overrides:
        keys, value = parse_override(item)
        _set_path(out, keys, value, f"override {item!r}")
        given = {".".join(keys)} | ({f"data.{k}" for k in value} if keys == ["data"] and isinstance(value, dict) else set())
        moved |= "data.uri" in given
        asked |= "data.synthetic_if_missing" in given
    if moved and not asked and isinstance(out.get("data"), dict) and "synthetic_if_missing" in out["data"]:
        out["data"]["synthetic_if_missing"] = False
    return out


def set_values(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with ``{"train.lr": 1e-4, ...}`` set: dotted keys, typed values
    (a sweep's trial parameters)."""
    out = _deep_copy(data)
    for key, value in values.items():
        keys = [k for k in key.split(".") if k]
        if not keys:
            raise ConfigError(f"empty field name in {key!r}")
        _set_path(out, keys, _deep_copy(value), f"field '{key}'")
    return out


def _set_path(node: dict[str, Any], keys: list[str], value: Any, what: str) -> None:
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _allowed_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def validate(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; the first problem becomes a one-line :class:`ConfigError`."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_fields(loc))
            msg = f"unknown field {field!r}; allowed here: {allowed}"
        else:
            got = err.get("input")
            detail = err["msg"].removeprefix("Value error, ")
            msg = f"{field}: {detail} (got {got!r})" if not isinstance(got, dict) else f"{field}: {detail}"
        more = len(exc.errors()) - 1
        suffix = f" [+{more} more]" if more else ""
        raise ConfigError(f"{source}: {msg}{suffix}") from None


def load_config(name_or_path: str = "m2sa-tiny", overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a shipped config name or a YAML path/URI, apply dotted overrides, validate."""
    return validate(load_config_data(name_or_path, overrides), source=f"config '{name_or_path}'")


def load_config_data(name_or_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """The config mapping as written (``${VAR}`` unexpanded) with overrides applied, unvalidated."""
    return apply_overrides(_read_yaml(name_or_path), list(overrides or []))


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config from ``ExperimentConfig.to_dict()`` (e.g. inside a Ray worker)."""
    return validate(data)
