"""The driver of a training run: check the inputs, assemble the TorchTrainer, fit, write the
run's metrics.

Run directory ``<train.storage_path>/<run_name>/`` (local or S3) holds Ray Train's
checkpoints (``epoch-NNNN/``, DeepSpeed files of every rank), ``export/``
(``model.safetensors`` + ``config.json``), ``metrics.json`` / ``metrics.csv``, the plots and
``tensorboard/``. Re-running with the same ``train.run_name`` resumes from the latest checkpoint.

``train.num_workers: 0`` is local mode: the loop runs in this process as the only rank, without
Ray Train (no worker or controller actors; Ray Data still streams), for debugging and quick
checks; see train/session.py. A failure there ends the run (``train.max_failures`` needs workers).
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
from ray_sticker.config import ExperimentConfig, TrainConfig
from ray_sticker.runtime import init_ray
from ray_sticker.train.inputs import RunInputs, RunPlan, check_inputs

log = logging.getLogger("ray_sticker.train")


@dataclass
class RunResult:
    name: str
    run_dir: str
    history: list[dict[str, Any]]
    export_uri: str | None
    wall_s: float = 0.0
    start_epoch: int = 0  # epochs before it were restored from the checkpoint the run resumed
    best_epoch: int | None = None  # with train.early_stopping_patience: the epoch the export holds

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def run_training(cfg: ExperimentConfig, ray_address: str | None = None, callbacks: list | None = None) -> RunResult:
    """Check the inputs, then train one experiment. ``callbacks``: Ray Train user callbacks
    (e.g. Tune's report callback when the run is a sweep's trial)."""
    return run_many([cfg], ray_address, callbacks)[0]


def run_many(cfgs: list[ExperimentConfig], ray_address: str | None = None,
             callbacks: list | None = None) -> list[RunResult]:
    """Runs one after another on one Ray cluster; every config is checked, every dataset
    made and every run's workers checked against the cluster before the first run starts."""
    from ray_sticker.train.placement import check_placement, check_storage_reach

    checked = [check_inputs(cfg) for cfg in cfgs]
    init_ray(ray_address)
    for inputs in checked:
        check_placement(inputs.cfg.train)  # Ray Train would wait forever for workers the cluster cannot place
        check_storage_reach(inputs.cfg.train)
    return [fit(inputs, callbacks) for inputs in checked]


def default_run_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"


def plan_run(inputs: RunInputs) -> RunPlan:
    """Name the run and its outputs (``$MLFLOW_TRACKING_URI`` is read here, on the driver), and
    share the sticker pool of a selection run through the object store."""
    from ray_sticker.train.tracking import TrackingConfig

    cfg = inputs.cfg
    name = cfg.train.run_name or default_run_name(cfg)
    run_dir = storage.join(cfg.train.storage_path, name)
    return RunPlan(inputs=inputs, run_name=name, run_dir=run_dir,
                   export_uri=storage.join(run_dir, "export") if cfg.train.export else None,
                   tracking=TrackingConfig.from_env(run_dir, name, cfg.name), pool=inputs.share_pool())


def scaling_config(train: TrainConfig):
    from ray.train import ScalingConfig

    from ray_sticker.train.placement import worker_bundle

    return ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=worker_bundle(train),
                         placement_strategy=train.placement_strategy)


def run_config(plan: RunPlan, callbacks: list):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    train = plan.inputs.cfg.train
    storage.ensure_bucket(train.storage_path)
    fs, storage_path = storage.resolve(train.storage_path)
    return RunConfig(
        name=plan.run_name,
        storage_path=storage_path,
        storage_filesystem=fs if storage.is_s3(train.storage_path) else None,
        checkpoint_config=CheckpointConfig(num_to_keep=train.checkpoints_to_keep),
        failure_config=FailureConfig(max_failures=train.max_failures),
        callbacks=callbacks,
    )


def fit(inputs: RunInputs, callbacks: list | None = None) -> RunResult:
    """Assemble and fit the TorchTrainer of checked inputs; prints a line per epoch."""
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_sticker.train import ingest
    from ray_sticker.train.loop import train_loop_per_worker
    from ray_sticker.train.procgroup import process_group
    from ray_sticker.train.progress import EpochProgress
    from ray_sticker.train.session import LocalSession

    t0 = time.perf_counter()
    cfg = inputs.cfg
    plan = plan_run(inputs)
    with EpochProgress(plan.run_name, cfg.train.epochs) as progress:
        user_callbacks = [progress.callback(), *(callbacks or [])]
        datasets = ingest.run_datasets(inputs)
        if cfg.train.num_workers == 0:
            log.info("run %s -> %s (local mode: in this process)", plan.run_name, plan.run_dir)
            storage.ensure_bucket(cfg.train.storage_path)
            if cfg.train.max_failures:
                log.warning("train.max_failures=%d has no effect in local mode: a failure ends the run; "
                            "rerun it to resume from its newest checkpoint", cfg.train.max_failures)
            session = LocalSession(datasets, plan.run_dir, cfg.train.checkpoints_to_keep, user_callbacks)
            with process_group():  # of this process alone
                returned = train_loop_per_worker({"plan": plan, "session": session}) or {}
        else:
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"plan": plan},
                scaling_config=scaling_config(cfg.train),
                torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
                run_config=run_config(plan, user_callbacks),
                datasets=datasets,
                dataset_config=ingest.data_config(cfg.data.deterministic),
            )
            log.info("run %s -> %s", plan.run_name, plan.run_dir)
            returned = trainer.fit().return_value or {}
    history = returned.get("history", [])
    write_metrics(plan.run_dir, history)
    best = None
    if cfg.train.early_stopping_patience is not None and history:
        from ray_sticker.train.selection import best_index

        best = history[best_index(history, cfg.train)]["epoch"]
    return RunResult(name=plan.run_name, run_dir=plan.run_dir, history=history, export_uri=plan.export_uri,
                     wall_s=time.perf_counter() - t0, start_epoch=returned.get("start_epoch", 0), best_epoch=best)


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
