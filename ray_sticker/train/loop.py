"""The training loop each Ray Train worker runs: one loop for every model (the model
contract), parameterised by the :class:`RunPlan` the driver hands it.

setup (model, DeepSpeed engine, sticker pool, resume) -> per epoch: train on this worker's
shard, evaluate on the whole validation set (shards gathered), checkpoint through the session
(train/session.py: Ray Train's, or the driver's own in local mode),
track (TensorBoard, MLflow; rank 0) -> export the consolidated model.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ray_sticker.data.pipeline import SKIP_OK
from ray_sticker.data.pool import StickerPool
from ray_sticker.runtime import worker_logging
from ray_sticker.train import checkpoints as ckpt
from ray_sticker.train import engine as ds_engine
from ray_sticker.train import selection
from ray_sticker.train.augment import epoch_seed
from ray_sticker.train.batches import SkipCounter, keep_usable, prepare_train_batch, timed
from ray_sticker.train.evaluation import evaluate, save_plots
from ray_sticker.train.export import write_run_config
from ray_sticker.train.ingest import TRAIN, VALIDATION
from ray_sticker.train.inputs import RunPlan
from ray_sticker.train.metrics import all_reduce_sum, gather_arrays
from ray_sticker.train.session import RayTrainSession

log = logging.getLogger("ray_sticker.train")

CLIENT_STATE_KEY = "ray_sticker"


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy takes 32-bit seeds; epoch seeds of large train.seed exceed them
    torch.manual_seed(seed)


@dataclass
class Worker:
    """One rank's side of a run, built by :func:`setup`."""

    plan: RunPlan
    session: Any  # train/session.py: Ray Train's, or local mode's
    device: torch.device
    engine: Any
    precision: str
    pool: StickerPool | None
    facts: dict[str, Any]  # what every epoch's metrics repeat: world size, stage, parameters
    tracker: Any = None  # rank 0's Tracker
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    frozen_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # evaluate(): a frozen sticker tower's

    @property
    def cfg(self):
        return self.plan.inputs.cfg

    @property
    def rank(self) -> int:
        return self.session.rank

    @property
    def world(self) -> int:
        return self.session.world

    def log0(self, msg: str, *args: Any) -> None:
        if self.rank == 0:
            log.info(msg, *args)


def setup(plan: RunPlan, session) -> Worker:
    """Model, DeepSpeed engine, sticker pool and (rank 0) tracker of this rank."""
    t0 = time.perf_counter()
    cfg = plan.inputs.cfg
    rank, world = session.rank, session.world
    set_seed(cfg.train.seed)
    on_gpu = cfg.train.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda", session.device_index()) if on_gpu else torch.device("cpu")
    precision, why = ds_engine.resolve_precision(cfg, on_gpu)
    if rank == 0:
        log.info("precision %s (deepspeed.precision=%s: %s)", precision, cfg.deepspeed.precision, why)
    model = ds_engine.build_model(plan.inputs.model_config, cfg, precision, on_gpu)
    rows_per_worker = plan.inputs.train_rows // world  # the train split is split equally
    steps_per_epoch = math.ceil(math.ceil(rows_per_worker / cfg.train.batch_size)
                                / cfg.deepspeed.gradient_accumulation_steps)
    engine, precision = ds_engine.initialize(model, cfg, max(1, steps_per_epoch * cfg.train.epochs), on_gpu, precision)
    local_params, total_params = ds_engine.partition_numel(engine)
    facts = {"world_size": world, "zero_stage": cfg.deepspeed.zero_stage, "precision": precision,
             "params_total": total_params,
             "params_per_rank": [int(x) for x in gather_arrays({"n": np.array([local_params])})["n"]],
             "worker_nodes": [str(x) for x in gather_arrays({"node": np.array([session.node_id()])})["node"]]}
    worker = Worker(plan, session, device, engine, precision, plan.inputs.load_pool(plan.pool), facts)
    worker.log0("worker setup %.1fs: %s, %d parameters (%d on rank 0), ZeRO-%d, %s, %d workers",
                time.perf_counter() - t0, cfg.model.name, total_params, local_params,
                cfg.deepspeed.zero_stage, precision, world)
    return worker


def resume(worker: Worker) -> int:
    """Load the newest complete checkpoint (see train/checkpoints.py) into the engine, restore
    the step counter and history; returns the first epoch to train."""
    from ray_sticker.config import ConfigError

    cfg, loaded = worker.cfg, {}

    def load(local: str) -> None:
        written = ckpt.world_size_of(local)
        if written != worker.world and cfg.deepspeed.zero_stage > 0:
            raise ConfigError(f"checkpoint {local} holds ZeRO-{cfg.deepspeed.zero_stage} partitions of {written} "
                              f"ranks; resume it with train.num_workers={written}, not {worker.world}")
        _, client = worker.engine.load_checkpoint(local, tag="state")
        loaded.update(client[CLIENT_STATE_KEY])

    def agree(ok: bool) -> bool:
        return all_reduce_sum([0.0 if ok else 1.0])[0] == 0

    if ckpt.restore(worker.session.latest_checkpoint(), worker.plan.run_dir, load, agree, worker.rank) is None:
        return 0
    worker.global_step, worker.history = loaded["global_step"], loaded["history"]
    worker.log0("resumed from epoch %d (global step %d)", loaded["epoch"], worker.global_step)
    return loaded["epoch"] + 1


def train_epoch(worker: Worker, epoch: int) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """One pass over this rank's train shard; returns the epoch's train metrics (summed over
    ranks) and the last batch (the filler of a ZeRO-3 evaluation)."""
    cfg, engine = worker.cfg, worker.engine
    # Randomness is a function of (seed, epoch, rank): a resumed epoch repeats exactly.
    seed = epoch_seed(cfg.train.seed, epoch, worker.rank)
    set_seed(seed)
    augment = torch.Generator(device=worker.device).manual_seed(seed)
    skips = SkipCounter()
    t_epoch = time.perf_counter()
    wait_s = step_s = loss_sum = 0.0
    samples = n_micro = 0
    loss_terms: dict[str, float] = {}
    last_batch = None
    batches = worker.session.dataset(TRAIN).iter_torch_batches(
        batch_size=cfg.train.batch_size, device=worker.device, drop_last=False, prefetch_batches=2)
    for batch, waited in timed(batches):
        wait_s += waited
        t0 = time.perf_counter()
        batch, codes, empty = keep_usable(batch)
        skips.add(codes)
        last_batch = batch = prepare_train_batch(batch, worker.pool, cfg, epoch, augment)
        out = engine(batch)
        engine.backward(out.loss * 0.0 if empty else out.loss)
        engine.step()
        step_s += time.perf_counter() - t0
        n_micro += 1
        if not empty:
            samples += int(np.count_nonzero(codes.skip == SKIP_OK))
            loss_sum += out.loss.detach().item()
            for k, v in out.losses.items():
                loss_terms[k] = loss_terms.get(k, 0.0) + v.detach().item()
        if engine.is_gradient_accumulation_boundary():
            worker.global_step += 1
        if n_micro % cfg.train.log_every_steps == 0:
            _log_step(worker, epoch, loss_sum / n_micro, samples / max(1e-9, wait_s + step_s),
                      wait_s / max(1e-9, wait_s + step_s))
    epoch_s = time.perf_counter() - t_epoch
    totals = all_reduce_sum([samples, n_micro, loss_sum])
    return {
        "epoch": epoch,
        "epochs_completed": epoch + 1,  # a sweep's ASHA counts these (it survives resumption)
        "global_step": worker.global_step,
        "train_loss": totals[2] / max(1.0, totals[1]),
        **{f"train_{k}": v / max(1, n_micro) for k, v in loss_terms.items()},
        "train_samples": int(totals[0]),
        "samples_per_s": totals[0] / max(1e-9, epoch_s),
        "data_wait_s": wait_s,
        "step_s": step_s,
        "data_wait_fraction": wait_s / max(1e-9, wait_s + step_s),
        "lr": engine.get_lr()[0],
        **{f"lr[{g['name']}]": g["lr"] for g in engine.optimizer.param_groups if "name" in g},
        **{f"train_{k}": v for k, v in skips.check(cfg.data.max_corrupt_fraction, f"train epoch {epoch}").items()},
    }, last_batch


def _log_step(worker: Worker, epoch: int, loss: float, samples_per_s: float, wait: float) -> None:
    worker.log0("epoch %d step %d loss %.4f | %.1f samples/s/worker | data wait %.0f%%",
                epoch, worker.global_step, loss, samples_per_s, 100 * wait)
    if worker.tracker is not None:
        worker.tracker.log_scalars({"loss": loss, "samples_per_s_per_worker": samples_per_s, "data_wait_fraction": wait,
                                    "lr": worker.engine.get_lr()[0]}, worker.global_step, prefix="step/")


def validate(worker: Worker, filler: dict[str, torch.Tensor] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    return evaluate(worker.engine, worker.session.dataset(VALIDATION), worker.cfg, worker.cfg.train.batch_size,
                    worker.device, worker.pool, filler, frozen_embeddings=worker.frozen_embeddings)


def finish_epoch(worker: Worker, metrics: dict[str, Any], artifacts: dict[str, Any], t_epoch: float) -> None:
    """Record the epoch: history, plots and tracking (rank 0), then the checkpoint of every rank
    reported through the session (rank 0's report carries the metrics)."""
    epoch, plan = metrics["epoch"], worker.plan
    metrics.update(epoch_s=time.perf_counter() - t_epoch, **worker.facts)
    worker.history.append(metrics)
    if worker.rank == 0:
        log.info("epoch %d: %s", epoch, _fmt(metrics))
        _track(worker, metrics, artifacts)
    reported = metrics if worker.rank == 0 else {"epoch": epoch}
    if epoch < 0:  # evaluation only: nothing to checkpoint
        worker.session.report(reported)
        return
    with tempfile.TemporaryDirectory() as tmp:
        client = {CLIENT_STATE_KEY: {"epoch": epoch, "global_step": worker.global_step, "history": worker.history}}
        worker.engine.save_checkpoint(tmp, tag="state", client_state=client)
        if worker.rank == 0:
            write_run_config(tmp, worker.cfg, plan.inputs.model_config, plan.inputs.label_maps)
        ckpt.write_manifest(tmp, worker.rank, worker.world, epoch)
        worker.session.report(reported, tmp, ckpt.checkpoint_dir_name(epoch))


def _track(worker: Worker, metrics: dict[str, Any], artifacts: dict[str, Any]) -> None:
    step = max(0, metrics["epoch"])
    pngs = save_plots(worker.plan.run_dir, artifacts, worker.plan.inputs.label_maps, worker.cfg.name) if artifacts else {}
    if worker.tracker is not None:
        worker.tracker.log_scalars(metrics, step, prefix="epoch/")
        for key, png in pngs.items():
            worker.tracker.log_image(key, png, step)
        worker.tracker.flush()


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """``config["plan"]``: the :class:`RunPlan`; ``config["session"]``: a :class:`LocalSession`
    in local mode (else the Ray Train worker's). Rank 0 returns ``{"history": [per-epoch
    metrics], "start_epoch": first epoch trained here}`` (epochs before it came from the
    checkpoint resumed); other ranks None."""
    from ray_sticker.train.tracking import Tracker

    plan: RunPlan = config["plan"]
    session = config.get("session")
    if session is None:  # a Ray Train worker (local mode runs in the driver, whose logging stays)
        worker_logging()
        session = RayTrainSession()
    worker = setup(plan, session)
    start_epoch = resume(worker)
    cfg = worker.cfg
    if worker.rank == 0:
        worker.tracker = Tracker(plan.tracking, cfg.to_dict())
    selecting = cfg.train.early_stopping_patience is not None
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            if selecting and _stop_early(worker):  # also when a resumed run had already stopped
                break
            t_epoch = time.perf_counter()
            metrics, last_batch = train_epoch(worker, epoch)
            val, artifacts = validate(worker, last_batch)
            finish_epoch(worker, {**metrics, **val}, artifacts, t_epoch)
            if selecting and selection.best_index(worker.history, cfg.train) == len(worker.history) - 1 \
                    and cfg.train.export and plan.export_uri:
                _export(worker)  # the best epoch so far: the export is always the best epoch's model
        if cfg.train.epochs == 0:  # evaluation only (e.g. a zero-shot baseline)
            t0 = time.perf_counter()
            val, artifacts = validate(worker, None)
            finish_epoch(worker, {"epoch": -1, "global_step": 0, **val}, artifacts, t0)
    except BaseException:
        if worker.tracker is not None:
            worker.tracker.close(failed=True)
        raise
    if worker.tracker is not None:
        worker.tracker.close()
    if cfg.train.export and plan.export_uri and not (selecting and worker.history):
        _export(worker)
    return {"history": worker.history, "start_epoch": start_epoch} if worker.rank == 0 else None


def _export(worker: Worker) -> None:
    from ray_sticker.train.export import export_model

    plan = worker.plan
    export_model(worker.engine, worker.cfg, plan.inputs.model_config, plan.export_uri, plan.inputs.label_maps,
                 worker.rank)


def _stop_early(worker: Worker) -> bool:
    """Whether ``train.early_stopping_patience`` epochs in a row have not beaten the best one."""
    history, train = worker.history, worker.cfg.train
    if not selection.stalled(history, train):
        return False
    best = selection.best_index(history, train)
    worker.log0("early stopping after epoch %d: %s has not improved on epoch %d's for %d epochs",
                history[-1]["epoch"], train.select_metric, history[best]["epoch"], train.early_stopping_patience)
    return True


def _fmt(metrics: dict[str, Any]) -> str:
    keys = ("train_loss", "val_loss", "val_accuracy", "val_map", "val_pool_map", "samples_per_s", "data_wait_fraction")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
