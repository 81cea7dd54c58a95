"""MVSA-Single / MVSA-Multiple: {train,dev,test}.json + dataset_image/<id>.jpg, the split
files at the root or, as CLMLF's repository holds them, in fold directories (``10-flod-1/``)."""

from __future__ import annotations

from pathlib import Path

from tests.releases import Expected, jpeg, write, write_json

RECORDS = {
    "train.json": [
        {"id": "1", "text": "what a lovely day at the beach", "emotion_label": 0},
        {"id": "2", "text": "stuck in traffic again", "emotion_label": 2},
        {"id": "3", "text": "the bus leaves at nine", "emotion_label": 1},
        {"id": "4", "text": "best concert ever!!", "emotion_label": 0},
    ],
    "dev.json": [
        {"id": "5", "text": "rain all week", "emotion_label": 2},
        {"id": "6", "text": "new phone, who dis", "emotion_label": 1},
    ],
    "test.json": [
        {"id": "7", "text": "so proud of my team", "emotion_label": 0},
        {"id": "8", "text": "lost my keys", "emotion_label": 2},
    ],
}
COLOURS = {0: (230, 200, 40), 1: (128, 128, 128), 2: (30, 40, 160)}


def write_release(root: Path, folds: tuple[str, ...] = ()) -> Expected:
    """The split files at the root, or in each of ``folds`` (each fold's training file one
    record shorter than the previous one's, so folds can be told apart)."""
    for name, records in RECORDS.items():
        if not folds:
            write_json(root / name, records)
        for i, fold in enumerate(folds):
            write_json(root / fold / name, records[:len(records) - i] if name == "train.json" else records)
        for r in records:
            write(root / "dataset_image" / f"{r['id']}.jpg", jpeg(COLOURS[r["emotion_label"]]))
    return Expected(splits={"train": 4, "validation": 2, "test": 2},
                    label_maps={"sentiment": ["negative", "neutral", "positive"]},
                    missing_image="dataset_image/2.jpg", missing_skips={"examples": 1})


FIXTURES = {"mvsa-single": write_release, "mvsa-multiple": write_release}
