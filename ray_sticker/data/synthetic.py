"""Synthetic canonical datasets with a planted cross-modal signal.

Classification (``task="classify"``): every example has a text cue ``t`` and an image cue
``v``, each drawn uniformly from {-1, 0, +1}; the sentiment label is ``sign(t + v)``
(neutral / positive / negative, the MSAIRS label order). Given only the text, the label is
still uniform over two or three classes, so the best text-only (or image-only) classifier
reaches 5/9 ≈ 55.6% accuracy, while a model that fuses both can reach 100%. The signal is
additive, so late fusion (M2SA's concatenation + linear) can learn it.

- text cue: one cue word among filler words (``POSITIVE``, ``NEGATIVE``, ``NEUTRAL`` lists);
- image cue: the colour of a large disk on a noisy background (warm yellow, violet, gray),
  chosen to survive crop and flip augmentation.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from ray_sticker import storage
from ray_sticker.data import schema

SENTIMENT_LABELS = ["neutral", "positive", "negative"]
POSITIVE = ["sunny", "lovely", "great", "happy", "bright", "joyful"]
NEGATIVE = ["gloomy", "awful", "sad", "broken", "bitter", "dreadful"]
NEUTRAL = ["ordinary", "usual", "plain", "regular", "typical", "average"]
FILLER = [
    "the", "day", "was", "with", "my", "friends", "today", "and", "then", "we", "went",
    "home", "coffee", "train", "city", "morning", "evening", "weather", "work", "food",
]
VOCABULARY = POSITIVE + NEGATIVE + NEUTRAL + FILLER
# Disk colours of the image cue: v = +1, 0, -1.
CUE_COLOURS = {1: (235, 200, 40), 0: (128, 128, 128), -1: (110, 40, 170)}
SPLITS = {"train": 0.75, "validation": 0.125, "test": 0.125}


def _text(rng: np.random.Generator, cue: int) -> str:
    words = list(rng.choice(FILLER, size=int(rng.integers(4, 9))))
    pool = {1: POSITIVE, 0: NEUTRAL, -1: NEGATIVE}[cue]
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(pool)))
    return " ".join(words)


def _image(rng: np.random.Generator, cue: int, size: int) -> bytes:
    base = rng.integers(20, 90, size=3)
    noise = rng.integers(-20, 21, size=(size, size, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.28, 0.4)
    cx, cy = rng.uniform(r, size - r, size=2)
    colour = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in CUE_COLOURS[cue])
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    # A small distractor shape of a random non-cue colour.
    s = size * 0.12
    x, y = rng.uniform(0, size - s, size=2)
    draw.rectangle([x, y, x + s, y + s], fill=tuple(int(c) for c in rng.integers(0, 80, size=3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def classify_rows(num_rows: int, seed: int = 0, image_size: int = 48,
                  corrupt_fraction: float = 0.0) -> pa.Table:
    """The classification examples table (all splits), canonical schema."""
    rng = np.random.default_rng(seed)
    names = list(SPLITS)
    bounds = np.cumsum([SPLITS[s] for s in names]) * num_rows
    rows: dict[str, list] = {k: [] for k in ("example_id", "split", "language", "context", "image", "sentiment")}
    for i in range(num_rows):
        t, v = int(rng.integers(-1, 2)), int(rng.integers(-1, 2))
        label = SENTIMENT_LABELS.index({1: "positive", 0: "neutral", -1: "negative"}[int(np.sign(t + v))])
        image = _image(rng, v, image_size)
        if corrupt_fraction and rng.random() < corrupt_fraction:
            image = b"not an image" + image[: int(rng.integers(0, 32))]
        rows["example_id"].append(f"syn-{i:06d}")
        rows["split"].append(names[int(np.searchsorted(bounds, i, side="right"))])
        rows["language"].append("en")
        rows["context"].append([_text(rng, t)])
        rows["image"].append(image)
        rows["sentiment"].append(label)
    return schema.conform(pa.table(rows), "examples")


def write_examples(table: pa.Table, uri: str, rows_per_shard: int = 1024) -> dict[str, int]:
    """Write an examples table as ``examples/<split>/part-NNNNN.parquet``; returns split counts."""
    counts: dict[str, int] = {}
    for split in sorted(set(table["split"].to_pylist())):
        part = table.filter(pa.compute.equal(table["split"], split))
        counts[split] = part.num_rows
        fs, base = storage.resolve(schema.split_uri(uri, split))
        fs.create_dir(base, recursive=True)
        shards = max(1, math.ceil(part.num_rows / rows_per_shard))
        for k in range(shards):
            chunk = part.slice(k * rows_per_shard, rows_per_shard)
            pq.write_table(chunk, f"{base}/part-{k:05d}.parquet", filesystem=fs)
    return counts


def make_classify_dataset(uri: str, num_rows: int = 2400, seed: int = 0, image_size: int = 48,
                          rows_per_shard: int = 512, corrupt_fraction: float = 0.0) -> schema.Manifest:
    """Write the synthetic classification dataset to ``uri`` (manifest last) and return its manifest."""
    table = classify_rows(num_rows, seed=seed, image_size=image_size, corrupt_fraction=corrupt_fraction)
    storage.ensure_bucket(uri)
    # Replace any dataset already there: unpublish it first, then drop its shards.
    storage.delete(storage.join(uri, schema.MANIFEST))
    storage.delete(storage.join(uri, "examples"))
    counts = write_examples(table, uri, rows_per_shard=rows_per_shard)
    manifest = schema.Manifest(
        name="synthetic-classify",
        task="classify",
        label_maps={"sentiment": SENTIMENT_LABELS},
        splits=counts,
        source_format="synthetic",
        source_version="1",
        extra={"seed": seed, "image_size": image_size, "signal": "sentiment = sign(text_cue + image_cue)",
               "corrupt_fraction": corrupt_fraction},
    )
    schema.write_manifest(uri, manifest)
    return manifest
