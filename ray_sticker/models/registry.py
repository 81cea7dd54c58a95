"""One registry: architecture configs (JSON data) and the builders that turn them into models.

Every ``models/configs/*.json`` is a named architecture config; its ``"arch"`` key names a
builder registered with :func:`register`. ``build_model("m2sa-tiny")`` reads the config,
applies overrides and calls the builder. ``add_model_config(path)`` adds user configs.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # configs are read and validated without importing torch
    from torch import nn

_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}
_EXTRA_CONFIGS: dict[str, dict[str, Any]] = {}


def register(arch: str):
    """Decorator: ``@register("m2sa")`` on a builder ``f(config: dict) -> nn.Module``."""

    def wrap(fn):
        if arch in _BUILDERS:
            raise ValueError(f"architecture '{arch}' registered twice")
        _BUILDERS[arch] = fn
        return fn

    return wrap


def _shipped() -> dict[str, Any]:
    root = resources.files("ray_sticker.models") / "configs"
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".json")}


def list_models() -> list[str]:
    """Names of every architecture config (shipped and added)."""
    return sorted(set(_shipped()) | set(_EXTRA_CONFIGS))


def list_archs() -> list[str]:
    """Names of the registered builders (the ``"arch"`` values a config may name)."""
    _import_model_modules()
    return sorted(_BUILDERS)


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


def build_model(name: str, overrides: dict[str, Any] | None = None) -> nn.Module:
    cfg = get_model_config(name, overrides)
    return build_from_config(cfg)


def build_from_config(cfg: dict[str, Any]) -> nn.Module:
    _import_model_modules()
    arch = cfg.get("arch")
    if arch not in _BUILDERS:
        raise KeyError(f"model config names arch '{arch}'; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[arch](cfg)


_NOT_MODELS = {"registry", "encoders", "output", "layers", "losses", "params"}


def _import_model_modules() -> None:
    """Import every model module of the package once; importing one registers its builders."""
    import importlib
    import pkgutil

    import ray_sticker.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.ispkg and info.name not in _NOT_MODELS:
            importlib.import_module(f"ray_sticker.models.{info.name}")
