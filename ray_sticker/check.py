"""``ray-sticker check URI``: what a canonical dataset (local or s3://) holds, read through the
code training reads it with, and what in it a run would refuse or skip.

- the manifest, and every table's shards from their footers (``data/shards.py``): rows per
  split against the manifest, shards that are not readable Parquet, missing or mistyped
  canonical columns (extra columns are listed, not faulted);
- every row: example ids repeated, labels outside the label maps, images that do not decode
  (by reason, through ``data/images.decode_image``), candidate sets and positives naming
  stickers the stickers table lacks;
- per experiment config (``--config``, default: the shipped configs of the dataset's task
  whose tokenizers are available offline): the rows training would skip, by reason, and the
  texts cut at the model's ``max_length``, from ``data/pipeline.preprocess_batch`` itself.

Exit code 0 when nothing was found, 1 when something was, 2 when there is no dataset.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

from ray_sticker import storage
from ray_sticker.data import schema, shards
from ray_sticker.data.images import ImageDecodeError, decode_image

BATCH_ROWS = 256


@dataclass
class CheckReport:
    uri: str
    tables: list[dict[str, Any]] = field(default_factory=list)  # one row per table / split
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)  # one row per config and split

    @property
    def clean(self) -> bool:
        return not self.problems


def _split_names(tables_root: str, manifest: schema.Manifest) -> list[str]:
    """The manifest's splits, then any other split directory on storage."""
    found = [u.rstrip("/").rsplit("/", 1)[-1] for u in storage.listdir(storage.join(tables_root, "examples"))]
    return list(manifest.splits) + [s for s in found if s not in manifest.splits]


def _scan_tables(uri: str, manifest: schema.Manifest, report: CheckReport) -> dict[str, shards.Table]:
    """Footers of every split and of the stickers table, against the manifest."""
    root = schema.tables_uri(uri)
    found: dict[str, shards.Table] = {}
    targets = [(f"examples/{s}", "examples", schema.split_uri(root, s), manifest.splits.get(s))
               for s in _split_names(root, manifest)]
    if manifest.task == "select" or storage.listdir(schema.stickers_uri(root)):
        targets.append(("stickers", "stickers", schema.stickers_uri(root), manifest.stickers))
    for name, kind, where, expected in targets:
        if expected is None:
            report.problems.append(f"{name}: on storage but not in the manifest")
        try:
            table, unreadable = shards.scan_all(where)
        except (FileNotFoundError, schema.SchemaError) as exc:
            report.problems.append(f"{name}: {exc}")
            report.tables.append({"table": name, "manifest": expected, "rows": None, "shards": None, "extra": ""})
            continue
        report.problems += [f"{name}: {exc}" for exc in unreadable]
        required = [f.name for f in schema.TABLES[kind] if not f.nullable] + (
            list(manifest.label_maps) if kind == "examples" else [])
        try:
            shards.check(table, kind, [c for c in required if c in schema.TABLES[kind].names or c in table.columns()],
                         None if unreadable else expected, name)  # readable shards are not the whole
        except schema.SchemaError as exc:
            report.problems.append(str(exc))
        extra = [c for c in table.columns() if c not in schema.TABLES[kind].names]
        report.tables.append({"table": name, "manifest": expected, "rows": table.rows, "shards": len(table.shards),
                              "extra": ", ".join(extra)})
        found[name] = table
    return found


class UnreadableShard(Exception):
    """A shard whose footer reads but whose data pages do not (damaged inside)."""


def _batches(table: shards.Table, columns: list[str]) -> Iterator[dict[str, list]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for shard in table.shards:
        fs, path = storage.resolve(shard.uri)
        try:
            with fs.open_input_file(path) as f:
                reader = pq.ParquetFile(f)
                present = [c for c in columns if c in reader.schema_arrow.names]
                for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=present):
                    rows = batch.to_pydict()
                    yield {c: rows.get(c, [None] * batch.num_rows) for c in columns}
        except (pa.ArrowException, OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnreadableShard(f"shard {shard.uri}: data does not read ({reason})") from None


def _image_reason(data: bytes | None) -> str | None:
    if data is None:
        return "no image"
    try:
        decode_image(data)
    except ImageDecodeError as exc:
        return str(exc).split(":")[0] if "pixel" not in str(exc) else "over the pixel cap"
    return None


@dataclass
class _RowCounts:
    images: collections.Counter = field(default_factory=collections.Counter)
    labels: collections.Counter = field(default_factory=collections.Counter)
    unknown_stickers: int = 0
    empty_texts: int = 0


def _check_rows(name: str, table: shards.Table, manifest: schema.Manifest, sticker_ids: set[str] | None,
                seen: set[str], report: CheckReport) -> None:
    counts, repeated = _RowCounts(), 0
    label_cols = list(manifest.label_maps)
    has_images = "image" in table.columns()
    for batch in _batches(table, ["example_id", "context", "image", "sticker_id", "candidate_ids", *label_cols]):
        for i, example_id in enumerate(batch["example_id"]):
            repeated += example_id in seen
            seen.add(example_id)
            if has_images:
                counts.images[_image_reason(batch["image"][i])] += 1
            for label in label_cols:
                value = batch[label][i]
                if value is not None and not 0 <= value < len(manifest.label_maps[label]):
                    counts.labels[label] += 1
            if not any((t or "").strip() for t in batch["context"][i] or []):
                counts.empty_texts += 1
            if sticker_ids is not None:
                named = [batch["sticker_id"][i], *(batch["candidate_ids"][i] or [])]
                counts.unknown_stickers += any(s is not None and s not in sticker_ids for s in named)
    _report_rows(name, counts, repeated, report)


def _report_rows(name: str, counts: _RowCounts, repeated: int, report: CheckReport) -> None:
    if repeated:
        report.problems.append(f"{name}: {repeated} example id(s) already seen in this or another split")
    for reason, n in sorted((r, n) for r, n in counts.images.items() if r not in (None, "no image")):
        report.problems.append(f"{name}: {n} image(s) do not decode: {reason}")
    if counts.images.get("no image"):
        report.notes.append(f"{name}: {counts.images['no image']} row(s) without an image")
    for label, n in sorted(counts.labels.items()):
        report.problems.append(f"{name}: {n} '{label}' label(s) outside the label map")
    if counts.unknown_stickers:
        report.problems.append(f"{name}: {counts.unknown_stickers} row(s) name stickers the stickers table lacks")
    if counts.empty_texts:
        report.notes.append(f"{name}: {counts.empty_texts} row(s) with an empty context")


def _sticker_ids(tables: dict[str, shards.Table], report: CheckReport) -> set[str] | None:
    if "stickers" not in tables:
        return None
    ids: list[str] = []
    reasons: collections.Counter = collections.Counter()
    try:
        for batch in _batches(tables["stickers"], ["sticker_id", "image"]):
            ids += batch["sticker_id"]
            reasons.update(_image_reason(d) for d in batch["image"])
    except UnreadableShard as exc:
        report.problems.append(f"stickers: {exc}")
    repeated = len(ids) - len(set(ids))
    if repeated:
        report.problems.append(f"stickers: {repeated} sticker id(s) repeated")
    for reason, n in sorted((r, n) for r, n in reasons.items() if r is not None):
        report.problems.append(f"stickers: {n} image(s) do not decode: {reason}")
    return set(ids)


def _offline_tokenizers(texts) -> bool:
    """Whether every tokenizer loads without a download (a default config is skipped otherwise)."""
    import transformers

    for t in texts:
        if t.raw or t.tokenizer.startswith("builtin:"):
            continue
        if storage.is_s3(t.tokenizer):
            return False
        try:
            transformers.AutoTokenizer.from_pretrained(t.tokenizer, local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached: not checked by default
            return False
    return True


def _check_config(name: str, uri: str, explicit: bool, tables: dict[str, shards.Table], report: CheckReport) -> None:
    """The rows ``name``'s training would skip, by reason, and the texts it would cut."""
    import numpy as np

    from ray_sticker.config import load_config
    from ray_sticker.data.pipeline import SKIP_REASONS, preprocess_batch
    from ray_sticker.train.inputs import check_inputs

    try:
        cfg = load_config(name, [f"data.uri={uri}"])
        inputs = check_inputs(cfg)
        if not explicit and not _offline_tokenizers(inputs.spec.texts):
            report.notes.append(f"config {name}: not checked (its tokenizer is not available offline; give --config)")
            return
    except Exception as exc:  # noqa: BLE001 - any reason it cannot read this dataset is the finding
        (report.problems if explicit else report.notes).append(f"config {name}: {str(exc).splitlines()[0]}")
        return
    for split in dict.fromkeys([cfg.data.train_split, cfg.data.eval_split]):
        skipped: collections.Counter = collections.Counter()
        rows = cut = 0
        try:
            for batch in _batches(tables[f"examples/{split}"], inputs.spec.columns()):
                out = preprocess_batch({k: np.array(v, dtype=object) for k, v in batch.items()}, inputs.spec)
                rows += len(out["skip"])
                cut += int((out["truncated"] > 0).sum())
                skipped.update(SKIP_REASONS[int(c)] for c in out["skip"] if c)
        except UnreadableShard as exc:
            report.problems.append(f"config {name}, split {split}: {exc}")
        report.models.append({"config": name, "split": split, "rows": rows, "skipped": sum(skipped.values()),
                              "reasons": ", ".join(f"{r} {n}" for r, n in sorted(skipped.items())), "texts cut": cut})
        for reason, n in sorted(skipped.items()):
            report.problems.append(f"config {name}, split {split}: {n} row(s) would be skipped: {reason}")


def default_configs(task: str) -> list[str]:
    from ray_sticker.config import ConfigError, list_configs, load_config

    names = []
    for name in list_configs():
        try:
            if load_config(name).task == task:
                names.append(name)
        except ConfigError:
            continue
    return names


def check_dataset(uri: str, configs: list[str] | None = None) -> CheckReport:
    """Check the dataset at ``uri`` (see module doc); raises FileNotFoundError without one."""
    report = CheckReport(uri)
    if not storage.exists(storage.join(uri, schema.MANIFEST)):
        schema.read_manifest(uri)  # raises, naming what would make one
    try:
        manifest = schema.read_manifest(uri)
    except schema.SchemaError as exc:
        report.problems.append(str(exc))
        return report
    tables = _scan_tables(uri, manifest, report)
    sticker_ids = _sticker_ids(tables, report)
    seen: set[str] = set()
    for name, table in tables.items():
        if name.startswith("examples/"):
            try:
                _check_rows(name, table, manifest, sticker_ids, seen, report)
            except UnreadableShard as exc:
                report.problems.append(f"{name}: {exc}")
    quiet = logging.getLogger("ray_sticker.data.pipeline")
    level, quiet.level = quiet.level, logging.ERROR  # skips are counted in the report, not logged row by row
    try:
        for name in configs or default_configs(manifest.task):
            _check_config(name, uri, bool(configs), tables, report)
    finally:
        quiet.level = level
    return report
