"""Architecture configs as data: the JSON files shipped in ``ray_sticker/models/configs/`` and
those a user adds, listed, read and merged with overrides. Torch-free, so that validating an
experiment config never imports a model (the builders live in ``models/registry.py``)."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

_EXTRA_CONFIGS: dict[str, dict[str, Any]] = {}


def _shipped() -> dict[str, Any]:
    root = resources.files("ray_sticker.models") / "configs"
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".json")}


def list_models() -> list[str]:
    """Names of every architecture config (shipped and added)."""
    return sorted(set(_shipped()) | set(_EXTRA_CONFIGS))


def add_model_config(path: str | Path) -> str:
    """Register a user architecture config file; its file stem becomes its name."""
    path = Path(path)
    _EXTRA_CONFIGS[path.stem] = json.loads(path.read_text())
    return path.stem


def get_model_config(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    if name in _EXTRA_CONFIGS:
        cfg = copy.deepcopy(_EXTRA_CONFIGS[name])
    elif name in _shipped():
        cfg = json.loads(_shipped()[name].read_text())
    else:
        raise KeyError(f"unknown model '{name}'; registered: {', '.join(list_models())}")
    return merge(cfg, overrides or {})


# Mappings replaced whole rather than merged: they name a dataset's label maps, so a model
# moved to another dataset swaps {"sentiment": 3} for {"emotion": 7} instead of adding to it.
REPLACED_WHOLE = ("heads", "aux_labels")


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; dotted keys ("text.pretrained") address nested fields
    ("heads.intent" sets one head; "heads" given a mapping replaces all of them)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        node, parts = out, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict) and last not in REPLACED_WHOLE:
            node[last] = merge(node[last], value)
        else:
            node[last] = copy.deepcopy(value)
    return out
