"""The house rules of the library, read from its source: imports only run downward through
the layers (config and storage, the console, data, models, train, then the commands), never
in a circle, no module imports another's private names, and no function runs past 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ray_sticker"
# Lower numbers are lower rooms; a module may import its own layer and the ones below.
LAYERS = {
    "config": 0, "configs": 0, "storage": 0, "console": 0, "architectures": 0,
    "runtime": 1,
    "data": 2,
    "models": 3, "mllm": 3,
    "train": 4,
    "evaluate": 5, "check": 5, "bench": 5, "sweep": 5, "enrich": 5,
    "cli": 6,
}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("ray_sticker", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _imports(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) of every ray_sticker import, lazy ones too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray_sticker"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((full if full in MODULES else node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("ray_sticker")]
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "ray_sticker" and _layer(m) is None] == []


def test_imports_run_downward_and_name_no_private_names():
    upward, private = [], []
    for module, tree in MODULES.items():
        for target, name, line in _imports(tree):
            if _layer(module) is not None and _layer(target) is not None and _layer(target) > _layer(module):
                upward.append(f"{module}:{line} -> {target}")
            if name.startswith("_") and target != module:
                private.append(f"{module}:{line} imports {target}.{name}")
    assert upward == [] and private == []


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in _imports(tree) if t in MODULES and t != m} for m, tree in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_functions_are_short():
    long = [f"{m}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for m, tree in MODULES.items() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
