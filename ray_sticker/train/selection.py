"""Best-epoch selection and early stopping (``train.early_stopping_patience``): the best
epoch is the one with the lowest (``select_mode: min``) or highest ``train.select_metric``,
the first of equal ones; a run stops once that many epochs in a row did not beat it. Every
rank holds the same history (the metrics are gathered over ranks), so all decide alike."""

from __future__ import annotations

from typing import Any

from ray_sticker.config import ConfigError, TrainConfig


def best_index(history: list[dict[str, Any]], train: TrainConfig) -> int:
    """Index in ``history`` of the best epoch."""
    if not history:
        raise ValueError("no epoch to select from")
    key = train.select_metric
    missing = [row.get("epoch") for row in history if key not in row]
    if missing:
        names = sorted(k for k in history[-1] if k.startswith("val_"))
        raise ConfigError(f"train.select_metric={key} is not a metric of epoch {missing[0]}; the epochs report "
                          f"{', '.join(names) or 'no validation metric'}")
    values = [float(row[key]) for row in history]
    pick = min if train.select_mode == "min" else max
    return values.index(pick(values))


def stalled(history: list[dict[str, Any]], train: TrainConfig) -> bool:
    """True once ``early_stopping_patience`` epochs in a row came after the best one."""
    patience = train.early_stopping_patience
    return patience is not None and bool(history) and len(history) - 1 - best_index(history, train) >= patience
