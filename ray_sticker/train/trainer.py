"""Driver side of a training run: validate everything, assemble the TorchTrainer, fit,
write the run's metrics.

Run directory ``<train.storage_path>/<run_name>/`` (local or S3) holds Ray Train's
checkpoints (``epoch-NNNN/``, DeepSpeed files of every rank), ``export/``
(``model.safetensors`` + ``config.json``) and ``metrics.json`` / ``metrics.csv``.
Re-running with the same ``train.run_name`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

from ray_sticker import storage
from ray_sticker.runtime import init_ray
from ray_sticker.config import ConfigError, ExperimentConfig
from ray_sticker.data import schema
from ray_sticker.data.pipeline import (
    PoolSpec,
    PreprocessSpec,
    TextInput,
    build_dataset,
    read_sticker_ids,
    split_schema,
    stickers_schema,
)

log = logging.getLogger("ray_sticker.train")


@dataclass
class RunResult:
    name: str
    run_dir: str
    history: list[dict[str, Any]]
    export_uri: str | None
    wall_s: float = 0.0
    start_epoch: int = 0  # epochs before it were restored from the checkpoint the run resumed

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def ensure_dataset(cfg: ExperimentConfig) -> schema.Manifest:
    """The dataset's manifest; writes the synthetic dataset of the config's task first when
    asked and missing (or written by an older generator)."""
    from ray_sticker.data import synthetic

    uri = cfg.data.uri
    path = storage.join(uri, schema.MANIFEST)
    if cfg.data.synthetic_if_missing:
        stale = storage.exists(path) and _is_stale_synthetic(schema.read_manifest(uri))
        if stale or not storage.exists(path):
            log.info("writing the synthetic %s dataset to %s", cfg.task, uri)
            if cfg.task == "select":
                from ray_sticker.data.synthetic_select import make_select_dataset

                make_select_dataset(uri, num_rows=cfg.data.synthetic_rows, seed=cfg.train.seed)
            else:
                synthetic.make_classify_dataset(uri, num_rows=cfg.data.synthetic_rows, seed=cfg.train.seed)
    return schema.read_manifest(uri)


def _is_stale_synthetic(manifest: schema.Manifest) -> bool:
    from ray_sticker.data.synthetic import VERSION

    return manifest.source_format == "synthetic" and manifest.source_version != VERSION


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


def _label_specs(cfg: ExperimentConfig, model_cfg: dict[str, Any], manifest: schema.Manifest,
                 key: str) -> tuple[tuple[str, int], ...]:
    specs = dict(model_cfg.get(key, {}))
    for name, n in specs.items():
        have = manifest.num_classes(name)
        if have != n:
            raise schema.SchemaError(
                f"model '{cfg.model.name}' {'head' if key == 'heads' else 'label'} '{name}' has {n} classes but "
                f"dataset {cfg.data.uri} label map '{name}' has {have}: {manifest.label_maps[name]}"
            )
    return tuple(specs.items())


def num_candidates(cfg: ExperimentConfig, manifest: schema.Manifest) -> int:
    return int(cfg.data.num_candidates or manifest.extra.get("num_candidates") or 10)


def preprocess_spec(cfg: ExperimentConfig, model_cfg: dict[str, Any], manifest: schema.Manifest,
                    sticker_ids: tuple[str, ...] = ()) -> PreprocessSpec:
    """What the pipeline must produce for this model; checks labels against label maps."""
    size = model_image_size(model_cfg)
    select = cfg.task == "select"
    return PreprocessSpec(
        labels=_label_specs(cfg, model_cfg, manifest, "heads"),
        aux_labels=_label_specs(cfg, model_cfg, manifest, "aux_labels"),
        texts=text_inputs(cfg, model_cfg),
        use_image=size is not None,
        image_size=cfg.data.image_size,
        num_candidates=num_candidates(cfg, manifest) if select else 0,
        sticker_ids=tuple(sticker_ids),
        seed=cfg.train.seed,
    )


def pool_spec(cfg: ExperimentConfig, model_cfg: dict[str, Any]) -> PoolSpec:
    return PoolSpec(texts=text_inputs(cfg, model_cfg, "sticker_inputs"),
                    use_image=model_image_size(model_cfg) is not None, image_size=cfg.data.image_size)


def check_inputs(cfg: ExperimentConfig) -> tuple[schema.Manifest, dict[str, Any], tuple[str, ...]]:
    """Everything that can be checked before Ray starts workers: model, dataset, columns,
    label maps, image size, sticker pool. Problems raise :class:`ConfigError` (or the
    storage/schema error that names the URI). Returns the manifest, the model config
    completed with the dataset's label names, and the sticker pool's ids (selection)."""
    from ray_sticker.models.registry import get_model_config

    model_cfg = get_model_config(cfg.model.name, cfg.model.overrides)
    if model_cfg.get("task", "classify") != cfg.task:
        raise ConfigError(f"model '{cfg.model.name}' is a {model_cfg.get('task')} model but the config task is {cfg.task}")
    size = model_image_size(model_cfg)
    if size is not None and size != cfg.data.image_size:
        raise ConfigError(f"data.image_size={cfg.data.image_size} but model '{cfg.model.name}' takes {size} px images")
    manifest = ensure_dataset(cfg)
    if manifest.task != cfg.task:
        raise ConfigError(f"dataset {cfg.data.uri} is for task '{manifest.task}', the config for '{cfg.task}'")
    model_cfg["label_names"] = {k: list(v) for k, v in manifest.label_maps.items()}
    sticker_ids: tuple[str, ...] = ()
    if cfg.task == "select":
        sticker_ids = tuple(read_sticker_ids(cfg.data.uri))
        pool = pool_spec(cfg, model_cfg)
        needed = ["sticker_id"] + [c for t in pool.texts for c in t.columns] + (["image"] if pool.use_image else [])
        schema.check_columns(stickers_schema(cfg.data.uri), needed, f"stickers table of {cfg.data.uri}")
        k = num_candidates(cfg, manifest)
        if len(sticker_ids) < k:
            raise ConfigError(f"the sticker pool of {cfg.data.uri} has {len(sticker_ids)} stickers, fewer than "
                              f"the {k} candidates per example")
    spec = preprocess_spec(cfg, model_cfg, manifest, sticker_ids)
    for split in (cfg.data.train_split, cfg.data.eval_split):
        if split not in manifest.splits:
            raise ConfigError(f"dataset {cfg.data.uri} has no split '{split}'; it has {sorted(manifest.splits)}")
        schema.check_columns(split_schema(cfg.data.uri, split), spec.columns(),
                             f"dataset {cfg.data.uri} split '{split}'")
    rows = manifest.splits[cfg.data.train_split]
    if rows < cfg.train.num_workers:
        raise ConfigError(f"split '{cfg.data.train_split}' of dataset {cfg.data.uri} has {rows} rows, fewer than "
                          f"train.num_workers={cfg.train.num_workers}")
    if manifest.splits[cfg.data.eval_split] == 0:
        raise ConfigError(f"split '{cfg.data.eval_split}' of dataset {cfg.data.uri} has no rows: nothing to "
                          f"evaluate on (set data.eval_split)")
    return manifest, model_cfg, sticker_ids


def _whole_eval_data_config(eval_name: str, preserve_order: bool):
    """Train split equally (every worker steps the same number of times); the evaluation
    set split with ``equal=False`` so that no row is dropped. ``preserve_order``: blocks reach
    the workers in file order, so each rank sees the same rows in the same order every run."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = preserve_order

    class WholeEvalDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = super().configure({k: v for k, v in datasets.items() if k != eval_name}, world_size,
                                    worker_handles, worker_node_ids, **kwargs)
            if eval_name in datasets:
                ds = datasets[eval_name].copy(datasets[eval_name])
                ds.context.execution_options = self._resolve_execution_options(eval_name)
                for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                    out[i][eval_name] = split
            return out

    return WholeEvalDataConfig(execution_options=options)


def cache_train(cfg: ExperimentConfig, spec: PreprocessSpec, rows: int) -> bool:
    """``data.cache_train``, where null means: when the preprocessed split takes under a quarter
    of the connected cluster's object store."""
    if cfg.data.cache_train is not None:
        return cfg.data.cache_train
    import ray

    store = ray.cluster_resources().get("object_store_memory", 0.0)
    size = rows * spec.row_bytes()
    log.info("train split: %d rows, %.1f MB preprocessed; object store %.1f MB: %s", rows, size / 1e6, store / 1e6,
             "cached after one pass" if size < store / 4 else "streamed every epoch")
    return size < store / 4


def default_run_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


def run_many(cfgs: list[ExperimentConfig], ray_address: str | None = None) -> list[RunResult]:
    """Runs one after another on one Ray cluster; every config is checked, every dataset
    made and every run's workers checked against the cluster before the first run starts."""
    from ray_sticker.train.placement import check_placement

    cfgs = [c.resolved() for c in cfgs]
    checked = [(cfg, *check_inputs(cfg)) for cfg in cfgs]
    init_ray(ray_address)
    for cfg in cfgs:
        check_placement(cfg.train)
    return [_fit(cfg, *inputs, ray_address) for cfg, *inputs in checked]


def run_training(cfg: ExperimentConfig, ray_address: str | None = None, callbacks: list | None = None) -> RunResult:
    """Check the inputs, then train one experiment. ``callbacks``: Ray Train user callbacks
    (e.g. Tune's report callback when the run is a sweep's trial)."""
    cfg = cfg.resolved()
    from ray_sticker.train.placement import check_placement

    inputs = check_inputs(cfg)
    init_ray(ray_address)
    check_placement(cfg.train)  # Ray Train would wait forever for workers the cluster cannot place
    return _fit(cfg, *inputs, ray_address, callbacks)


def _fit(cfg: ExperimentConfig, manifest: schema.Manifest, model_cfg: dict[str, Any],
         sticker_ids: tuple[str, ...], ray_address: str | None, callbacks: list | None = None) -> RunResult:
    """Assemble and fit the TorchTrainer of a resolved, checked config."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_sticker.train.loop import train_loop_per_worker

    t0 = time.perf_counter()
    init_ray(ray_address)

    name = cfg.train.run_name or default_run_name(cfg)
    run_dir = storage.join(cfg.train.storage_path, name)
    export_uri = storage.join(run_dir, "export") if cfg.train.export else None
    storage.ensure_bucket(cfg.train.storage_path)
    fs, storage_path = storage.resolve(cfg.train.storage_path)

    spec = preprocess_spec(cfg, model_cfg, manifest, sticker_ids)
    datasets = {
        "train": build_dataset(cfg.data.uri, cfg.data.train_split, spec, batch_size=cfg.data.preprocess_batch_size),
        "validation": build_dataset(cfg.data.uri, cfg.data.eval_split, spec, batch_size=cfg.data.preprocess_batch_size),
    }
    for ds in datasets.values():
        ds.context.execution_options.preserve_order = cfg.data.deterministic
    if cfg.data.cache_eval:
        datasets["validation"] = datasets["validation"].materialize()
    if cache_train(cfg, spec, manifest.splits[cfg.data.train_split]):
        datasets["train"] = datasets["train"].materialize()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": cfg.to_dict(),
            "model_config": model_cfg,
            "train_rows": manifest.splits[cfg.data.train_split],
            "label_maps": manifest.label_maps,
            "export_uri": export_uri,
            "run_dir": run_dir,
            "sticker_ids": list(sticker_ids),
            "pool_spec": pool_spec(cfg, model_cfg) if cfg.task == "select" else None,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=fs if storage.is_s3(cfg.train.storage_path) else None,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
        dataset_config=_whole_eval_data_config("validation", cfg.data.deterministic),
    )
    log.info("run %s -> %s", name, run_dir)
    result = trainer.fit()
    returned = result.return_value or {}
    history = returned.get("history", [])
    write_metrics(run_dir, history)
    return RunResult(name=name, run_dir=run_dir, history=history, export_uri=export_uri,
                     wall_s=time.perf_counter() - t0, start_epoch=returned.get("start_epoch", 0))


def write_metrics(run_dir: str, history: list[dict[str, Any]]) -> None:
    """``metrics.json`` (list of per-epoch dicts) and ``metrics.csv`` in the run directory."""
    storage.write_json(storage.join(run_dir, "metrics.json"), history)
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    storage.write_text(storage.join(run_dir, "metrics.csv"), buf.getvalue())
