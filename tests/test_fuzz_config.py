"""Seeded fuzz harness for experiment-config overrides.

The generator walks the whole ``ExperimentConfig`` schema (every section and field, read from
the pydantic models' ``model_fields``) and writes dotted overrides in six classes:

- ``valid``: values the field's type and constraints allow (they must validate and be kept);
- ``wrong_type``: a string for an int, a list for a bool, a dict for a float, a scalar for a
  section, ...;
- ``out_of_range``: negative, zero, boundary, huge, NaN and infinite numbers, unknown choices;
- ``unknown``: unknown keys at the top level and inside sections, typos of real field names,
  keys below a scalar field, odd characters in keys;
- ``conflict``: combinations the cross-field validators refuse (bf16/fp16 without
  ``train.use_gpu``, ``offload_param`` below ZeRO-3, ``offload_optimizer`` at ZeRO-0) and
  their workable neighbours;
- ``malformed``: overrides without ``=``, with an empty key, with stray dots, with a value
  that is not YAML (or is YAML PyYAML cannot build).

Each case is loaded with ``load_config`` over a few shipped configs (each file is parsed once
and reused; the overrides and the validation run every time). A case must either return a
config or raise ``ConfigError`` with a one-line message naming the offending field (its
dotted path, or the override text for a malformed override). An oracle built from the same
schema (constraints, choices) and from the cross-field rules says which of the two each case
must give; a valid value must also be the value the config holds. A sample of the refused
cases then goes through ``ray-sticker train``, which must exit 2 with one ``error:`` line,
no traceback and nothing started. Each run prints one count line per class.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import random
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

import ray_sticker.config as config_module
from ray_sticker.architectures import list_models
from ray_sticker.config import ConfigError, ExperimentConfig, apply_overrides, list_configs, load_config

CLASSES = ("valid", "wrong_type", "out_of_range", "unknown", "conflict", "malformed")
DEFAULT_CONFIGS = ("m2sa-tiny", "eigml-tiny", "mllm-qwen2-vl-lora-msairs")


# ---------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Leaf:
    """One field that holds a value (not a section)."""

    path: str
    kind: str  # bool | int | float | str | literal | dict
    default: Any = None
    optional: bool = False
    choices: tuple = ()
    lo: float | None = None
    lo_strict: bool = False
    hi: float | None = None
    hi_strict: bool = False

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


@dataclass
class Schema:
    leaves: list[Leaf]
    sections: dict[str, type[BaseModel]]  # "" is the top level

    def leaf(self, path: str) -> Leaf:
        return next(leaf for leaf in self.leaves if leaf.path == path)


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    if get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann):
        rest = [a for a in get_args(ann) if a is not type(None)]
        assert len(rest) == 1, ann
        return rest[0], True
    return ann, False


def _make_leaf(path: str, info: Any) -> Leaf:
    ann, optional = _unwrap_optional(info.annotation)
    bounds: dict[str, Any] = {}
    for meta in info.metadata:
        for attr in ("gt", "ge", "lt", "le"):
            if getattr(meta, attr, None) is not None:
                bounds[attr] = getattr(meta, attr)
    if get_origin(ann) is Literal:
        kind, choices = "literal", get_args(ann)
    elif get_origin(ann) is dict:
        kind, choices = "dict", ()
    elif ann in (bool, int, float, str):
        kind, choices = ann.__name__, ()
    else:
        raise AssertionError(f"the harness does not know the type of {path}: {ann}")
    default = info.default_factory() if info.default_factory else info.default
    lo = bounds.get("gt", bounds.get("ge"))
    hi = bounds.get("lt", bounds.get("le"))
    return Leaf(path, kind, default, optional, choices, lo, "gt" in bounds, hi, "lt" in bounds)


def walk(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> Schema:
    """Every leaf and section below ``model``, nested models included."""
    schema = Schema([], {prefix: model})
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            inner = walk(ann, path)
            schema.leaves += inner.leaves
            schema.sections.update(inner.sections)
        else:
            schema.leaves.append(_make_leaf(path, info))
    return schema


def inside(leaf: Leaf, number: float) -> bool:
    """Whether ``number`` is a value ``leaf`` accepts (finite, integral where needed, in bounds)."""
    if not math.isfinite(number):
        return False
    if leaf.kind == "bool":
        return number in (0, 1)
    if leaf.kind == "literal":
        return number in leaf.choices
    if leaf.kind == "int" and number != int(number):
        return False
    if leaf.lo is not None and (number < leaf.lo or (leaf.lo_strict and number == leaf.lo)):
        return False
    return leaf.hi is None or (number < leaf.hi or (not leaf.hi_strict and number == leaf.hi))


# ---------------------------------------------------------------------------- cases


@dataclass
class Case:
    cls: str
    overrides: tuple[str, ...]
    names: tuple[str, ...]  # a refusal must name one of these
    expect: str | None  # "ok", "refused", or None for either
    kept: dict[str, Any] = field(default_factory=dict)  # for "ok": path -> value the config holds

    def __str__(self) -> str:
        shown = [o if len(o) <= 120 else f"{o[:100]}...({len(o)} chars)" for o in self.overrides]
        return f"[{self.cls}] {shown!r}"


def to_yaml(value: Any) -> str:
    """``value`` as the one-line YAML text an override carries."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...")


def quoted(item: str) -> tuple[str, ...]:
    """The ways a message may quote an override's text."""
    return (f"'{item}'", repr(item))


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))


def _string(rng: random.Random) -> str:
    n = rng.randrange(16**6)
    return rng.choice([f"run-{n:06x}", f"/tmp/fuzz/ds-{n}", f"s3://bucket/{n}/ds", "${RAY_STICKER_HOME}/ds",
                       "yes", "null", "3", "with space: and colon", "données-é", "~/runs", ""])


def _valid_float(rng: random.Random, leaf: Leaf) -> float:
    lo = leaf.lo if leaf.lo is not None else 0.0
    if not leaf.lo_strict and rng.random() < 0.15:
        return float(lo)
    value = rng.uniform(lo, leaf.hi) if leaf.hi is not None else lo + 10 ** rng.uniform(-6, 3)
    value = float(f"{value:.4g}")
    return value if inside(leaf, value) else (lo + leaf.hi) / 2 if leaf.hi is not None else lo + 1.0


def _valid_int(rng: random.Random, leaf: Leaf) -> int:
    lo = 0 if leaf.lo is None else int(leaf.lo) + (1 if leaf.lo_strict else 0)
    hi = lo + rng.choice([1, 10, 1000, 10**6]) if leaf.hi is None else int(leaf.hi) - (1 if leaf.hi_strict else 0)
    return rng.choice([lo, rng.randint(lo, hi)])


def valid_value(rng: random.Random, leaf: Leaf) -> Any:
    if leaf.optional and rng.random() < 0.15:
        return None
    if leaf.kind == "bool":
        return rng.random() < 0.5
    if leaf.kind == "int":
        return _valid_int(rng, leaf)
    if leaf.kind == "float":
        return _valid_float(rng, leaf)
    if leaf.kind == "literal":
        return rng.choice(leaf.choices)
    if leaf.kind == "dict":
        return {_word(rng): rng.choice([0.2, 7, True, "gelu", [1, 2]])}
    return rng.choice(list_models()) if leaf.path == "model.name" else _string(rng)


def _bool_text(rng: random.Random, value: bool) -> str:
    return rng.choice(["true", "yes", "on", "True"] if value else ["false", "no", "off", "False"])


def valid_case(rng: random.Random, schema: Schema, leaf: Leaf) -> Case:
    if leaf.kind == "dict" and rng.random() < 0.5:
        path, value = f"{leaf.path}.{_word(rng)}", rng.choice([0.1, 3, "relu", False])
        return Case("valid", (f"{path}={to_yaml(value)}",), (leaf.path,), "ok", {path: value})
    value = valid_value(rng, leaf)
    text = _bool_text(rng, value) if isinstance(value, bool) else to_yaml(value)
    return Case("valid", (f"{leaf.path}={text}",), (leaf.path,), "ok", {leaf.path: value})


def valid_section_case(rng: random.Random, schema: Schema) -> Case:
    """A whole section given as a mapping (it replaces the section)."""
    section = rng.choice([s for s in schema.sections if s])
    leaves = [leaf for leaf in schema.leaves if leaf.parent == section]
    chosen = rng.sample(leaves, rng.randint(1, min(3, len(leaves))))
    values = {leaf.name: valid_value(rng, leaf) for leaf in chosen}
    kept = {f"{section}.{k}": v for k, v in values.items()}
    return Case("valid", (f"{section}={to_yaml(values)}",), (section, *kept), "ok", kept)


WRONG_VALUES: dict[str, list[Any]] = {
    "int": ["abc", "three", [1, 2], {"a": 1}, "1.5.2", ""],
    "float": ["abc", "one point five", [0.1], {"a": 1.0}, "1,5", ""],
    "bool": ["maybe", "abc", [True], {"a": True}, 2.5, ""],
    "str": [123, 4.5, True, ["a"], {"a": "b"}],
    "literal": [["x"], {"a": 1}],
    "dict": [5, [1, 2], "abc", True, {1: 2}],
}
SECTION_WRONG_VALUES: list[Any] = [5, [1], "abc", True, None]


def wrong_type_case(rng: random.Random, schema: Schema, leaf: Leaf) -> Case:
    options = list(WRONG_VALUES[leaf.kind])
    if leaf.kind == "literal":
        options += ["two", "3"] if isinstance(leaf.choices[0], int) else [7, True]
    if leaf.kind in ("str", "literal") and not leaf.optional:
        options.append(None)
    value = rng.choice(options)
    return Case("wrong_type", (f"{leaf.path}={to_yaml(value)}",), (leaf.path,), "refused")


def wrong_section_case(rng: random.Random, schema: Schema) -> Case:
    section = rng.choice([s for s in schema.sections if s])
    return Case("wrong_type", (f"{section}={to_yaml(rng.choice(SECTION_WRONG_VALUES))}",), (section,), "refused")


def _numbers(leaf: Leaf) -> list[float]:
    numbers: list[float] = [-1, 0, 1, 2.5, 10**30, -(10**30), math.nan, math.inf, -math.inf, -0.0, 1e300, 5e-324]
    for bound in (leaf.lo, leaf.hi):
        if bound is not None:
            numbers += [bound, bound - 1, bound + 1, bound - 1e-9, bound + 1e-9]
    if leaf.kind == "literal":
        numbers += [max(leaf.choices) + 1, min(leaf.choices) - 1, 3.0, 10**20]
    if leaf.kind in ("int", "bool", "literal"):
        numbers = [n for n in numbers if not (isinstance(n, float) and math.isfinite(n) and abs(n) > 2**53)]
    return numbers


def out_of_range_case(rng: random.Random, schema: Schema, leaf: Leaf) -> Case:
    if leaf.kind == "literal" and isinstance(leaf.choices[0], str):
        value = rng.choice([leaf.choices[0] + "x", leaf.choices[-1].upper(), " " + leaf.choices[0], "", "none"])
        expect = "ok" if value in leaf.choices else "refused"
        return Case("out_of_range", (f"{leaf.path}={to_yaml(value)}",), (leaf.path,), expect, {leaf.path: value})
    if rng.random() < 0.2:
        return beyond_case(rng, schema, leaf)
    number = rng.choice(_numbers(leaf))
    expect = "ok" if inside(leaf, number) else "refused"
    kept = {leaf.path: bool(number) if leaf.kind == "bool" else number}
    return Case("out_of_range", (f"{leaf.path}={to_yaml(number)}",), (leaf.path,), expect, kept)


BEYOND = [math.inf, "1e400", math.nan, -math.inf, "-1e400", "1" + "0" * 5000, "-1" + "0" * 5000]


def beyond_case(rng: random.Random, schema: Schema, leaf: Leaf) -> Case:
    """A number no field can hold: infinite, NaN, or more digits than Python converts."""
    value = rng.choice(BEYOND)
    text = value if isinstance(value, str) else to_yaml(value)
    return Case("out_of_range", (f"{leaf.path}={text}",), (leaf.path,), "refused")


def typo(rng: random.Random, name: str) -> str:
    i = rng.randrange(len(name))
    edits = [name[:i] + name[i + 1:], name[:i] + name[i] * 2 + name[i + 1:], name + "s", name.upper(),
             name.replace("_", "-"), name.replace("_", ""), name[:i] + name[i + 1:i + 2] + name[i:i + 1] + name[i + 2:]]
    return rng.choice([e for e in edits if e])


ODD_KEYS = ["ep och", "épochs", "ep\nochs", "it's", "tab\there", "UPPER", "x" * 300, "0", "__class__"]


def unknown_case(rng: random.Random, schema: Schema, leaf: Leaf) -> Case:
    how = rng.choice(["typo", "typo", "section_key", "odd", "below_scalar", "in_mapping", "top"])
    model = schema.sections[leaf.parent]
    if how == "below_scalar" and leaf.kind != "dict":
        item = f"{leaf.path}.{_word(rng)}=1"
        return Case("unknown", (item,), (leaf.path, *quoted(item)), "refused")
    if how == "top":
        key = rng.choice([typo(rng, leaf.path.partition(".")[0]), _word(rng)])
        parent, model = "", schema.sections[""]
    else:
        key = typo(rng, leaf.name) if how == "typo" else rng.choice(ODD_KEYS) if how == "odd" else _word(rng)
        parent = leaf.parent
    if key in model.model_fields:
        key += "_x"
    path = f"{parent}.{key}" if parent else key
    if how == "in_mapping" and parent:
        return Case("unknown", (f"{parent}={to_yaml({key: 3})}",), (path,), "refused")
    return Case("unknown", (f"{path}={to_yaml(rng.choice([3, 'x', True, None]))}",), (path,), "refused")


CONFLICT_FIELDS = ("deepspeed.zero_stage", "deepspeed.offload_param", "deepspeed.offload_optimizer",
                   "deepspeed.precision", "train.use_gpu")
RULES = [
    (("deepspeed.offload_param", "deepspeed.zero_stage"),
     lambda v: v["deepspeed.offload_param"] and v["deepspeed.zero_stage"] != 3),
    (("deepspeed.offload_optimizer", "deepspeed.zero_stage"),
     lambda v: v["deepspeed.offload_optimizer"] and v["deepspeed.zero_stage"] == 0),
    (("deepspeed.precision", "train.use_gpu"),
     lambda v: v["deepspeed.precision"] in ("bf16", "fp16") and not v["train.use_gpu"]),
]


def conflict_case(rng: random.Random, schema: Schema) -> Case:
    chosen = rng.sample(CONFLICT_FIELDS, rng.randint(1, len(CONFLICT_FIELDS)))
    values = {}
    for path in chosen:
        leaf = schema.leaf(path)
        values[path] = rng.random() < 0.6 if leaf.kind == "bool" else rng.choice(leaf.choices)
    if rng.random() < 0.25 and all(p.startswith("deepspeed.") for p in values):
        section = {p.partition(".")[2]: v for p, v in values.items()}
        return Case("conflict", (f"deepspeed={to_yaml(section)}",), ("deepspeed",), "ok", values)
    overrides = tuple(f"{p}={_bool_text(rng, v) if isinstance(v, bool) else to_yaml(v)}" for p, v in values.items())
    return Case("conflict", overrides, tuple(values), "ok", values)


NO_EQUALS = ["train.epochs", "train.epochs:3", "train.epochs 3", "", "x\ny", "train.lr≈0.1", "deepspeed"]
EMPTY_KEYS = ["=3", ".=3", "..=1", " =1", "= ", "...=x", "=", "\t=1"]
BAD_YAML = ["[unclosed", "{a: 1", "a: b: c", "'open", '"open', "!!int abc", "!!int", "!!float", "!!float :",
            "!!bool maybe", "!!timestamp 2020-13-45", "!!timestamp nope", "!!binary ???", "!!int 0x", "*nowhere",
            "@at", "`tick", "%directive", "- - x", "&anchor", "? complex", "a\tb: c"]
HEAVY_YAML = ["[" * 700 + "]" * 700, "{a: " * 400 + "1" + "}" * 400, "[" * 300 + "]" * 300]


def _stray_dots(rng: random.Random, key: str) -> str:
    parts = key.split(".")
    how = rng.choice(["double", "lead", "trail", "spaces"])
    if how == "double" and len(parts) > 1:
        return "..".join(parts)
    return {"lead": "." + key, "trail": key + ".", "spaces": f"  {key}  "}.get(how, key + ".")


def malformed_case(rng: random.Random, schema: Schema, leaf: Leaf) -> Case:
    how = rng.choice(["no_equals", "empty_key", "stray_dots", "bad_yaml", "bad_yaml"])
    if how in ("no_equals", "empty_key"):
        item = rng.choice(NO_EQUALS + [leaf.path] if how == "no_equals" else EMPTY_KEYS)
        return Case("malformed", (item,), quoted(item), "refused")
    if how == "stray_dots" and leaf.kind != "dict":
        base = valid_case(rng, schema, leaf)
        key, _, value = base.overrides[0].partition("=")
        return Case("malformed", (f"{_stray_dots(rng, key)}={value}",), base.names, "ok", base.kept)
    item = f"{leaf.path}={rng.choice(BAD_YAML)}"
    return Case("malformed", (item,), (leaf.path, *quoted(item)), None)


def heavy_case(rng: random.Random, schema: Schema) -> Case:
    """A value nested deeper than PyYAML can parse (slow: the long run only)."""
    leaf = rng.choice(schema.leaves)
    item = f"{leaf.path}={rng.choice(HEAVY_YAML)}"
    return Case("malformed", (item,), (leaf.path, *quoted(item)), None)


PER_LEAF = {"valid": valid_case, "wrong_type": wrong_type_case, "out_of_range": out_of_range_case,
            "unknown": unknown_case, "malformed": malformed_case}
PER_SCHEMA = {"valid": valid_section_case, "wrong_type": wrong_section_case, "conflict": conflict_case}
NUMERIC = ("int", "float", "bool", "literal")


def random_case(rng: random.Random, schema: Schema, cls: str, leaves: list[Leaf]) -> Case:
    if cls in PER_SCHEMA and (cls not in PER_LEAF or rng.random() < 0.2):
        return PER_SCHEMA[cls](rng, schema)
    return PER_LEAF[cls](rng, schema, rng.choice(leaves))


def generate(rng: random.Random, schema: Schema, extra: int, heavy: int = 0) -> list[Case]:
    """One case per class and applicable field (the whole schema), then ``extra`` random cases per
    class and ``heavy`` deeply nested values."""
    cases = []
    for cls in CLASSES:
        leaves = [leaf for leaf in schema.leaves if cls != "out_of_range" or leaf.kind in NUMERIC]
        if cls in PER_LEAF:
            cases += [PER_LEAF[cls](rng, schema, leaf) for leaf in leaves]
        if cls == "out_of_range":
            cases += [beyond_case(rng, schema, leaf) for leaf in leaves if leaf.kind in ("int", "float")]
        count = extra if cls in PER_LEAF else extra + len(CONFLICT_FIELDS) * 5
        cases += [random_case(rng, schema, cls, leaves) for _ in range(count)]
    return cases + [heavy_case(rng, schema) for _ in range(heavy)]


# ---------------------------------------------------------------------------- the oracle


def _merged_value(schema: Schema, data: dict, path: str) -> Any:
    section, _, name = path.rpartition(".")
    node = data.get(section, {}) if section else data
    if node is None:
        node = {}
    if not isinstance(node, dict):
        return None
    return node.get(name, schema.leaf(path).default)


def violated_rules(schema: Schema, base: dict, overrides: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The cross-field rules that the config ``base`` with ``overrides`` breaks."""
    try:
        data = apply_overrides(base, list(overrides))
    except ConfigError:
        return []
    values = {p: _merged_value(schema, data, p) for p in CONFLICT_FIELDS}
    if None in values.values():
        return []
    return [fields for fields, broken in RULES if broken(values)]


def names_field(msg: str, path: str) -> bool:
    return path in msg or repr(path)[1:-1] in msg


def names_rule(msg: str, fields: tuple[str, ...]) -> bool:
    def named(path: str) -> bool:
        section, _, name = path.rpartition(".")
        return names_field(msg, path) or (f"{section}:" in msg and name in msg)

    return all(named(p) for p in fields)


def lookup(cfg: ExperimentConfig, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def same(held: Any, value: Any) -> bool:
    if isinstance(held, bool) or isinstance(value, bool):
        return held is value
    if isinstance(held, float) and isinstance(value, int):
        return held == float(value)  # a float field rounds a big int
    return held == value


# ---------------------------------------------------------------------------- running


@dataclass
class Tally:
    counts: dict[str, Counter] = field(default_factory=lambda: {c: Counter() for c in CLASSES})
    failures: list[str] = field(default_factory=list)
    invalid: list[tuple[str, Case, str | None]] = field(default_factory=list)  # message of a clean refusal
    cli: Counter = field(default_factory=Counter)

    def lines(self, label: str) -> list[str]:
        out = []
        for cls, c in self.counts.items():
            out.append(f"{label} | {cls:<12} cases {c['cases']:>4}, tried {c['tried']:>5}, "
                       f"validated {c['validated']:>5}, refused cleanly {c['refused']:>5}, "
                       f"crashed {c['crashed']}, wrong outcome {c['wrong']}")
        out.append(f"{label} | {'cli':<12} tried {self.cli['tried']:>5}, exit 2 with one error line "
                   f"{self.cli['clean']:>5}, bad {self.cli['bad']}")
        return out


def _check_kept(cfg: ExperimentConfig, case: Case) -> str | None:
    for path, value in case.kept.items():
        held = lookup(cfg, path)
        if not same(held, value):
            return f"{path} holds {held!r}, the override gave {value!r}"
    if "data.uri" in case.kept and "data.synthetic_if_missing" not in case.kept and cfg.data.synthetic_if_missing:
        return "data.uri moved but data.synthetic_if_missing stayed true"
    return None


def _judge_refusal(msg: str, case: Case, rules) -> str | None:
    """What is wrong with a refusal; ``rules()`` gives the cross-field rules the case breaks."""
    if "\n" in msg or "\r" in msg:
        return f"multi-line message: {msg!r}"
    if not (any(names_field(msg, n) for n in case.names) or any(names_rule(msg, r) for r in rules())):
        return f"message names none of {case.names} {rules() or ''}: {msg!r}"
    return None


def outcome_of(name: str, case: Case) -> tuple[str, Any]:
    """("validated", config), ("refused", message) or ("crashed", what was raised)."""
    try:
        return "validated", load_config(name, list(case.overrides))
    except ConfigError as exc:
        return "refused", str(exc)
    except Exception as exc:  # noqa: BLE001 - every other exception is what the harness looks for
        return "crashed", f"{type(exc).__name__}: {str(exc)[:300]}"


def check(name: str, base: dict, case: Case, schema: Schema, tally: Tally) -> None:
    """Load one case; count its outcome and record what is wrong with it."""
    counts = tally.counts[case.cls]
    counts["tried"] += 1
    rules = violated_rules(schema, base, case.overrides) if case.expect == "ok" else None
    expect = "refused" if rules else case.expect
    outcome, result = outcome_of(name, case)
    problem = result if outcome == "crashed" else None
    if outcome == "refused":
        problem = _judge_refusal(result, case, lambda: rules or violated_rules(schema, base, case.overrides))
        outcome = "crashed" if problem else outcome
    counts[outcome] += 1
    if outcome != "validated":
        tally.invalid.append((name, case, result if outcome == "refused" else None))
    if problem is None and expect is not None and outcome != {"ok": "validated"}.get(expect, expect):
        problem = f"expected {expect}, got {outcome}" + (f": {result}" if outcome == "refused" else "")
        counts["wrong"] += 1
    elif problem is None and outcome == "validated" and expect == "ok":
        problem = _check_kept(result, case)
        counts["wrong"] += problem is not None
    if problem:
        tally.failures.append(f"config '{name}' {case}: {problem}")


# ---------------------------------------------------------------------------- through the CLI


def _forbidden(what: str):
    def call(*args, **kwargs):
        pytest.fail(f"{what} was called for a config that must be refused")

    return call


def run_cli(argv: list[str]) -> tuple[Any, str, str]:
    """(exit code or what escaped ``main``, stdout, stderr) of ``ray-sticker argv``."""
    from ray_sticker import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - it would reach the user as a traceback
            code = f"{type(exc).__name__} escaped main (a traceback)"
    return code, out.getvalue(), err.getvalue()


def cli_check(name: str, case: Case, message: str | None, tally: Tally) -> None:
    """``ray-sticker train`` with a refused case: exit 2, one ``error:`` line, nothing started."""
    tally.cli["tried"] += 1
    code, out, err = run_cli(["-q", "train", "--config", name, *case.overrides])
    lines = err.strip().splitlines()
    problems = []
    if code != 2:
        problems.append(f"exit code {code}")
    if len(lines) != 1 or not lines[0].startswith("error:"):
        problems.append(f"stderr {err!r}")
    elif message is not None and lines[0] != f"error: {message}":
        problems.append(f"stderr says {lines[0]!r}, load_config said {message!r}")
    if "Traceback" in out + err:
        problems.append("a traceback was printed")
    tally.cli["bad" if problems else "clean"] += 1
    if problems:
        tally.failures.append(f"cli, config '{name}' {case}: {'; '.join(problems)}")


# ---------------------------------------------------------------------------- the tests


@pytest.fixture
def harness(monkeypatch):
    """Each shipped file parsed once; training, runs and Ray fail the test if reached."""
    from ray_sticker.train import trainer

    parsed: dict[str, dict] = {}
    read = config_module._read_yaml

    def cached(name_or_path: str) -> dict:
        if name_or_path not in parsed:
            parsed[name_or_path] = read(name_or_path)
        return copy.deepcopy(parsed[name_or_path])

    monkeypatch.setattr(config_module, "_read_yaml", cached)
    for what in ("fit", "run_many", "init_ray"):
        monkeypatch.setattr(trainer, what, _forbidden(f"trainer.{what}"))
    monkeypatch.setenv("RAY_LOG_TO_DRIVER", "0")
    return cached


def fuzz(seed: int, configs: list[str], extra: int, cli_cases: int, read, tally: Tally, heavy: int = 0) -> None:
    rng = random.Random(seed)
    schema = walk()
    start = len(tally.invalid)
    bases = {name: read(name) for name in configs}
    for case in generate(rng, schema, extra, heavy):
        tally.counts[case.cls]["cases"] += 1
        for name in (configs if len(configs) <= 3 else rng.sample(configs, 3)):
            check(name, bases[name], case, schema, tally)
    invalid = [r for r in tally.invalid[start:] if not any(o.startswith("-") for o in r[1].overrides)]
    for name, case, message in rng.sample(invalid, min(cli_cases, len(invalid))):
        cli_check(name, case, message, tally)


def report(label: str, tally: Tally) -> None:
    for line in tally.lines(label):
        print(line)
    for cls, c in tally.counts.items():
        assert c["tried"] == c["validated"] + c["refused"] + c["crashed"], (cls, c)
        assert c["tried"] > 0, cls
    assert tally.cli["tried"] == tally.cli["clean"] + tally.cli["bad"] > 0
    assert not tally.failures, f"{len(tally.failures)} failures:\n" + "\n".join(tally.failures)
    assert all(c["crashed"] == 0 and c["wrong"] == 0 for c in tally.counts.values())


def test_schema_walk_reaches_every_section_and_field():
    schema = walk()
    assert set(schema.sections) == {"", "data", "model", "train", "deepspeed"}
    for section, model in schema.sections.items():
        nested = {n for n, f in model.model_fields.items() if f"{section}.{n}".lstrip(".") in schema.sections}
        assert {leaf.name for leaf in schema.leaves if leaf.parent == section} | nested == set(model.model_fields)
    assert schema.leaf("deepspeed.zero_stage").choices == (0, 1, 2, 3)
    assert schema.leaf("train.warmup_ratio").hi_strict and schema.leaf("model.text_lr").optional


def test_fuzz_overrides(harness):
    """Seed 0, every field in every class, three shipped configs, a sample through the CLI."""
    tally = Tally()
    fuzz(0, list(DEFAULT_CONFIGS), extra=8, cli_cases=20, read=harness, tally=tally)
    report("fuzz-config seed 0", tally)
    assert not tally.failures and tally.cli["bad"] == 0 and tally.cli["clean"] == 20


@pytest.mark.fuzz
def test_fuzz_overrides_long(harness):
    """Several seeds, thousands of cases, three of all the shipped configs per case."""
    tally = Tally()
    for seed in range(1, 6):
        fuzz(seed, list_configs(), extra=150, cli_cases=40, read=harness, tally=tally, heavy=4)
    report("fuzz-config seeds 1-5", tally)
    assert not tally.failures and tally.cli["bad"] == 0 and tally.cli["clean"] > 0


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs=!!int abc", "train.epochs: Input should be a valid integer"),
        ("train.use_gpu=!!bool maybe", "train.use_gpu: Input should be a valid boolean"),
        ("train.epochs=!!timestamp nope", "train.epochs: Input should be a valid integer"),
        ("train.epochs=!!float", "train.epochs: Input should be a valid integer"),
        ("train.seed=1" + "0" * 5000, "train.seed: "),
        ("train.epochs=" + "[" * 700 + "]" * 700, "train.epochs: Input should be a valid integer"),
        ("train.lr=.inf", "train.lr: Input should be a finite number (got inf)"),
        ("train.cpus_per_worker=1e400", "train.cpus_per_worker: Input should be a finite number"),
        ("deepspeed.gradient_clipping=.inf", "deepspeed.gradient_clipping: Input should be a finite number"),
        ("train.ep\nochs=3", r"unknown field 'train.ep\nochs'"),
        ("train={\"a\\nb\": 1}", r"unknown field 'train.a\nb'"),
        ("x\ny", r"override 'x\ny' must look like section.field=value"),
    ],
)
def test_cases_the_harness_found(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("m2sa-tiny", [override])
    msg = str(err.value)
    assert "\n" not in msg and expected in msg, msg


def test_a_tagged_scalar_pyyaml_cannot_build_is_one_cli_line(harness, capsys):
    from ray_sticker import cli

    assert cli.main(["-q", "train", "--config", "m2sa-tiny", "train.epochs=!!int abc"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: config 'm2sa-tiny': train.epochs: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.out + captured.err


def test_every_valid_seed_seeds_every_epoch():
    """``train.seed`` has no upper bound: the epoch seeds derived from it (beyond numpy's 32 bits
    from seed 4295 on) seed Python, numpy and torch alike."""
    from ray_sticker.train.augment import epoch_seed
    from ray_sticker.train.loop import set_seed

    import numpy as np
    import torch

    for seed in (0, 4295, 2**40):
        set_seed(epoch_seed(seed, epoch=3, rank=1))
        first = (np.random.rand(), torch.rand(1).item())
        set_seed(epoch_seed(seed, epoch=3, rank=1))
        assert (np.random.rand(), torch.rand(1).item()) == first, seed  # the same seed, the same draws
