"""Running a sweep: Ray Tune schedules trials, each trial one Ray Train + DeepSpeed run.

Experiment directory ``<storage_path>/<name>/`` (local or S3):

- Tune's experiment state and one folder per trial (its reported results);
- ``runs/<trial_id>/``: the trial's Ray Train run (checkpoints ``epoch-NNNN/``, plots);
  a restored trial resumes its run from the latest checkpoint;
- ``sweep.yaml``: the sweep as started (``--resume`` runs it, not the file edited since);
- ``results.csv`` / ``results.parquet`` (kept current while trials finish), ``best.yaml``,
  ``metric_vs_<field>.png`` and ``learning_curves.png`` (see :mod:`ray_sticker.sweep.report`).

Trials do not export models; ``best.yaml`` trains the winner with ``ray-sticker train --config``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import yaml
from ray.train import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback

from ray_sticker import storage
from ray_sticker.config import ConfigError, expand, load_config_data, set_values, validate
from ray_sticker.runtime import init_ray, quiet_data_progress
from ray_sticker.sweep.spec import SweepSpec

log = logging.getLogger("ray_sticker.sweep")

SPEC_FILE = "sweep.yaml"
RUNS_DIR = "runs"
FINISHED = ("TERMINATED", "ERROR")


@dataclass
class SweepResult:
    spec: SweepSpec
    experiment_dir: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def unfinished(self) -> list[str]:
        """Trials an interruption left pending or running (``--resume`` runs them)."""
        return [r["trial_id"] for r in self.rows if r["status"] not in FINISHED]


def experiment_dir(spec: SweepSpec) -> str:
    return storage.join(expand(spec.storage_path), spec.name)


def base_config(spec: SweepSpec) -> dict[str, Any]:
    """The experiment config every trial starts from: the sweep's config, its overrides and
    its per-trial resources, as written (``${VAR}`` unexpanded)."""
    data = load_config_data(spec.config, spec.overrides)
    return set_values(data, spec.resources.overrides())


def check_sweep(spec: SweepSpec, base: dict[str, Any], data: bool = True) -> None:
    """Reject a sweep that cannot run before any trial starts: every point, grid value and
    range end gives a valid experiment config; swept model fields exist in the architecture;
    every model variant builds (shapes only, nothing downloaded); with ``data``, the dataset,
    its splits, columns and label maps fit every variant (the synthetic dataset is written
    once here when the config asks for it)."""
    from ray_sticker.models.params import count
    from ray_sticker.models.registry import get_model_config
    from ray_sticker.train.inputs import check_inputs

    built: list[dict[str, Any]] = []
    for values in spec.representative_values():
        where = f"sweep {spec.name}, trial fields {values}"
        cfg = validate(set_values(base, values), source=where).resolved()
        for key in values:
            if key.startswith("model.overrides."):
                _check_model_field(get_model_config(cfg.model.name), key.removeprefix("model.overrides."),
                                   cfg.model.name, spec.name)
        model_cfg = get_model_config(cfg.model.name, cfg.model.overrides)
        if model_cfg not in built:
            try:
                count(model_cfg)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise ConfigError(f"{where}: model '{cfg.model.name}' does not build: {exc}") from None
            built.append(model_cfg)
        if data:
            check_inputs(cfg)


def _check_model_field(arch: dict[str, Any], path: str, model: str, sweep: str) -> None:
    from ray_sticker.models.registry import REPLACED_WHOLE

    node: Any = arch
    parts = path.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and i > 0 and parts[i - 1] in REPLACED_WHOLE:
            return  # a new head or label map may be named here
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "(a value, not a section)"
            raise ConfigError(f"sweep {sweep}: model '{model}' has no field '{'.'.join(parts[:i + 1])}' "
                              f"(swept as model.overrides.{path}); fields here: {known}")
        node = node[part]


def _check_trial_placement(spec: SweepSpec, base: dict[str, Any]) -> None:
    """Every trial's workers fit the cluster (see train/placement.py): else each trial would
    wait forever for them."""
    from ray_sticker.train.placement import check_placement, check_storage_reach

    trains = {}
    for values in spec.representative_values():
        train = validate(set_values(base, values)).train
        trains[(train.num_workers, train.cpus_per_worker, train.use_gpu)] = train
    for train in trains.values():
        check_placement(train, extra_cpus=_trial_resources(spec, train)["cpu"])
        check_storage_reach(train.model_copy(update={"storage_path": expand(spec.storage_path)}))  # the trials' runs


def _trial_resources(spec: SweepSpec, train) -> dict[str, float]:
    """What a trial's own process reserves: its driver's, or in local mode (where it trains
    itself) at least its rank's CPUs."""
    return spec.resources.driver_resources(train.cpus_per_worker if train.num_workers == 0 else 0.0)


def max_concurrent(spec: SweepSpec, base: dict[str, Any]) -> int:
    """The sweep's setting, else the trials the cluster's current resources fit (at least 1).
    A CPU trial is counted with one spare CPU for its Ray Data preprocessing."""
    import ray

    if spec.search.max_concurrent_trials:
        return spec.search.max_concurrent_trials
    train = validate(base).train
    total = ray.cluster_resources()
    if train.use_gpu:
        fit = total.get("GPU", 0) // train.num_workers
    else:
        held = _trial_resources(spec, train)["cpu"]
        fit = total.get("CPU", 0) // (train.num_workers * train.cpus_per_worker + held + 1)
    return max(1, int(fit))


def _run_trial(params: dict[str, Any], spec_data: dict[str, Any], base: dict[str, Any], runs_dir: str) -> None:
    """One trial: the base config with the trial's fields, trained by Ray Train; every epoch's
    metrics go to Tune through ``TuneReportCallback``. The run is named after the trial, so a
    restored trial resumes its run from the latest checkpoint."""
    from ray import tune

    from ray_sticker.runtime import worker_logging
    from ray_sticker.train.trainer import run_training

    worker_logging()
    quiet_data_progress()
    spec = SweepSpec.model_validate(spec_data)
    trial_id = tune.get_context().get_trial_id()
    data = set_values(base, {
        **spec.trial_values(params),
        "name": f"{spec.name}-{trial_id}",
        "train.run_name": trial_id,
        "train.storage_path": runs_dir,
        "train.export": False,
        "data.synthetic_if_missing": False,  # made once by check_sweep
    })
    cfg = validate(data, source=f"sweep {spec.name}, trial {trial_id}")
    # Local mode runs the loop in this thread: its reports go to Tune directly, and wait for it.
    result = run_training(cfg, callbacks=[TuneReportCallback() if cfg.train.num_workers else DirectTuneReport()])
    if result.history and result.start_epoch >= len(result.history):
        # Every epoch came from the checkpoint: they ran on while an interrupted sweep stopped,
        # and Tune never received the last one.
        tune.report(result.history[-1])


class DirectTuneReport(UserCallback):
    """A local-mode trial's epochs to Tune, from the trial's own thread (``tune.report``)."""

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        from ray import tune

        tune.report(metrics[0])


def _scheduler(spec: SweepSpec, base: dict[str, Any]):
    if spec.scheduler.type == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = spec.scheduler.max_t or validate(base).train.epochs
    if spec.scheduler.grace_period > max_t:
        raise ConfigError(f"sweep {spec.name}: scheduler.grace_period={spec.scheduler.grace_period} exceeds "
                          f"max_t={max_t} (train.epochs unless scheduler.max_t is set)")
    # stop_last_trials=False: a trial reaching max_t finishes its run (metrics, plots) itself.
    return ASHAScheduler(time_attr=spec.scheduler.time_attr, max_t=max_t, grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor, stop_last_trials=False)


def run_sweep(spec: SweepSpec, resume: bool = False, address: str | None = None) -> SweepResult:
    """Start the sweep (its experiment directory must not exist) or, with ``resume``, continue
    the one there: finished trials are kept, unfinished and errored ones run again from their
    latest checkpoints."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ray_sticker.sweep.report import ProgressWriter, write_outputs

    exp_dir = experiment_dir(spec)
    storage.ensure_bucket(expand(spec.storage_path))
    fs, exp_path = storage.resolve(exp_dir)
    fs_arg = fs if storage.is_s3(exp_dir) else None
    spec_uri = storage.join(exp_dir, SPEC_FILE)
    started = storage.exists(spec_uri)
    if resume:
        if not started:
            raise ConfigError(f"nothing to resume: no sweep at {exp_dir}")
        stored = SweepSpec.model_validate(yaml.safe_load(storage.read_text(spec_uri)))
        if stored.model_dump(exclude={"storage_path"}) != spec.model_dump(exclude={"storage_path"}):
            log.warning("the sweep at %s was started from a different definition; resuming the stored one", exp_dir)
        spec = stored
    elif started:
        raise ConfigError(f"sweep {spec.name} already exists at {exp_dir}: continue it with --resume, or give "
                          "a new --name")

    base = base_config(spec)
    check_sweep(spec, base)
    init_ray(address)
    _check_trial_placement(spec, base)
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, spec_data=spec.model_dump(mode="json"), base=base,
                             runs_dir=storage.join(exp_dir, RUNS_DIR)),
        _trial_resources(spec, validate(base).train),
    )
    if resume:
        if not tune.Tuner.can_restore(exp_path, storage_filesystem=fs_arg):
            raise ConfigError(f"the sweep at {exp_dir} has no Tune experiment state to resume (it stopped before "
                              "its first trial started); start it again under a new --name")
        log.info("resuming sweep %s from %s", spec.name, exp_dir)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs_arg)
    else:
        scheduler, concurrent = _scheduler(spec, base), max_concurrent(spec, base)
        storage.write_text(spec_uri, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        log.info("sweep %s: %d trials, %d at a time -> %s", spec.name, spec.num_trials(), concurrent, exp_dir)
        tuner = tune.Tuner(
            trainable,
            param_space=spec.param_space(),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                # Tune ignores max_concurrent_trials beside a given generator: it takes its own.
                search_alg=BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=concurrent),
                num_samples=spec.search.num_samples, reuse_actors=spec.search.reuse_actors,
            ),
            run_config=tune.RunConfig(name=spec.name, storage_path=storage.resolve(expand(spec.storage_path))[1],
                                      storage_filesystem=fs_arg, callbacks=[ProgressWriter(spec, base, exp_dir)],
                                      verbose=1),
        )
    tuner.fit()
    # The trials as saved: after an interruption Tune marks its running trials terminated in
    # memory, while the saved state keeps them running (and --resume runs them).
    analysis = tune.ExperimentAnalysis(exp_path, storage_filesystem=fs_arg)
    histories = {t.trial_id: _history(analysis.trial_dataframes.get(t.trial_id)) for t in analysis.trials}
    rows, best, outputs = write_outputs(spec, base, exp_dir, analysis.trials, histories)
    return SweepResult(spec=spec, experiment_dir=exp_dir, rows=rows, best=best, outputs=outputs)


def _history(frame) -> list[dict[str, Any]]:
    """Every result a trial reported (one per epoch), oldest first."""
    if frame is None or frame.empty:
        return []
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in frame.to_dict("records")]
