"""The training loop each Ray Train worker runs: one loop for every model (the model
contract), parameterised by the experiment config.

setup (model, DeepSpeed engine, resume) -> per epoch: train on this worker's shard,
evaluate on the whole validation set (shards gathered), checkpoint through Ray Train ->
export the consolidated model.
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from ray_sticker.config import ExperimentConfig, from_dict
from ray_sticker.data.pipeline import SKIP_OK, DataQualityError, count_skips
from ray_sticker.train import checkpoints as ckpt
from ray_sticker.train import engine as ds_engine
from ray_sticker.train.augment import epoch_seed, random_resized_crop_flip
from ray_sticker.train.export import write_run_config
from ray_sticker.train.evaluation import Evaluation, attach_candidates, compute_metrics, embed_pool, pool_scores
from ray_sticker.train.metrics import gather_arrays

log = logging.getLogger("ray_sticker.train")

CLIENT_STATE_KEY = "ray_sticker"


def _worker_logging() -> None:
    """INFO logs with timestamps from the library inside Ray worker processes."""
    logger = logging.getLogger("ray_sticker")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _all_reduce_sum(values: list[float]) -> list[float]:
    dist = _dist()
    t = torch.tensor(values, dtype=torch.float64)
    if dist is not None:
        dist.all_reduce(t)
    return t.tolist()


class RowCodes(NamedTuple):
    """What the pipeline says of each row of a batch: its skip code, and whether text was cut."""

    skip: np.ndarray
    truncated: np.ndarray


def _keep_usable(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], RowCodes, bool]:
    """Drop rows the pipeline marked unusable; returns (batch, row codes, all-skipped flag).
    A fully skipped batch keeps one row with zero loss weight so every rank still runs the
    same collectives (ZeRO-3 gathers parameters inside forward)."""
    skip = batch.pop("skip")
    truncated = batch.pop("truncated", None)
    codes = RowCodes(skip.cpu().numpy(), truncated.cpu().numpy() > 0 if truncated is not None
                     else np.zeros(len(skip), dtype=bool))
    keep = skip == SKIP_OK
    empty = not bool(keep.any())
    if empty:
        keep[0] = True
    if bool(keep.all()):
        return batch, codes, empty
    return {k: v[keep] for k, v in batch.items()}, codes, empty


def _timed(iterable) -> Iterator[tuple[Any, float]]:
    """Yield (item, seconds spent waiting for it)."""
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield item, time.perf_counter() - t0


def _label_heads(model) -> dict[str, int]:
    return dict(getattr(model, "heads_spec", {}))


class SkipCounter:
    """Rows seen, skipped per reason, and with text cut at its input's ``max_length``."""

    def __init__(self) -> None:
        self.seen = 0
        self.truncated = 0
        self.by_reason: dict[str, int] = {}

    def add(self, codes: RowCodes) -> None:
        self.seen += int(codes.skip.size)
        self.truncated += int(np.count_nonzero(codes.truncated))
        for reason, n in count_skips(codes.skip).items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n

    def check(self, max_fraction: float, where: str) -> dict[str, float]:
        """Sum over ranks; raise DataQualityError above the threshold; return the counts."""
        from ray_sticker.data.pipeline import SKIP_REASONS

        reasons = list(SKIP_REASONS.values())
        totals = _all_reduce_sum([self.seen, self.truncated] + [self.by_reason.get(r, 0) for r in reasons])
        seen, truncated = int(totals[0]), int(totals[1])
        counts = {r: int(c) for r, c in zip(reasons, totals[2:]) if c}
        skipped = sum(counts.values())
        if seen and skipped / seen > max_fraction:
            detail = ", ".join(f"{n} {r}" for r, n in counts.items())
            raise DataQualityError(
                f"{where}: skipped {skipped} of {seen} rows ({skipped / seen:.1%}: {detail}), "
                f"above data.max_corrupt_fraction={max_fraction}"
            )
        return {"rows_seen": seen, "rows_skipped": skipped, "rows_text_truncated": truncated,
                **{f"skipped[{r}]": n for r, n in counts.items()}}


def evaluate(engine, shard, cfg: ExperimentConfig, device: torch.device,
             filler: dict[str, torch.Tensor] | None = None,
             pool: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics over the whole evaluation set (``val_`` prefix) and plot artifacts. Shards may
    differ in size (no row dropped): ranks that run out keep running forward on a filler
    batch (their last batch, or ``filler``), discarded, until all are done, so ZeRO-3's
    collectives stay matched."""
    from ray_sticker.config import ConfigError

    model = engine.module
    heads = _label_heads(model)
    full_pool = pool is not None and cfg.data.eval_candidates == "pool"
    if full_pool and not (hasattr(model, "embed_stickers") and hasattr(model, "embed_queries")):
        raise ConfigError(f"data.eval_candidates=pool needs a two-tower model (embed_queries/embed_stickers); "
                          f"'{cfg.model.name}' scores candidates jointly: use eval_candidates=candidates")
    acc = Evaluation(heads, select=pool is not None,
                     pool_relevance=pool["intent"].cpu().numpy() if full_pool else None)
    skips = SkipCounter()
    it = iter(shard.iter_torch_batches(batch_size=cfg.train.batch_size, device=device, drop_last=False))
    if filler is None and cfg.deepspeed.zero_stage == 3:  # e.g. evaluation only: borrow another rank's batch
        first = next(it, None)
        filler = _batch_from_any_rank(first, pool, device)
        if first is not None:
            it = itertools.chain([first], it)
    last = filler
    engine.eval()
    with torch.no_grad():
        sticker_emb = embed_pool(model, pool, cfg.train.batch_size) if full_pool else None
        while True:
            batch = next(it, None)
            has = 1.0 if batch is not None else 0.0
            if _all_reduce_sum([has])[0] == 0:
                break
            if batch is None:
                if last is None:  # ZeRO 0-2: forward has no collectives, nothing to match
                    continue
                engine(last)
                if full_pool:
                    pool_scores(model, last, sticker_emb)
                continue
            batch, codes, empty = _keep_usable(batch)
            skips.add(codes)
            if pool is not None:
                batch = attach_candidates(batch, pool)
            last = batch
            out = engine(batch)
            scores = pool_scores(model, batch, sticker_emb) if full_pool else None
            if empty:
                continue
            acc.add(batch, out)
            if full_pool:
                acc.add_pool(batch, scores)
    engine.train()
    metrics, artifacts = compute_metrics(gather_arrays(acc.local_arrays()), heads)
    metrics = {f"val_{k}": v for k, v in metrics.items()}
    metrics.update({f"val_{k}": v for k, v in skips.check(cfg.data.max_corrupt_fraction, "validation").items()})
    return metrics, artifacts


def _batch_from_any_rank(batch: dict[str, torch.Tensor] | None, pool: dict[str, torch.Tensor] | None,
                         device: torch.device) -> dict[str, torch.Tensor] | None:
    """A usable batch from the first rank that has one (all ranks call this), on ``device``."""
    import torch.distributed as dist

    local = None
    if batch is not None:
        usable, _, _ = _keep_usable(dict(batch))
        local = {k: v.cpu() for k, v in usable.items()}
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    found = next((p for p in parts if p is not None), None)
    if found is None:
        raise DataQualityError("the evaluation split has no rows")
    found = {k: v.to(device) for k, v in found.items()}
    return attach_candidates(found, pool) if pool is not None else found


def _resume(engine, cfg: ExperimentConfig, run_dir: str | None, rank: int, world: int) -> dict[str, Any] | None:
    """The training state of the newest complete checkpoint, loaded into ``engine`` (see
    train/checkpoints.py), or None when the run starts from the beginning."""
    import ray.train

    from ray_sticker.config import ConfigError

    loaded: dict[str, Any] = {}

    def load(local: str) -> None:
        written = ckpt.world_size_of(local)
        if written != world and cfg.deepspeed.zero_stage > 0:
            raise ConfigError(f"checkpoint {local} holds ZeRO-{cfg.deepspeed.zero_stage} partitions of {written} "
                              f"ranks; resume it with train.num_workers={written}, not {world}")
        _, client = engine.load_checkpoint(local, tag="state")
        loaded.update(client[CLIENT_STATE_KEY])

    def agree(ok: bool) -> bool:
        return _all_reduce_sum([0.0 if ok else 1.0])[0] == 0

    name = ckpt.restore(ray.train.get_checkpoint(), run_dir, load, agree, rank)
    return loaded if name is not None else None


def _load_pool(loop_config: dict[str, Any], cfg: ExperimentConfig, device: torch.device):
    """The decoded sticker pool on ``device`` (selection), or None."""
    if cfg.task != "select":
        return None
    from ray_sticker.data.pipeline import load_sticker_pool

    arrays = load_sticker_pool(cfg.data.uri, loop_config["pool_spec"], loop_config["sticker_ids"],
                               cfg.data.max_corrupt_fraction)
    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0 returns ``{"history": [per-epoch metrics], "start_epoch": first epoch trained
    here}`` (epochs before it came from the checkpoint resumed); other ranks None."""
    import ray.train
    from ray.train import Checkpoint

    from ray_sticker.models.registry import build_from_config

    t_setup = time.perf_counter()
    _worker_logging()
    cfg = from_dict(loop_config["experiment"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    set_seed(cfg.train.seed)
    on_gpu = cfg.train.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda", ray.train.torch.get_device().index or 0) if on_gpu else torch.device("cpu")

    model = build_from_config(loop_config["model_config"])
    pool = _load_pool(loop_config, cfg, device)
    rows_per_worker = loop_config["train_rows"] // world  # the train split is split equally
    micro_batches = math.ceil(rows_per_worker / cfg.train.batch_size)
    steps_per_epoch = math.ceil(micro_batches / cfg.deepspeed.gradient_accumulation_steps)
    engine, precision = ds_engine.initialize(model, cfg, max(1, steps_per_epoch * cfg.train.epochs), on_gpu)
    local_params, total_params = ds_engine.partition_numel(engine)
    params_per_rank = [int(x) for x in gather_arrays({"n": np.array([local_params])})["n"]]
    if rank == 0:
        log.info("worker setup %.1fs: %s, %d parameters (%d on rank 0), ZeRO-%d, %s, %d workers",
                 time.perf_counter() - t_setup, cfg.model.name, total_params, local_params,
                 cfg.deepspeed.zero_stage, precision, world)

    start_epoch, global_step, history = 0, 0, []
    state = _resume(engine, cfg, loop_config.get("run_dir"), rank, world)
    if state is not None:
        start_epoch, global_step, history = state["epoch"] + 1, state["global_step"], state["history"]
        if rank == 0:
            log.info("resumed from epoch %d (global step %d)", state["epoch"], global_step)

    for epoch in range(start_epoch, cfg.train.epochs):
        # Randomness is a function of (seed, epoch, rank): a resumed epoch repeats exactly.
        set_seed(epoch_seed(cfg.train.seed, epoch, rank))
        augment = torch.Generator(device=device).manual_seed(epoch_seed(cfg.train.seed, epoch, rank))
        shard = ray.train.get_dataset_shard("train")
        skips = SkipCounter()
        t_epoch = time.perf_counter()
        wait_s = step_s = 0.0
        samples = 0
        loss_sum, loss_terms = 0.0, {}
        n_micro = 0
        batches = shard.iter_torch_batches(batch_size=cfg.train.batch_size, device=device, drop_last=False,
                                           prefetch_batches=2)
        last_batch = None
        for batch, waited in _timed(batches):
            wait_s += waited
            t0 = time.perf_counter()
            batch, codes, empty = _keep_usable(batch)
            skips.add(codes)
            if pool is not None:
                batch = attach_candidates(batch, pool)
            if cfg.data.augment and "pixel_values" in batch:
                batch["pixel_values"] = random_resized_crop_flip(batch["pixel_values"], augment)
            last_batch = batch
            out = engine(batch)
            loss = out.loss * 0.0 if empty else out.loss
            engine.backward(loss)
            engine.step()
            step_s += time.perf_counter() - t0
            n_micro += 1
            if not empty:
                samples += int(np.count_nonzero(codes.skip == SKIP_OK))
                loss_sum += out.loss.detach().item()
                for k, v in out.losses.items():
                    loss_terms[k] = loss_terms.get(k, 0.0) + v.detach().item()
            if engine.is_gradient_accumulation_boundary():
                global_step += 1
            if rank == 0 and n_micro % cfg.train.log_every_steps == 0:
                log.info("epoch %d step %d loss %.4f | %.1f samples/s/worker | data wait %.0f%%",
                         epoch, global_step, loss_sum / n_micro, samples / max(1e-9, wait_s + step_s),
                         100 * wait_s / max(1e-9, wait_s + step_s))
        epoch_s = time.perf_counter() - t_epoch
        totals = _all_reduce_sum([samples, n_micro, loss_sum])
        train_skips = skips.check(cfg.data.max_corrupt_fraction, f"train epoch {epoch}")

        metrics: dict[str, Any] = {
            "epoch": epoch,
            "epochs_completed": epoch + 1,  # a sweep's ASHA counts these (it survives resumption)
            "global_step": global_step,
            "train_loss": totals[2] / max(1.0, totals[1]),
            **{f"train_{k}": v / max(1, n_micro) for k, v in loss_terms.items()},
            "train_samples": int(totals[0]),
            "samples_per_s": totals[0] / max(1e-9, epoch_s),
            "data_wait_s": wait_s,
            "step_s": step_s,
            "data_wait_fraction": wait_s / max(1e-9, wait_s + step_s),
            "lr": engine.get_lr()[0],
            **{f"lr[{g['name']}]": g["lr"] for g in engine.optimizer.param_groups if "name" in g},
            **{f"train_{k}": v for k, v in train_skips.items()},
        }
        val, artifacts = evaluate(engine, ray.train.get_dataset_shard("validation"), cfg, device, last_batch, pool)
        metrics.update(val)
        metrics.update(epoch_s=time.perf_counter() - t_epoch, world_size=world, zero_stage=cfg.deepspeed.zero_stage,
                       precision=precision, params_total=total_params, params_per_rank=params_per_rank)
        history.append(metrics)
        if rank == 0:
            log.info("epoch %d: %s", epoch, _fmt(metrics))
            _plots(loop_config, artifacts, cfg)
        with tempfile.TemporaryDirectory() as tmp:
            client = {CLIENT_STATE_KEY: {"epoch": epoch, "global_step": global_step, "history": history}}
            engine.save_checkpoint(tmp, tag="state", client_state=client)
            if rank == 0:
                write_run_config(tmp, cfg, loop_config["model_config"], loop_config.get("label_maps", {}))
            ckpt.write_manifest(tmp, rank, world, epoch)
            # Ray keeps rank 0's metrics (gathered over ranks); the others only mark the epoch.
            report = metrics if rank == 0 else {"epoch": epoch}
            ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=ckpt.checkpoint_dir_name(epoch))

    if cfg.train.epochs == 0:  # evaluation only (e.g. a zero-shot baseline)
        val, artifacts = evaluate(engine, ray.train.get_dataset_shard("validation"), cfg, device, None, pool)
        metrics = {"epoch": -1, "global_step": 0, **val, "world_size": world, "zero_stage": cfg.deepspeed.zero_stage,
                   "precision": precision, "params_total": total_params, "params_per_rank": params_per_rank}
        history.append(metrics)
        if rank == 0:
            log.info("evaluation only: %s", _fmt(metrics))
            _plots(loop_config, artifacts, cfg)
        ray.train.report(metrics if rank == 0 else {"epoch": -1})

    if cfg.train.export and loop_config.get("export_uri"):
        from ray_sticker.train.export import export_model

        export_model(engine, cfg, loop_config["model_config"], loop_config["export_uri"],
                     loop_config.get("label_maps", {}), rank)
    return {"history": history, "start_epoch": start_epoch} if rank == 0 else None


def _plots(loop_config: dict[str, Any], artifacts: dict[str, Any], cfg: ExperimentConfig) -> None:
    from ray_sticker.train.evaluation import save_plots

    if loop_config.get("run_dir") and artifacts:
        save_plots(loop_config["run_dir"], artifacts, loop_config.get("label_maps", {}), cfg.name)


def _fmt(metrics: dict[str, Any]) -> str:
    keys = ("train_loss", "val_loss", "val_accuracy", "val_map", "val_pool_map", "samples_per_s", "data_wait_fraction")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
