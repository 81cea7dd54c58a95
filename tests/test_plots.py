"""Evaluation plots: valid PNG files of a sensible size, written locally and to S3."""

import io

import numpy as np
import pytest
from PIL import Image

from ray_sticker import storage
from ray_sticker.train.plots import save_confusion_matrix, save_pr_curve

INTENTS = ["Complain", "Praise", "Agree", "Compromise", "Query", "Joke", "Oppose", "Inform", "Ask for help", "Greet",
           "Taunt", "Introduce", "Guess", "Leave", "Advise", "Flaunt", "Criticize", "Thank", "Comfort", "Apologize"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("labels", [["neutral", "positive", "negative"], INTENTS])
def test_confusion_matrix_png(tmp_path, labels):
    rng = np.random.default_rng(0)
    n = len(labels)
    cm = rng.integers(0, 30, size=(n, n))
    cm[0] = 0  # a class with no examples must not break the row shares
    uri = str(tmp_path / "plots" / "cm.png")  # parent directory created on write
    save_confusion_matrix(cm, labels, uri, "sentiment")
    width, height = _png_size(storage.read_bytes(uri))
    assert 250 <= width <= 2500 and 250 <= height <= 2500
    if n == 20:
        assert width > 900  # grows with the number of classes


def test_confusion_matrix_rejects_mismatched_labels(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        save_confusion_matrix(np.zeros((3, 3)), ["a", "b"], str(tmp_path / "cm.png"), "x")


def test_pr_curve_png(tmp_path):
    recall = np.linspace(0, 1, 11)
    precision = np.linspace(0.9, 0.2, 11)
    uri = str(tmp_path / "pr.png")
    save_pr_curve(recall, precision, uri, "Int-RA, StickerInt test")
    width, height = _png_size(storage.read_bytes(uri))
    assert 250 <= width <= 1200 and 200 <= height <= 1000
    with pytest.raises(ValueError, match="must be equal"):
        save_pr_curve(recall, precision[:5], uri, "x")


@pytest.mark.s3
def test_plots_to_s3(s3_env, s3_bucket):
    cm_uri, pr_uri = storage.join(s3_bucket, "run", "cm.png"), storage.join(s3_bucket, "run", "pr.png")
    save_confusion_matrix(np.eye(3, dtype=int) * 5, ["a", "b", "c"], cm_uri, "cm")
    save_pr_curve(np.linspace(0, 1, 11), np.full(11, 0.5), pr_uri, "pr")
    assert min(_png_size(storage.read_bytes(cm_uri))) > 200
    assert min(_png_size(storage.read_bytes(pr_uri))) > 200
