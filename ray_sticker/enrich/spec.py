"""Enrichment job definitions: typed, validated, read from ``ray_sticker/configs/enrich/<name>.yaml``
(or any path / ``s3://`` URI), with dotted ``key=value`` overrides::

    name: describe-stickers            # also names the work directory
    annotator: sticker_descriptions    # sticker_descriptions | commonsense | text_emotion
    dataset: s3://bucket/datasets/stickerint
    options: {model: Qwen/Qwen2-VL-7B-Instruct, max_new_tokens: 32}   # the annotator's constructor
    batch_size: 8                      # rows per annotator call (and per part file)
    concurrency: 4                     # actors
    num_gpus: 1                        # per actor (0: CPU)

A bad value raises :class:`~ray_sticker.config.ConfigError` with one line naming the field.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ray_sticker.config import CONFIG_PACKAGE, ConfigError, apply_overrides, expand, parse_override, read_path_or_uri

ENRICH_DIR = "enrich"  # ray_sticker/configs/enrich/
WORK_SUBDIR = "_enrich"  # default work directory: <dataset>/_enrich/<name>


def annotator_names() -> list[str]:
    from ray_sticker.enrich.annotators import ANNOTATORS

    return list(ANNOTATORS)


class EnrichSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="job name; names the work directory")
    annotator: str = Field(description="annotator in the registry (ray_sticker.enrich.annotators)")
    dataset: str = Field(description="canonical dataset (directory with manifest.json): local path or s3:// URI")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the annotator")
    splits: list[str] | None = Field(
        default=None, min_length=1,
        description="examples table: the splits to annotate (default: all; the others are copied unchanged)")
    batch_size: int = Field(default=16, gt=0, description="rows per annotator call, and per part file")
    concurrency: int = Field(default=1, gt=0, description="annotator actors")
    num_gpus: float = Field(default=0, ge=0, description="GPUs per actor (1 for real vision-language models)")
    num_cpus: float = Field(default=1, ge=0, description="CPUs per actor")
    work_dir: str | None = Field(default=None,
                                 description="finished rows between runs (default <dataset>/_enrich/<name>)")
    overwrite: bool = Field(default=False, description="replace output columns that already hold values")
    max_error_fraction: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="fail, publishing nothing, when more rows cannot be annotated (below: published as nulls)")
    max_rows: int | None = Field(
        default=None, gt=0, description="annotate at most this many new rows in this run and stop without publishing")
    synthetic_if_missing: bool = Field(
        default=False, description="write the synthetic selection dataset to `dataset` when it has no manifest")
    synthetic_rows: int = Field(default=1600, gt=0, description="example rows of that synthetic dataset")

    @field_validator("annotator")
    @classmethod
    def _registered(cls, name: str) -> str:
        known = annotator_names()
        if name not in known:
            raise ValueError(f"unknown annotator; known: {', '.join(known)}")
        return name

    def resolved(self) -> "EnrichSpec":
        """A copy with ``${RAY_STICKER_HOME}``, variables and ``~`` expanded and ``work_dir`` set."""
        from ray_sticker import storage

        dataset = expand(self.dataset).rstrip("/")
        work_dir = expand(self.work_dir) if self.work_dir else storage.join(dataset, WORK_SUBDIR, self.name)
        return self.model_copy(update={"dataset": dataset, "work_dir": work_dir})


def list_enrich_configs() -> list[str]:
    """Names of the enrichment configs shipped with the package."""
    files = resources.files(CONFIG_PACKAGE) / ENRICH_DIR
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def _read(name_or_path: str) -> tuple[str, str]:
    """(text, source) of a shipped config name, a file path or a URI."""
    found = read_path_or_uri(name_or_path, "enrichment config")
    if found is not None:
        return found
    ref = resources.files(CONFIG_PACKAGE) / ENRICH_DIR / f"{name_or_path}.yaml"
    if not ref.is_file():
        raise ConfigError(f"unknown enrichment config '{name_or_path}'; shipped: {', '.join(list_enrich_configs())} "
                          "(or give a path to a .yaml file)")
    return ref.read_text(), name_or_path


def validate(data: dict[str, Any], source: str = "enrichment config") -> EnrichSpec:
    """Validate a mapping; the first problem becomes a one-line :class:`ConfigError`."""
    try:
        return EnrichSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = f"unknown field '{field}'; allowed: {', '.join(EnrichSpec.model_fields)}"
        else:
            got = err.get("input")
            detail = err["msg"].removeprefix("Value error, ")
            shown = not isinstance(got, dict) and err["type"] != "missing"
            msg = f"{field}: {detail}" + (f" (got {got!r})" if shown else "")
        more = len(exc.errors()) - 1
        raise ConfigError(f"{source}: {msg}" + (f" [+{more} more]" if more else "")) from None


def load_enrich_config(name_or_path: str, overrides: list[str] | None = None, dataset: str | None = None
                       ) -> EnrichSpec:
    """Read a shipped name or a YAML path/URI, apply ``key=value`` overrides (``options.model=...``)
    and ``dataset``, validate. Paths stay unexpanded: :meth:`EnrichSpec.resolved` expands them."""
    text, source = _read(name_or_path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"enrichment config {source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"enrichment config {source}: top level must be a mapping")
    data = apply_overrides(data, list(overrides or []))
    given = {parse_override(item)[0][0] for item in overrides or []}
    if dataset:
        data["dataset"] = dataset
        given.add("dataset")
    if "dataset" in given and "synthetic_if_missing" not in given:
        data["synthetic_if_missing"] = False  # synthetic data only where the file itself points
    return validate(data, source=f"enrichment config '{source}'")
