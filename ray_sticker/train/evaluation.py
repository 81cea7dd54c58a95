"""Evaluation of a model on a dataset split: one :func:`evaluate` for the training loop (each
rank its shard, the metrics gathered) and ``ray-sticker evaluate`` (one process, the whole
split), with the same skip accounting and thresholds; then metrics and plots.

- classification heads: accuracy, weighted-F1, macro-F1 and a confusion matrix per head
  (rows with label -1 are left out of that head), and with ``data.eval_by`` the three per
  value of that column (``<metric>_<value>``, e.g. M2SA's ``macro_f1_de``);
- selection among candidates: MAP (mean 1/rank of the positive) and R{K}@1/2/5;
- selection over the whole sticker pool (two-tower models, ``data.eval_candidates: pool``):
  P@1/3/5 (a relevant sticker in the top N), precision@N, mAP and the interpolated PR curve,
  relevant meaning: the gold sticker, or a sticker of the intention annotated for the
  query's (conversation, sticker) pair (a sticker's own intention is its majority one).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import torch

from ray_sticker.config import ConfigError, ExperimentConfig
from ray_sticker.data.pipeline import DataQualityError, decode_texts
from ray_sticker.data.pool import StickerPool
from ray_sticker.train import metrics as M
from ray_sticker.train.batches import SkipCounter, attach_candidates, keep_usable


def evaluate(runner, split, cfg: ExperimentConfig, batch_size: int, device: torch.device | str = "cpu",
             pool: StickerPool | None = None, filler: dict[str, torch.Tensor] | None = None,
             prefix: str = "val_", where: str = "validation", frozen_embeddings: dict | None = None
             ) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of ``runner`` (a DeepSpeed engine or a plain model) over ``split`` (this rank's
    shard, or a whole Ray Dataset), gathered over ranks and named ``<prefix><metric>``, and the
    artifacts to plot. Rows the pipeline skipped are counted, and fail the evaluation above
    ``data.max_corrupt_fraction`` (the error names the split as ``where``). Shards may differ in size (no row dropped): inside a
    process group, ranks that run out keep running forward on a filler batch (their last
    batch, or ``filler``), discarded, until all are done, so ZeRO-3's collectives stay matched.
    ``frozen_embeddings``: a dict the caller keeps across evaluations, where the pool's
    embeddings are kept when the model's sticker tower is frozen (computed once per run)."""
    model = getattr(runner, "module", runner)
    heads = dict(getattr(model, "heads_spec", {}))
    full_pool = pool is not None and cfg.data.eval_candidates == "pool"
    if full_pool and not (hasattr(model, "embed_stickers") and hasattr(model, "embed_queries")):
        raise ConfigError(f"data.eval_candidates=pool needs a two-tower model (embed_queries/embed_stickers); "
                          f"'{cfg.model.name}' scores candidates jointly: use eval_candidates=candidates")
    acc = Evaluation(heads, select=pool is not None,
                     pool_relevance=pool.labels["intent"] if full_pool else None,
                     grouped=cfg.data.eval_by is not None)
    skips = SkipCounter()
    collective = M.distributed() is not None
    it = iter(split.iter_torch_batches(batch_size=batch_size, device=device, drop_last=False))
    if collective and filler is None and cfg.deepspeed.zero_stage == 3:  # e.g. evaluation only
        first = next(it, None)
        filler = _batch_from_any_rank(first, pool, device)
        if first is not None:
            it = itertools.chain([first], it)
    last = filler
    was_training = runner.training
    runner.eval()
    with torch.no_grad():
        sticker_emb = pool_embeddings(model, pool, batch_size, device, frozen_embeddings) if full_pool else None
        while True:
            batch = next(it, None)
            if not collective and batch is None:
                break
            if collective and M.all_reduce_sum([1.0 if batch is not None else 0.0])[0] == 0:
                break
            if batch is None:  # this rank is done, others are not: match their collectives
                if last is not None:  # None: no batch here under ZeRO 0-2, whose forward has none
                    runner(last)
                    if full_pool:
                        pool_scores(model, last, sticker_emb)
                continue
            batch, codes, empty = keep_usable(batch)
            skips.add(codes)
            if pool is not None:
                batch = attach_candidates(batch, pool)
            last = batch
            out = runner(batch)
            scores = pool_scores(model, batch, sticker_emb) if full_pool else None
            if empty:
                continue
            acc.add(batch, out)
            if full_pool:
                acc.add_pool(batch, scores)
    runner.train(was_training)
    metrics, artifacts = compute_metrics(M.gather_arrays(acc.local_arrays()), heads)
    metrics.update(skips.check(cfg.data.max_corrupt_fraction, where))
    return {f"{prefix}{k}": v for k, v in metrics.items()}, artifacts


def _batch_from_any_rank(batch: dict[str, torch.Tensor] | None, pool: StickerPool | None,
                         device: torch.device | str) -> dict[str, torch.Tensor] | None:
    """A usable batch from the first rank that has one (all ranks call this), on ``device``."""
    dist = M.distributed()
    local = None
    if batch is not None:
        usable, _, _ = keep_usable(dict(batch))
        local = {k: v.cpu() for k, v in usable.items()}
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    found = next((p for p in parts if p is not None), None)
    if found is None:
        raise DataQualityError("the evaluation split has no rows")
    found = {k: v.to(device) for k, v in found.items()}
    return attach_candidates(found, pool) if pool is not None else found


def pool_embeddings(model, pool: StickerPool, batch_size: int, device: torch.device | str,
                    frozen: dict | None) -> torch.Tensor:
    """:func:`embed_pool`, or its result kept in ``frozen`` when the model's sticker tower has no
    trainable parameter (``model.sticker_parameters()``): its embeddings cannot change."""
    if frozen is not None and "pool" in frozen:
        return frozen["pool"]
    emb = embed_pool(model, pool, batch_size, device)
    params = getattr(model, "sticker_parameters", None)
    if frozen is not None and params is not None and not any(p.requires_grad for p in params()):
        frozen["pool"] = emb
    return emb


def embed_pool(model, pool: StickerPool, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``model.embed_stickers`` over the whole pool, L2-normalised ``(N, D)`` fp32, on every rank.
    The pool is cut in chunks of ``batch_size`` stickers, decoded as they are embedded (memory
    bounded by a chunk); each rank embeds a contiguous share of the chunks and the shares are
    gathered in pool order. Every rank runs as many forwards (a rank short of chunks repeats
    one, discarded), so ZeRO-3's parameter gathers stay matched."""
    dist = M.distributed()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)
    chunks = list(pool.chunks(batch_size))
    per_rank = -(-len(chunks) // world)
    mine = chunks[rank * per_rank:(rank + 1) * per_rank]
    parts, width = [], 0
    for j in range(per_rank):
        rows = mine[j] if j < len(mine) else chunks[0]
        emb = model.embed_stickers(pool.take(torch.as_tensor(rows, device=device)))
        width = emb.shape[-1]
        if j < len(mine):
            parts.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
    local = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
    return torch.from_numpy(M.gather_arrays({"emb": local})["emb"]).to(device)


def pool_scores(model, batch: dict[str, torch.Tensor], sticker_emb: torch.Tensor) -> torch.Tensor:
    q = torch.nn.functional.normalize(model.embed_queries(batch).float(), dim=-1)
    return q @ sticker_emb.t()


class Evaluation:
    """Accumulates one rank's predictions; :meth:`local_arrays` go through ``gather_arrays``
    and :func:`compute_metrics` turns the gathered arrays into metrics."""

    def __init__(self, heads: dict[str, int], select: bool, pool_relevance: np.ndarray | None = None,
                 grouped: bool = False):
        self.heads = heads
        self.grouped = grouped  # data.eval_by: batches carry group_bytes
        self.select = select
        self.pool_relevance = pool_relevance  # (N,) relevance class of each pool sticker (intention)
        self.preds: dict[str, list[np.ndarray]] = {h: [] for h in heads}
        self.labels: dict[str, list[np.ndarray]] = {h: [] for h in heads}
        self.groups: dict[str, list[np.ndarray]] = {h: [] for h in heads}  # with data.eval_by
        self.scores: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.query_stats: list[dict[str, np.ndarray]] = []
        self.loss_sum = 0.0
        self.rows = 0
        self.unparsed = 0  # generative models: answers that could not be parsed

    def add(self, batch: dict[str, torch.Tensor], out) -> None:
        n = int(next(iter(batch.values())).shape[0])
        self.rows += n
        self.loss_sum += float(out.loss.item()) * n
        for h in self.heads:
            if h not in out.logits or f"label_{h}" not in batch:
                continue
            labels = batch[f"label_{h}"].cpu().numpy()
            keep = labels >= 0
            pred = out.predictions[h] if h in out.predictions else out.logits[h].argmax(-1)
            self.preds[h].append(pred.cpu().numpy()[keep])
            self.labels[h].append(labels[keep])
            if self.grouped:
                self.groups[h].append(np.array(decode_texts(batch["group_bytes"]), dtype=object)[keep])
        if out.unparsed is not None:
            self.unparsed += int(out.unparsed.sum().item())
        if self.select and out.scores is not None:
            self.scores.append(out.scores.float().cpu().numpy())
            self.targets.append(batch["target"].cpu().numpy())

    def add_pool(self, batch: dict[str, torch.Tensor], scores: torch.Tensor) -> None:
        """Scores of the queries against the whole pool (B, N). A query's intention is the one
        annotated for its (conversation, sticker) pair (``label_intent``), else its gold
        sticker's; relevant are the gold sticker and every pool sticker of that intention."""
        target = batch["target"]
        gold = batch["candidate_idx"].gather(1, target.unsqueeze(1)).squeeze(1).cpu().numpy()
        rel = self.pool_relevance
        query = rel[gold]
        if "label_intent" in batch:
            annotated = batch["label_intent"].cpu().numpy()
            query = np.where(annotated >= 0, annotated, query)
        relevant = (rel[None, :] == query[:, None]) & (query >= 0)[:, None]
        relevant[np.arange(len(gold)), gold] = True
        self.query_stats.append(M.retrieval_query_stats(scores.cpu().numpy(), relevant))

    def local_arrays(self) -> dict[str, np.ndarray]:
        cat = _concat
        out: dict[str, np.ndarray] = {"loss_sum": np.array([self.loss_sum]), "rows": np.array([self.rows]),
                                      "unparsed": np.array([self.unparsed])}
        for h in self.heads:
            out[f"pred_{h}"] = cat(self.preds[h], np.int64)
            out[f"label_{h}"] = cat(self.labels[h], np.int64)
            if self.grouped:
                out[f"group_{h}"] = cat(self.groups[h], object)
        if self.select:
            k = self.scores[0].shape[1] if self.scores else 0
            out["scores"] = np.concatenate(self.scores) if self.scores else np.zeros((0, k), np.float32)
            out["target"] = cat(self.targets, np.int64)
        if self.pool_relevance is not None:
            n = self.pool_relevance.size
            stats = self.query_stats or [M.retrieval_query_stats(np.zeros((0, n)), np.zeros((0, n), bool))]
            for key in stats[0]:
                out[f"pool_{key}"] = np.concatenate([s[key] for s in stats])
        return out


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def compute_metrics(full: dict[str, np.ndarray], heads: dict[str, int]) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of gathered arrays, and the artifacts to plot (confusion matrices, PR curve).
    Short names: ``accuracy``/``weighted_f1``/``macro_f1`` are the first head's, ``mean_*`` their
    mean over the heads (two heads or more); ``map`` the candidates' MAP (selection)."""
    metrics: dict[str, float] = {}
    artifacts: dict[str, Any] = {}
    rows = int(full["rows"].sum())
    metrics["examples"] = rows
    metrics["loss"] = float(full["loss_sum"].sum()) / max(1, rows)
    if full.get("unparsed") is not None and full["unparsed"].sum():  # generative models' unreadable answers
        metrics["unparsed"] = int(full["unparsed"].sum())
        metrics["unparsed_fraction"] = metrics["unparsed"] / max(1, rows)
    for h, n in heads.items():
        labels, preds = full[f"label_{h}"], full[f"pred_{h}"]
        if labels.size == 0:
            continue
        metrics.update({f"{h}_{k}": v for k, v in M.classification_metrics(labels, preds, n).items()})
        if f"group_{h}" in full:
            metrics.update(_per_group(h, full[f"group_{h}"], labels, preds, n))
        read = preds >= 0  # -1: a generative model's answer named no class (counted wrong above)
        artifacts[f"confusion_{h}"] = M.confusion_matrix(labels[read], preds[read], n)
    evaluated = [h for h in heads if f"{h}_accuracy" in metrics]
    if evaluated:  # the first head's figures under short names, per group too
        first = f"{evaluated[0]}_"
        metrics.update({k[len(first):]: v for k, v in list(metrics.items())
                        if k.startswith(first) and k[len(first):].startswith(GROUP_METRICS + ("examples_",))})
    for k in GROUP_METRICS:
        if len(evaluated) > 1:  # joint models (sentiment + intent): one figure to tune loss weights on
            metrics[f"mean_{k}"] = float(np.mean([metrics[f"{h}_{k}"] for h in evaluated]))
    if "scores" in full and full["scores"].size:
        metrics.update(M.ranking_metrics(full["scores"], full["target"]))
    pool = {k[5:]: v for k, v in full.items() if k.startswith("pool_")}
    if pool:
        metrics.update({f"pool_{k}": v for k, v in M.summarize_retrieval(pool).items()})
        artifacts["pr_curve"] = M.pr_curve(pool)
    return metrics, artifacts


GROUP_METRICS = ("accuracy", "weighted_f1", "macro_f1")


def group_name(value: str) -> str:
    """A group value as a metric-name suffix: letters, digits, '.', '-' and '_' kept, the rest
    '_'; the empty value (missing in the data) is 'missing'."""
    return re.sub(r"[^0-9A-Za-z_.-]", "_", value) if value else "missing"


def _per_group(head: str, groups: np.ndarray, labels: np.ndarray, preds: np.ndarray, n: int) -> dict[str, float]:
    """``<head>_<metric>_<group>`` and ``<head>_examples_<group>`` for each group value."""
    out: dict[str, float] = {}
    names: dict[str, str] = {}
    for value in sorted(set(groups.tolist())):
        name = group_name(value)
        if names.setdefault(name, value) != value:
            raise DataQualityError(f"data.eval_by: groups {names[name]!r} and {value!r} both name metrics '_{name}'")
        rows = groups == value
        scores = M.classification_metrics(labels[rows], preds[rows], n)
        out.update({f"{head}_{k}_{name}": scores[k] for k in GROUP_METRICS})
        out[f"{head}_examples_{name}"] = int(rows.sum())
    return out


def save_plots(run_dir: str, artifacts: dict[str, Any], label_maps: dict[str, list[str]], title: str
               ) -> dict[str, bytes]:
    """``<key>.png`` of each confusion matrix and the PR curve in ``run_dir``; returns the PNGs by key."""
    from ray_sticker import storage
    from ray_sticker.train import plots

    written = {}
    for key, value in artifacts.items():
        uri = storage.join(run_dir, f"{key}.png")
        if key.startswith("confusion_"):
            head = key[len("confusion_"):]
            names = label_maps.get(head) or [str(i) for i in range(value.shape[0])]
            written[key] = plots.save_confusion_matrix(value, names, uri, f"{title}: {head}")
        elif key == "pr_curve":
            written[key] = plots.save_pr_curve(value[0], value[1], uri,
                                               f"{title}: precision-recall over the sticker pool")
    return written
