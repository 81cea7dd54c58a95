"""SER30K as its authors send it: Annotations/image-level/{train,val,test}.json + Images/<topic>/<file>."""

from __future__ import annotations

from pathlib import Path

from ray_sticker.data.convert.ser30k import EMOTIONS
from tests.releases import Expected, jpeg, write, write_json


def anno(topic: str, n: int, emotion: int, text: str) -> dict:
    return {"topic": topic, "file_name": f"sticker_{n}.jpg", "anno": emotion, "text": text}


ANNOTATIONS = {
    "train": [
        anno("01-panda-bear", 1, 1, "WHAT?!"),
        anno("01-panda-bear", 2, 2, "please no"),
        anno("01-panda-bear", 3, 3, "ok"),
        anno("pepe-7", 1, 4, "feels bad man"),
        anno("pepe-7", 2, 5, "yay"),
        anno("pepe-7", 3, 6, "ew"),
        anno("cute-ghost", 1, 7, "boo!"),
        anno("cute-ghost", 2, 5, ""),  # a sticker without text
    ],
    "val": [
        anno("cute-ghost", 3, 3, "hello"),
        anno("09-panda-bear", 1, 4, "sob"),
    ],
    "test": [
        anno("09-panda-bear", 2, 5, "love you"),
        anno("pepe-7", 4, 1, "grr"),
    ],
}
COLOURS = [(200, 30, 30), (90, 0, 120), (128, 128, 128), (30, 60, 200), (250, 210, 40), (60, 140, 20), (240, 120, 0)]


def write_release(root: Path) -> Expected:
    for split, records in ANNOTATIONS.items():
        write_json(root / "Annotations" / "image-level" / f"{split}.json", {"annotations": records})
        for r in records:
            write(root / "Images" / r["topic"] / r["file_name"], jpeg(COLOURS[r["anno"] - 1]))
    return Expected(splits={"train": 8, "validation": 2, "test": 2}, label_maps={"emotion": EMOTIONS},
                    missing_image="Images/pepe-7/sticker_2.jpg", missing_skips={"examples": 1})


FIXTURES = {"ser30k": write_release}
