"""Best-epoch selection and early stopping (train/selection.py)."""

import pytest

from ray_sticker.config import ConfigError, load_config
from ray_sticker.train.selection import best_index, stalled


def _train(*overrides: str):
    return load_config("m2sa-tiny", list(overrides)).train


def test_best_epoch_by_metric_and_mode_first_of_ties():
    history = [{"epoch": e, "val_loss": v, "val_accuracy": a}
               for e, (v, a) in enumerate([(1.0, 0.5), (0.7, 0.6), (0.7, 0.8), (0.9, 0.8)])]
    assert best_index(history, _train()) == 1  # val_loss, min: the first of the two 0.7
    assert best_index(history, _train("train.select_metric=val_accuracy", "train.select_mode=max")) == 2


def test_stops_after_patience_epochs_without_a_better_one():
    losses = [1.0, 0.8, 0.85, 0.9, 0.95]
    history = [{"epoch": e, "val_loss": v} for e, v in enumerate(losses)]
    train = _train("train.early_stopping_patience=3")
    assert [stalled(history[:n], train) for n in range(1, 6)] == [False, False, False, False, True]
    assert not stalled(history, _train())  # no patience: never
    assert stalled(history[:3], _train("train.early_stopping_patience=1"))


def test_an_unknown_metric_names_what_the_epochs_report():
    with pytest.raises(ConfigError, match="train.select_metric=val_f1 is not a metric of epoch 0; the epochs "
                                          "report val_accuracy, val_loss"):
        best_index([{"epoch": 0, "val_loss": 1.0, "val_accuracy": 0.5, "train_loss": 2.0}],
                   _train("train.select_metric=val_f1"))
