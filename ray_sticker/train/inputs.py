"""A run's inputs, checked once: the model, the dataset, and what the pipeline must make of it.

:func:`check_inputs` reads an experiment config's architecture and dataset, checks everything
that can be checked before Ray starts workers (task, image size, splits, columns, label maps,
sticker pool) and returns one frozen :class:`RunInputs`. The driver hands it to the workers
inside a :class:`RunPlan`; evaluation, benchmarks, sweeps and the enrichment jobs read the
same object instead of building their own. Problems raise :class:`ConfigError` (or the
storage/schema error that names the URI).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ray_sticker.config import ConfigError, ExperimentConfig
from ray_sticker.data import schema, shards
from ray_sticker.data.pipeline import (
    PoolSpec,
    PreprocessSpec,
    TextInput,
    read_sticker_ids,
)
from ray_sticker.data.synonyms import SynonymSpec, load_synonyms

if TYPE_CHECKING:
    from ray_sticker.data.pool import StickerPool
    from ray_sticker.train.tracking import TrackingConfig

log = logging.getLogger("ray_sticker.train")


@dataclass(frozen=True)
class RunInputs:
    """A checked experiment: its resolved config, the dataset's manifest, the architecture
    (completed with the dataset's label names) and the preprocessing and pool specs."""

    cfg: ExperimentConfig
    manifest: schema.Manifest
    model_config: dict[str, Any]
    spec: PreprocessSpec
    pool: PoolSpec | None  # selection: what the model needs of each sticker

    @property
    def train_spec(self) -> PreprocessSpec:
        """The train split's spec: ``spec`` with synonym replacement where the config asks for it."""
        data = self.cfg.data
        if data.synonym_replacement == 0:
            return self.spec
        return replace(self.spec, synonyms=SynonymSpec(data.synonyms, data.synonym_replacement, data.synonym_variants))

    @property
    def sticker_ids(self) -> tuple[str, ...]:
        return self.spec.sticker_ids

    @property
    def label_maps(self) -> dict[str, list[str]]:
        return self.manifest.label_maps

    @property
    def train_rows(self) -> int:
        return self.manifest.splits[self.cfg.data.train_split]

    def share_pool(self):
        """Selection: the ObjectRef of the encoded pool, read by a Ray task into the object store
        (data/pool.py), which :meth:`load_pool` of every worker maps; else None."""
        if self.pool is None:
            return None
        from ray_sticker.data.pool import share_pool

        return share_pool(self.cfg.data.uri, self.pool, list(self.sticker_ids), self.cfg.data.max_corrupt_fraction)

    def load_pool(self, shared=None) -> "StickerPool | None":
        """Selection: this process's view of the sticker pool, the one in the object store when
        ``shared`` (from :meth:`share_pool`) is given, else read here; else None."""
        if self.pool is None:
            return None
        from ray_sticker.data.pool import StickerPool, read_pool

        if shared is not None:
            import ray

            encoded = ray.get(shared)
        else:
            encoded = read_pool(self.cfg.data.uri, self.pool, list(self.sticker_ids), self.cfg.data.max_corrupt_fraction)
        return StickerPool(encoded, self.cfg.data.pool_cache_mb, threads=int(self.cfg.train.cpus_per_worker))


@dataclass(frozen=True)
class RunPlan:
    """What the driver hands every worker of a run: the checked inputs and where outputs go."""

    inputs: RunInputs
    run_name: str
    run_dir: str
    export_uri: str | None
    tracking: "TrackingConfig"
    pool: Any = None  # selection: ObjectRef of the encoded sticker pool (RunInputs.share_pool)


def ensure_dataset(cfg: ExperimentConfig) -> schema.Manifest:
    """The dataset's manifest; writes the synthetic dataset of the config's task first when
    ``data.synthetic_if_missing`` asks for it and the URI holds none (or an older one)."""
    if cfg.data.synthetic_if_missing:
        from ray_sticker.data.embedded import ensure_synthetic

        if ensure_synthetic(cfg.data.uri, cfg.task, cfg.data.synthetic_rows, cfg.train.seed):
            log.info("wrote the synthetic %s dataset to %s", cfg.task, cfg.data.uri)
    return schema.read_manifest(cfg.data.uri)


def model_image_size(model_cfg: dict[str, Any]) -> int | None:
    """The image resolution a model reads, None for text-only models."""
    from ray_sticker.models.encoders import vision_image_size

    if model_cfg.get("vision"):
        return vision_image_size(model_cfg["vision"])
    return int(model_cfg["image_size"]) if model_cfg.get("image_size") else None


def text_inputs(cfg: ExperimentConfig, model_cfg: dict[str, Any], key: str = "text_inputs") -> tuple[TextInput, ...]:
    """The model's declared text inputs (see models/output.py) resolved to tokenizers and lengths."""
    from ray_sticker.data.text import tokenizer_name

    specs = model_cfg.get(key)
    if specs is None:
        specs = {"text": {"columns": ["context"]}} if key == "text_inputs" and model_cfg.get("text") else {}
    out = []
    for name, spec in specs.items():
        columns = list(spec["columns"])
        for flag, extra in spec.get("columns_when", {}).items():
            if model_cfg.get(flag):
                columns += [c for c in extra if c not in columns]
        if not columns:  # every column gated off by an ablation switch
            continue
        if spec.get("raw"):
            out.append(TextInput(name, tuple(columns), "", int(spec.get("max_length", 1024)),
                                 str(spec.get("default", "")), separate=True, raw=True))
            continue
        tower = spec.get("tower", "text")
        if not isinstance(model_cfg.get(tower), dict):
            raise ConfigError(f"model '{cfg.model.name}': {key}.{name} names tower '{tower}', which the model lacks")
        out.append(TextInput(name, tuple(columns), tokenizer_name(model_cfg[tower]),
                             int(spec.get("max_length", cfg.data.max_text_length)), str(spec.get("default", "")),
                             bool(spec.get("separate", False))))
    return tuple(out)


def label_specs(cfg: ExperimentConfig, model_cfg: dict[str, Any], manifest: schema.Manifest,
                key: str) -> tuple[tuple[str, int], ...]:
    """The model's ``heads`` or ``aux_labels`` as (label, classes), each checked against the
    dataset's label map of that name."""
    specs = dict(model_cfg.get(key, {}))
    for name, n in specs.items():
        have = manifest.num_classes(name)
        if have != n:
            raise schema.SchemaError(
                f"model '{cfg.model.name}' {'head' if key == 'heads' else 'label'} '{name}' has {n} classes but "
                f"dataset {cfg.data.uri} label map '{name}' has {have}: {manifest.label_maps[name]}"
            )
    return tuple(specs.items())


# What a tower's missing weights come from, where they need a command of this library.
_WEIGHTS_HINT = {"eigml": {"vision": "ALBEF's ViT: `ray-sticker weights albef --src ALBEF.pth --out URI`, then "}}


def check_pretrained(cfg: ExperimentConfig, model_cfg: dict[str, Any]) -> None:
    """A paper-size model (any but the ``-tiny`` test configs) trains from pretrained towers:
    one that would start from random weights is refused unless ``model.allow_random_init``."""
    if cfg.model.allow_random_init or cfg.model.name.endswith("-tiny"):
        return
    for tower, spec in model_cfg.items():
        if isinstance(spec, dict) and "pretrained" in spec and not spec["pretrained"]:
            hint = _WEIGHTS_HINT.get(model_cfg.get("arch", ""), {}).get(tower, "")
            raise ConfigError(
                f"model '{cfg.model.name}': its {tower} tower would train from random weights "
                f"({tower}.pretrained: {spec['pretrained']}); give it weights ({hint}"
                f"model.overrides.{tower}.pretrained=...) or set model.allow_random_init=true")


def label_texts(manifest: schema.Manifest) -> dict[str, list[str]]:
    """A label's texts where the dataset gives them beside its names (``extra.<label>_texts``,
    in label-map order; e.g. StickerInt's ``intent_label.txt``), which models may encode."""
    out = {}
    for label, names in manifest.label_maps.items():
        texts = manifest.extra.get(f"{label}_texts")
        if texts is None:
            continue
        if not isinstance(texts, list) or len(texts) != len(names) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"manifest of {manifest.name}: extra.{label}_texts must be {len(names)} strings, "
                              f"one per {label} label")
        out[label] = list(texts)
    return out


def num_candidates(cfg: ExperimentConfig, manifest: schema.Manifest) -> int:
    return int(cfg.data.num_candidates or manifest.extra.get("num_candidates") or 10)


def preprocess_spec(cfg: ExperimentConfig, model_cfg: dict[str, Any], manifest: schema.Manifest,
                    sticker_ids: tuple[str, ...] = ()) -> PreprocessSpec:
    """What the pipeline must produce for this model; checks labels against label maps."""
    select = cfg.task == "select"
    return PreprocessSpec(
        labels=label_specs(cfg, model_cfg, manifest, "heads"),
        aux_labels=label_specs(cfg, model_cfg, manifest, "aux_labels"),
        texts=text_inputs(cfg, model_cfg),
        use_image=model_image_size(model_cfg) is not None,
        image_size=cfg.data.image_size,
        num_candidates=num_candidates(cfg, manifest) if select else 0,
        sticker_ids=tuple(sticker_ids),
        seed=cfg.train.seed,
        group_column=cfg.data.eval_by,
    )


def pool_spec(cfg: ExperimentConfig, model_cfg: dict[str, Any]) -> PoolSpec:
    return PoolSpec(texts=text_inputs(cfg, model_cfg, "sticker_inputs"),
                    use_image=model_image_size(model_cfg) is not None, image_size=cfg.data.image_size)


def _model_config(cfg: ExperimentConfig) -> dict[str, Any]:
    from ray_sticker.models.registry import get_model_config

    model_cfg = get_model_config(cfg.model.name, cfg.model.overrides)
    if model_cfg.get("task", "classify") != cfg.task:
        raise ConfigError(f"model '{cfg.model.name}' is a {model_cfg.get('task')} model but the config task is {cfg.task}")
    return model_cfg


def _check_pool(cfg: ExperimentConfig, manifest: schema.Manifest, pool: PoolSpec) -> tuple[str, ...]:
    """The pool's sticker ids, once its table holds what the model reads and enough stickers."""
    needed = ["sticker_id"] + [c for t in pool.texts for c in t.columns] + (["image"] if pool.use_image else [])
    where = schema.stickers_uri(schema.tables_uri(cfg.data.uri))
    shards.check(_scan(where, f"selection dataset {cfg.data.uri} has no stickers table at {where}"), "stickers",
                 needed, manifest.stickers or None, f"stickers table of {cfg.data.uri}")
    sticker_ids = tuple(read_sticker_ids(cfg.data.uri))
    k = num_candidates(cfg, manifest)
    if len(sticker_ids) < k:
        raise ConfigError(f"the sticker pool of {cfg.data.uri} has {len(sticker_ids)} stickers, fewer than "
                          f"the {k} candidates per example")
    return sticker_ids


def _check_splits(cfg: ExperimentConfig, manifest: schema.Manifest, spec: PreprocessSpec,
                  splits: tuple[str, ...]) -> None:
    for split in splits:
        if split not in manifest.splits:
            raise ConfigError(f"dataset {cfg.data.uri} has no split '{split}'; it has {sorted(manifest.splits)}")
        where = schema.split_uri(schema.tables_uri(cfg.data.uri), split)
        shards.check(_scan(where, f"split '{split}' not found: {where}"), "examples", spec.columns(),
                     manifest.splits[split], f"dataset {cfg.data.uri} split '{split}'")


def _scan(where: str, missing: str) -> shards.Table:
    try:
        return shards.scan(where)
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None


def _check_synonyms(cfg: ExperimentConfig) -> None:
    if not cfg.data.synonyms:
        raise ConfigError(f"data.synonym_replacement={cfg.data.synonym_replacement} needs data.synonyms: a WordNet "
                          f"database directory or a JSON file of synonyms")
    load_synonyms(cfg.data.synonyms)  # readable, and not empty


def _check_training_rows(cfg: ExperimentConfig, manifest: schema.Manifest) -> None:
    rows = manifest.splits[cfg.data.train_split]
    if rows < cfg.train.num_workers:
        raise ConfigError(f"split '{cfg.data.train_split}' of dataset {cfg.data.uri} has {rows} rows, fewer than "
                          f"train.num_workers={cfg.train.num_workers}")
    if manifest.splits[cfg.data.eval_split] == 0:
        raise ConfigError(f"split '{cfg.data.eval_split}' of dataset {cfg.data.uri} has no rows: nothing to "
                          f"evaluate on (set data.eval_split)")


def check_inputs(cfg: ExperimentConfig, model_config: dict[str, Any] | None = None,
                 split: str | None = None) -> RunInputs:
    """Check a config against its model and dataset (see module doc). ``model_config``: an
    export's architecture instead of the registry's ``cfg.model``; ``split``: check that split
    for evaluation alone, instead of the train and evaluation splits of a training run."""
    cfg = cfg.resolved()
    model_cfg = dict(model_config) if model_config is not None else _model_config(cfg)
    size = model_image_size(model_cfg)
    if size is not None and size != cfg.data.image_size:
        raise ConfigError(f"data.image_size={cfg.data.image_size} but model '{cfg.model.name}' takes {size} px images")
    if split is None:
        check_pretrained(cfg, model_cfg)
    if split is None and cfg.data.synonym_replacement > 0:
        _check_synonyms(cfg)
    if cfg.data.eval_by and cfg.task != "classify":
        raise ConfigError(f"data.eval_by={cfg.data.eval_by!r}: metrics per group are for classification; "
                          f"the config's task is '{cfg.task}'")
    # Evaluation reads the dataset it is given; only a training run may write the synthetic one.
    manifest = ensure_dataset(cfg) if split is None else schema.read_manifest(cfg.data.uri)
    if manifest.task != cfg.task:
        raise ConfigError(f"dataset {cfg.data.uri} is for task '{manifest.task}', the config for '{cfg.task}'")
    model_cfg["label_names"] = {k: list(v) for k, v in manifest.label_maps.items()}
    texts = label_texts(manifest)
    if texts:
        model_cfg["label_texts"] = texts
    pool = pool_spec(cfg, model_cfg) if cfg.task == "select" else None
    sticker_ids = _check_pool(cfg, manifest, pool) if pool is not None else ()
    spec = preprocess_spec(cfg, model_cfg, manifest, sticker_ids)
    _check_splits(cfg, manifest, spec, (split,) if split else (cfg.data.train_split, cfg.data.eval_split))
    if split is None:
        _check_training_rows(cfg, manifest)
    return RunInputs(cfg=cfg, manifest=manifest, model_config=model_cfg, spec=spec, pool=pool)
