"""Evaluation metrics over the whole evaluation set, and their gathering across ranks.

Classification: accuracy, weighted-F1 (MVSA, MSAIRS) and macro-F1 (Twitter-15/17, M2SA),
with scikit-learn's conventions: per-class F1 = 2PR/(P+R), 0 where undefined; macro
averages over the classes present in labels or predictions; weighted averages by
support (the number of true examples of each class).

Selection among candidates (EIGML): MAP = mean 1/rank of the positive and R{K}@k, with ties
counted against the positive. Retrieval from the whole sticker pool (Int-RA): per-query hit@n
(the official code's "P@N"), precision@n, average precision and 11-point interpolated
precision, computed on each rank's queries, gathered, then averaged.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = examples of true class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_f1(cm: np.ndarray, actual: np.ndarray | None = None) -> np.ndarray:
    """F1 per class from the confusion matrix; ``actual`` (true examples per class) defaults to
    its row sums and is larger when some predictions are outside every class."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = (cm.sum(axis=1) if actual is None else actual).astype(np.float64)
    denom = predicted + actual  # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + actual)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """accuracy, weighted_f1, macro_f1 (all in [0, 1]) of integer labels and predictions.
    A prediction outside ``0..num_classes-1`` (-1: a generative model's unreadable answer) is
    wrong: a false negative of its true class and a false positive of none."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        raise ValueError("no examples to evaluate")
    valid = (y_pred >= 0) & (y_pred < num_classes)
    cm = confusion_matrix(y_true[valid], y_pred[valid], num_classes)
    support = np.bincount(y_true, minlength=num_classes)
    f1 = per_class_f1(cm, support)
    present = (support + cm.sum(axis=0)) > 0
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "macro_f1": float(f1[present].mean()),
    }


def gather_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each named array over all ranks (every rank gets the result)."""
    dist = distributed()
    if dist is None or dist.get_world_size() == 1:
        return arrays
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    # Ranks without rows may hold (0, 0)-shaped arrays: leave them out of the concatenation.
    return {k: np.concatenate([p[k] for p in parts if p[k].size] or [arrays[k]]) for k in arrays}


def distributed():
    """``torch.distributed`` when a process group is up (inside Ray Train workers), else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def all_reduce_sum(values: list[float]) -> list[float]:
    """Each value summed over all ranks (itself outside a process group)."""
    import torch

    t = torch.tensor(values, dtype=torch.float64)
    dist = distributed()
    if dist is not None:
        dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------ selection among candidates


def ranking_metrics(scores: np.ndarray, target: np.ndarray, ks: tuple[int, ...] = (1, 2, 5)) -> dict[str, float]:
    """EIGML's response-selection metrics over ``Q`` queries with ``K`` candidates each.

    ``scores`` ``(Q, K)`` (higher is better), ``target`` ``(Q,)`` the positive's column.
    The positive's rank is the number of candidates scoring at least as high as it (itself
    included), so ties count against it and a constant scorer gets rank ``K``.
    ``map`` = mean of 1/rank; ``r{K}@k`` = share of queries with rank <= k (R10@1, R10@2, R10@5).
    """
    scores = np.asarray(scores, dtype=np.float64)
    target = np.asarray(target, dtype=np.int64)
    if scores.ndim != 2 or target.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (Q, K) and target (Q,); got {scores.shape} and {target.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    positive = np.take_along_axis(scores, target[:, None], axis=1)
    rank = (scores >= positive).sum(axis=1)
    out = {"map": float((1.0 / rank).mean())}
    out.update({f"r{scores.shape[1]}@{k}": float((rank <= k).mean()) for k in ks})
    return out


# ------------------------------------------------------------------ retrieval from the whole pool

RECALL_LEVELS = np.linspace(0.0, 1.0, 11)


def retrieval_query_stats(scores: np.ndarray, relevant: np.ndarray, ns: tuple[int, ...] = (1, 3, 5)
                          ) -> dict[str, np.ndarray]:
    """Per-query statistics of ranking a pool of ``N`` items for ``Q`` queries (Int-RA).

    ``scores`` ``(Q, N)`` (higher is better), ``relevant`` ``(Q, N)`` bool (Int-RA: the item's
    intention equals the gold sticker's). Every array returned has ``Q`` rows, so ranks compute
    them on their own queries and :func:`gather_arrays` concatenates them:

    - ``hit@n``: 1 if a relevant item is in the top ``n`` (Int-RA's "P@N"), else 0;
    - ``precision@n``: relevant items in the top ``n``, divided by ``n``;
    - ``ap``: average precision, as ``sklearn.metrics.average_precision_score`` computes it
      (tied scores form one threshold);
    - ``interp_precision`` ``(Q, 11)``: interpolated precision at recall 0, 0.1, ..., 1, the
      highest precision at any threshold whose recall is at least the level.

    For the top ``n``, ties are broken against relevant items, so a constant scorer does not
    look good. A query without any relevant item counts as a miss (0) in ``hit@n`` and
    ``precision@n``; its ``ap`` and ``interp_precision`` are NaN, and the summaries leave it out.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.ndim != 2 or relevant.shape != scores.shape:
        raise ValueError(f"scores and relevant must both be (Q, N); got {scores.shape} and {relevant.shape}")
    n_items = scores.shape[1]
    # Descending score; among equal scores, irrelevant items first.
    order = np.lexsort((relevant, -scores), axis=1)
    rel = np.take_along_axis(relevant, order, axis=1)
    ranked = np.take_along_axis(scores, order, axis=1)

    stats: dict[str, np.ndarray] = {}
    for n in ns:
        stats[f"hit@{n}"] = rel[:, :n].any(axis=1).astype(np.float64)
        stats[f"precision@{n}"] = rel[:, :n].sum(axis=1) / n

    # Thresholds: the last position of each run of equal scores (sklearn's precision_recall_curve).
    position = np.arange(n_items)
    is_end = np.ones_like(rel)
    is_end[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
    tp = np.cumsum(rel, axis=1)
    total = tp[:, -1:]
    precision = tp / (position + 1)
    # Each position's threshold: the nearest run end at or after it.
    end_of = np.minimum.accumulate(np.where(is_end, position, n_items)[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(precision, end_of, axis=1)
    has_relevant = total[:, 0] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (rel * precision_at_end).sum(axis=1) / total[:, 0]
    stats["ap"] = np.where(has_relevant, ap, np.nan)

    # Interpolated precision at recall level k/10: the best precision at thresholds from the
    # first one reaching it (recall >= k/10 <=> 10 tp >= k total; recall only grows with position).
    best_from = np.maximum.accumulate(np.where(is_end, precision, 0.0)[:, ::-1], axis=1)[:, ::-1]
    first = np.stack([(is_end & (10 * tp >= k * total)).argmax(axis=1) for k in range(len(RECALL_LEVELS))], axis=1)
    interp = np.take_along_axis(best_from, first, axis=1)
    stats["interp_precision"] = np.where(has_relevant[:, None], interp, np.nan)
    return stats


def summarize_retrieval(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over queries: ``p@n`` (hit rate) and ``precision@n`` over all queries, ``map`` over
    the queries that have a relevant item; ``queries`` and ``queries_without_relevant`` counts."""
    ap = stats["ap"]
    if ap.size == 0:
        raise ValueError("no examples to evaluate")
    valid = ~np.isnan(ap)
    out: dict[str, float] = {}
    for key in stats:
        if key.startswith("hit@"):
            out[f"p@{key[4:]}"] = float(stats[key].mean())
        elif key.startswith("precision@"):
            out[key] = float(stats[key].mean())
    out["map"] = float(ap[valid].mean()) if valid.any() else float("nan")
    out["queries"] = float(ap.size)
    out["queries_without_relevant"] = float((~valid).sum())
    return out


def pr_curve(stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The 11-point interpolated precision-recall curve: (recall levels, mean interpolated
    precision over the queries that have a relevant item)."""
    interp = stats["interp_precision"]
    valid = ~np.isnan(interp[:, 0])
    if not valid.any():
        raise ValueError("no query has a relevant item")
    return RECALL_LEVELS.copy(), interp[valid].mean(axis=0)
