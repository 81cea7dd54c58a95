"""Tiny hand-written fixtures in each public release's own on-disk format.

Each module here writes one or more releases with a few records and tiny images and
registers a writer per format in ``FIXTURES``. A writer returns :class:`Expected`: what
the conversion must produce, and one image whose deletion the tests use to check that a
missing image is skipped and counted.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image


@dataclass
class Expected:
    splits: dict[str, int]  # example rows written per split
    label_maps: dict[str, list[str]]
    stickers: int = 0  # rows of the stickers table
    missing_image: str = ""  # an image path (relative to the release root) that rows use
    missing_skips: dict[str, int] = field(default_factory=dict)  # rows skipped per table without it


Writer = Callable[[Path], Expected]


def png(colour: tuple[int, int, int], size: int = 24, mode: str = "RGB") -> bytes:
    """A tiny solid-colour image, encoded."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(colour: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    write(path, json.dumps(obj, ensure_ascii=False, indent=1))


def write_jsonl(path: Path, records: list[Any]) -> None:
    write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def all_fixtures() -> dict[str, Writer]:
    """Format name -> writer, over every fixture module."""
    import importlib
    import pkgutil

    out: dict[str, Writer] = {}
    for m in pkgutil.iter_modules(__path__):
        out.update(importlib.import_module(f"{__name__}.{m.name}").FIXTURES)
    return out
