"""Evaluation metrics over the whole evaluation set, and their gathering across ranks.

Classification: accuracy, weighted-F1 (MVSA, MSAIRS) and macro-F1 (Twitter-15/17, M2SA),
with scikit-learn's conventions: per-class F1 = 2PR/(P+R), 0 where undefined; macro
averages over the classes present in labels or predictions; weighted averages by
support (the number of true examples of each class).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = examples of true class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    denom = predicted + actual  # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + actual)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """accuracy, weighted_f1, macro_f1 (all in [0, 1]) of integer labels and predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        raise ValueError("no examples to evaluate")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    f1 = per_class_f1(cm)
    support = cm.sum(axis=1)
    present = (support + cm.sum(axis=0)) > 0
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "macro_f1": float(f1[present].mean()),
    }


def gather_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each named array over all ranks (every rank gets the result)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return arrays
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}
