"""One registry: architecture configs (JSON data, see ``ray_sticker/architectures.py``) and the
builders that turn them into models.

Every ``models/configs/*.json`` is a named architecture config; its ``"arch"`` key names a
builder registered with :func:`register`. ``build_model("m2sa-tiny")`` reads the config,
applies overrides and calls the builder. ``add_model_config(path)`` adds user configs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ray_sticker.architectures import (  # noqa: F401  (the registry's config side, re-exported)
    REPLACED_WHOLE,
    add_model_config,
    get_model_config,
    list_models,
    merge,
)

if TYPE_CHECKING:
    from torch import nn

_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register(arch: str):
    """Decorator: ``@register("m2sa")`` on a builder ``f(config: dict) -> nn.Module``."""

    def wrap(fn):
        if arch in _BUILDERS:
            raise ValueError(f"architecture '{arch}' registered twice")
        _BUILDERS[arch] = fn
        return fn

    return wrap


def list_archs() -> list[str]:
    """Names of the registered builders (the ``"arch"`` values a config may name)."""
    _import_model_modules()
    return sorted(_BUILDERS)


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
