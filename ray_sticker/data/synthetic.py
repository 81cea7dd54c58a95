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
- intent (4 classes, MSAIRS-style joint task): the dialogue act of the context (a question
  word or an assertion word) crossed with the sticker's text (thanks or apology words), so
  only a model that reads the sticker text with the context gets it right.

Selection (``task="select"``): see :func:`make_select_dataset`.
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
# Disk colours of the image cue: v = +1, 0, -1.
CUE_COLOURS = {1: (235, 200, 40), 0: (128, 128, 128), -1: (110, 40, 170)}
SPLITS = {"train": 0.75, "validation": 0.125, "test": 0.125}
INTENT_LABELS = ["thank", "apologize", "query", "ask for help"]  # (act, sticker text) = (0,0) (0,1) (1,0) (1,1)
ASSERTIONS = ["indeed", "certainly", "surely", "clearly"]
QUESTIONS = ["what", "why", "how", "where"]
THANKS = ["thanks", "cheers", "grateful"]
APOLOGIES = ["sorry", "oops", "apologies"]
VOCABULARY = POSITIVE + NEGATIVE + NEUTRAL + FILLER + ASSERTIONS + QUESTIONS + THANKS + APOLOGIES
LANGUAGES = ["en", "es", "de"]  # cycled through by the classification rows (metrics per language)
# Version of the generators: a cached dataset of an older version is regenerated.
VERSION = "3"


def with_cues(rng: np.random.Generator, cues: list[str], filler: list[str] = FILLER, lo: int = 4,
               hi: int = 9) -> str:
    words = list(rng.choice(filler, size=int(rng.integers(lo, hi))))
    for cue in cues:
        words.insert(int(rng.integers(0, len(words) + 1)), cue)
    return " ".join(words)


def _text(rng: np.random.Generator, cue: int, act: int) -> str:
    pool = {1: POSITIVE, 0: NEUTRAL, -1: NEGATIVE}[cue]
    return with_cues(rng, [str(rng.choice(pool)), str(rng.choice(QUESTIONS if act else ASSERTIONS))])


def _image(rng: np.random.Generator, cue: int, size: int) -> bytes:
    return cue_image(rng, CUE_COLOURS[cue], "disk", size)


def cue_image(rng: np.random.Generator, colour: tuple[int, int, int], shape: str, size: int) -> bytes:
    """A large ``shape`` of (a jittered) ``colour`` on a noisy dark background, PNG bytes."""
    base = rng.integers(20, 90, size=3)
    noise = rng.integers(-20, 21, size=(size, size, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.28, 0.4)
    cx, cy = rng.uniform(r, size - r, size=2)
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in colour)
    if shape == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 2.5)))
    else:
        raise ValueError(f"unknown shape {shape!r}")
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
    rows: dict[str, list] = {k: [] for k in ("example_id", "split", "language", "context", "image", "sticker_text",
                                             "sentiment", "intent")}
    for i in range(num_rows):
        t, v = int(rng.integers(-1, 2)), int(rng.integers(-1, 2))
        act, apology = int(rng.integers(0, 2)), int(rng.integers(0, 2))
        label = SENTIMENT_LABELS.index({1: "positive", 0: "neutral", -1: "negative"}[int(np.sign(t + v))])
        image = _image(rng, v, image_size)
        if corrupt_fraction and rng.random() < corrupt_fraction:
            image = b"not an image" + image[: int(rng.integers(0, 32))]
        rows["example_id"].append(f"syn-{i:06d}")
        rows["split"].append(names[int(np.searchsorted(bounds, i, side="right"))])
        rows["language"].append(LANGUAGES[i % len(LANGUAGES)])
        rows["context"].append([_text(rng, t, act)])
        rows["image"].append(image)
        rows["sticker_text"].append(str(rng.choice(APOLOGIES if apology else THANKS)))
        rows["sentiment"].append(label)
        rows["intent"].append(2 * act + apology)
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
    schema.remove_dataset(uri)  # replace any dataset there: unpublished first, then deleted
    counts = write_examples(table, uri, rows_per_shard=rows_per_shard)
    manifest = schema.Manifest(
        name="synthetic-classify",
        task="classify",
        label_maps={"sentiment": SENTIMENT_LABELS, "intent": INTENT_LABELS},
        splits=counts,
        source_format="synthetic",
        source_version=VERSION,
        extra={"seed": seed, "image_size": image_size, "signal": "sentiment = sign(text_cue + image_cue); intent = (context act, sticker text)",
               "corrupt_fraction": corrupt_fraction},
    )
    schema.write_manifest(uri, manifest)
    return manifest

