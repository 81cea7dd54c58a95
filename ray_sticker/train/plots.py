"""Evaluation plots written as PNG to any storage URI (local path or ``s3://``).

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``, not
``pyplot``), so no global backend or figure registry is touched and plotting works in
headless Ray workers; matplotlib is imported only when a plot is made.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from ray_sticker import storage


def png_bytes(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def save_confusion_matrix(cm: np.ndarray, label_names: Sequence[str], uri: str, title: str) -> bytes:
    """``cm[i, j]`` = examples of true class i predicted as j. Cells are coloured by the share
    of their row (recall per class) and labelled with the count."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    n = cm.shape[0]
    if cm.shape != (n, n) or len(label_names) != n:
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(label_names)} label names")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = max(4.0, 0.55 * n + 2.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(n), labels=list(label_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(label_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    png = png_bytes(fig)
    storage.write_bytes(uri, png)
    return png


def save_pr_curve(recall: np.ndarray, precision: np.ndarray, uri: str, title: str) -> bytes:
    """A precision-recall curve (e.g. :func:`ray_sticker.train.metrics.pr_curve`)."""
    from matplotlib.figure import Figure

    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape or recall.ndim != 1:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} must be equal 1-D arrays")
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot()
    ax.plot(recall, precision, marker="o", markersize=3)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    png = png_bytes(fig)
    storage.write_bytes(uri, png)
    return png
