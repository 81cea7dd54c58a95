import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix as sk_confusion, f1_score

from ray_sticker.train.metrics import classification_metrics, confusion_matrix


@pytest.mark.parametrize("seed", range(8))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 6))
    y_true = rng.integers(0, n_classes, size=int(rng.integers(5, 200)))
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.integers(0, n_classes, size=y_true.size))
    m = classification_metrics(y_true, y_pred, n_classes)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, n_classes),
                                  sk_confusion(y_true, y_pred, labels=list(range(n_classes))))


def test_hand_computed_values():
    # class 0: tp=1 fp=1 fn=1 -> F1 0.5; class 1: tp=2 fp=1 fn=1 -> F1 2/3; class 2 absent.
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5)


def test_empty_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics(np.array([]), np.array([]), 3)
