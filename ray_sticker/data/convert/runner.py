"""Running a conversion: scan on the driver, images and shards in parallel on Ray Data, publish last.

1. The format's converter scans the release's index files (``base.py``); seeded splits are
   assigned here (:func:`assign_splits`).
2. The stickers table, then the examples table, are cut into shards of ``rows_per_shard``
   rows (one split per shard) and handed to Ray Data as blocks. Each block is one task: it
   fetches its images from the release (local or ``s3://``, 8 reads in flight), encodes
   ``.npy`` arrays as PNG, checks that every image decodes, writes its Parquet shard and
   returns what it skipped.
   Examples whose sticker (positive or candidate) was skipped, or is missing from the
   release's stickers, are skipped too.
3. The tables go to a fresh ``<out>/v-<time>-<id>/`` directory. If more than
   ``max_skipped_fraction`` of a table's rows were skipped, that directory is deleted and the
   conversion fails with the report; whatever dataset was published at ``out`` stays as it was.
4. Otherwise ``report.json`` is written, then the manifest (naming the new directory) replaces
   the old one in one write, and only then are older versions deleted: a reader sees the old
   dataset or the new one, never a half-written one.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_sticker import storage
from ray_sticker.data import schema
from ray_sticker.data.convert.base import ConvertOptions, Scan, SeededSplit, Source, get_converter
from ray_sticker.data.images import ImageDecodeError, decode_image, npy_to_png

REPORT = "report.json"
VERSION_PREFIX = "v-"
SKIPPED_STICKER = "uses a skipped sticker"
UNKNOWN_STICKER = "sticker not in the release"
_KEEP_SKIPPED = 50  # skipped rows listed by id in the report (all are counted)
_FETCH_THREADS = 8  # concurrent image reads per shard task


class ConversionError(schema.SchemaError):
    """The conversion skipped too much: nothing was published."""


@dataclass
class TableReport:
    read: int = 0
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    skipped_rows: list[dict[str, str]] = field(default_factory=list)  # the first few: id, reason, detail
    splits: dict[str, int] = field(default_factory=dict)  # written rows per split (examples)

    def skip(self, row_id: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.skipped_rows) < _KEEP_SKIPPED:
            self.skipped_rows.append({"id": row_id, "reason": reason, "detail": detail})

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass
class ConversionReport:
    format: str
    source: str
    out: str
    data_dir: str
    examples: TableReport
    stickers: TableReport | None
    fixups: dict[str, int]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{self.format}: {self.source} -> {self.out} ({self.seconds:.1f}s)"]
        for kind, t in (("examples", self.examples), ("stickers", self.stickers)):
            if t is None:
                continue
            why = ", ".join(f"{r}: {n}" for r, n in sorted(t.skipped.items())) or "none"
            splits = f" {t.splits}" if t.splits else ""
            lines.append(f"  {kind}: read {t.read}, written {t.written}{splits}, skipped {t.skipped_total} ({why})")
        if self.fixups:
            lines.append("  corrected while reading: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.fixups.items())))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ splits


def assign_splits(rows: list[dict[str, Any]], split: SeededSplit, seed: int) -> None:
    """Give every row a split: groups (``split.group_by``, else single rows) in a seeded order,
    cut where the running row count crosses each fraction, so a group never straddles two."""
    fractions = {k: v for k, v in split.fractions.items() if v > 0}
    total = sum(fractions.values())
    if not fractions or abs(total - 1.0) > 1e-6:
        raise schema.SchemaError(f"split fractions must be positive and sum to 1, got {split.fractions}")
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, row in enumerate(rows):
        groups[str(row[split.group_by]) if split.group_by else str(row["example_id"])].append(i)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names]) * len(rows)
    seen = 0
    for k in order:
        members = groups[keys[k]]
        middle = seen + len(members) / 2
        name = names[min(int(np.searchsorted(bounds, middle, side="right")), len(names) - 1)]
        for i in members:
            rows[i]["split"] = name
        seen += len(members)


# ------------------------------------------------------------------------ the parallel pass


def _fetch_image(src: Source | None, image: bytes | None, ref: str | None) -> tuple[bytes | None, str, str]:
    """(bytes, skip reason, detail); reason "" when the image is usable or there is none."""
    if image is None and ref:
        try:
            image = src.read_bytes(ref)
        except FileNotFoundError:
            return None, "missing image", ref
        except OSError:
            if not src.is_dir(ref):
                raise
            return None, "missing image", f"{ref} (a directory)"
        if ref.lower().endswith(".npy"):
            try:
                image = npy_to_png(image)
            except ImageDecodeError as exc:
                return None, "corrupt image", f"{ref}: {exc}"
    if image is None:
        return None, "", ""
    try:
        decode_image(image)
    except ImageDecodeError as exc:
        return None, "corrupt image", f"{ref or 'inline'}: {exc}"
    return image, "", ""


def _write_block(block: pa.Table, kind: str, src_uri: str, out_uri: str, image_required: bool) -> pa.Table:
    """One shard: fetch + check images, write the usable rows, return one stats row per
    skipped row and one per written shard."""
    id_col = "sticker_id" if kind == "stickers" else "example_id"
    ids = block[id_col].to_pylist()
    images = block["image"].to_pylist() if "image" in block.column_names else [None] * len(ids)
    refs = block["image_ref"].to_pylist() if "image_ref" in block.column_names else [None] * len(ids)
    src = Source(src_uri) if any(refs) else None
    with ThreadPoolExecutor(_FETCH_THREADS) as threads:  # object-store reads are latency-bound
        fetched = list(threads.map(_fetch_image, [src] * len(ids), images, refs))
    keep, out_images, stats = [], [], collections.defaultdict(list)
    for i, row_id in enumerate(ids):
        image, reason, detail = fetched[i]
        if not reason and image is None and image_required:
            reason, detail = "missing image", "no image given"
        if reason:
            for k, v in (("id", row_id), ("reason", reason), ("detail", detail), ("rows", 1)):
                stats[k].append(v)
            continue
        keep.append(i)
        out_images.append(image)
    table = block.take(pa.array(keep, type=pa.int64()))
    table = table.drop_columns([c for c in ("image", "image_ref", "_shard") if c in table.column_names])
    table = table.append_column("image", pa.array(out_images, type=pa.binary()))
    table = schema.conform(table, kind)
    shard = block["_shard"][0].as_py()
    if table.num_rows:
        fs, path = storage.resolve(storage.join(out_uri, shard))
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=fs)
    for k, v in (("id", ""), ("reason", ""), ("detail", shard), ("rows", table.num_rows)):
        stats[k].append(v)
    return pa.table({k: stats[k] for k in ("id", "reason", "detail", "rows")},
                    schema=pa.schema([("id", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                                      ("rows", pa.int64())]))


def _shards(rows: list[dict[str, Any]], kind: str, rows_per_shard: int) -> list[pa.Table]:
    """Rows -> Arrow blocks of one split each, with one schema for all of them, each naming its shard."""
    if kind == "examples":
        by_split: dict[str, list[dict]] = collections.defaultdict(list)
        for r in rows:
            by_split[r["split"]].append(r)
        parts = [(f"examples/{s}", by_split[s]) for s in sorted(by_split)]
    else:
        parts = [("stickers", rows)]
    ordered = [r for _, part in parts for r in part]
    columns = dict.fromkeys(k for r in ordered for k in r)  # every key of every row, not the first row's
    arrays = {}
    for k in columns:  # one inferred type per column for every shard
        try:
            arrays[k] = pa.array([r.get(k) for r in ordered])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise schema.SchemaError(f"{kind} column '{k}' mixes value types: {exc}") from None
    table = pa.table(arrays)
    blocks, start = [], 0
    for prefix, part in parts:
        for k, first in enumerate(range(0, len(part), rows_per_shard)):
            n = min(rows_per_shard, len(part) - first)
            block = table.slice(start + first, n)
            blocks.append(block.append_column("_shard", pa.array([f"{prefix}/part-{k:05d}.parquet"] * n)))
        start += len(part)
    return blocks


def _write_blocks(blocks: list[pa.Table], in_process: bool, **kwargs: Any) -> list[pa.Table]:
    """:func:`_write_block` over every block: in parallel on Ray Data, or one after the other here."""
    if in_process:
        return [_write_block(block, **kwargs) for block in blocks]
    import ray
    import ray.data

    stats = ray.data.from_arrow(blocks).map_batches(
        _write_block, batch_size=None, batch_format="pyarrow", fn_kwargs=kwargs).to_arrow_refs()
    return ray.get(stats)


def _convert_table(rows: list[dict[str, Any]], kind: str, src_uri: str, out_uri: str, rows_per_shard: int,
                   image_required: bool, report: TableReport, in_process: bool = False) -> set[str]:
    """Write one table (in parallel unless ``in_process``); fills ``report``; returns the ids of the rows skipped."""
    report.read += len(rows)
    if not rows:
        return set()
    blocks = _shards(rows, kind, rows_per_shard)
    stats = _write_blocks(blocks, in_process, kind=kind, src_uri=src_uri, out_uri=out_uri,
                          image_required=image_required)
    table = pa.concat_tables(stats).to_pylist()
    skipped = set()
    for s in table:
        if s["reason"]:
            report.skip(s["id"], s["reason"], s["detail"])
            skipped.add(s["id"])
        else:
            report.written += s["rows"]
            if kind == "examples":
                split = s["detail"].split("/")[1]
                report.splits[split] = report.splits.get(split, 0) + s["rows"]
    report.skipped_rows.sort(key=lambda r: r["id"])
    return skipped


def _drop_examples_of(examples: list[dict[str, Any]], lost: set[str], known: set[str],
                      report: TableReport) -> list[dict]:
    """Examples whose positive or candidate sticker was skipped, or is not in the release's
    stickers at all, cannot be used: skip them too."""
    kept = []
    for ex in examples:
        used = [s for s in [ex.get("sticker_id")] + list(ex.get("candidate_ids") or []) if s is not None]
        gone = [s for s in used if s in lost]
        unknown = [s for s in used if s not in known]
        if gone or unknown:
            report.read += 1
            reason = SKIPPED_STICKER if gone else UNKNOWN_STICKER
            report.skip(ex["example_id"], reason, ", ".join((gone or unknown)[:3]))
        else:
            kept.append(ex)
    return kept


def _check_scan(scan: Scan, fmt: str) -> None:
    for kind, rows, key in (("examples", scan.examples, "example_id"), ("stickers", scan.stickers, "sticker_id")):
        counts = collections.Counter(r[key] for r in rows)
        dupes = sorted(k for k, n in counts.items() if n > 1)
        if dupes:
            raise schema.SchemaError(f"{fmt}: {kind} repeat {key}s {dupes[:5]}")
    if not scan.examples:
        raise schema.SchemaError(f"{fmt}: the release holds no examples")
    unsplit = sum(1 for r in scan.examples if not r.get("split"))
    if unsplit and scan.seeded_split is None:
        raise schema.SchemaError(f"{fmt}: {unsplit} examples have no split and the converter gives no seeded split")


def _check_published(out: str, report: ConversionReport, max_skipped_fraction: float) -> None:
    for kind, t in (("examples", report.examples), ("stickers", report.stickers)):
        if t is None or t.read == 0:
            continue
        if t.skipped_total / t.read > max_skipped_fraction:
            first = "; ".join(f"{r['id']}: {r['reason']} ({r['detail']})" for r in t.skipped_rows[:5])
            raise ConversionError(
                f"{report.format}: {t.skipped_total} of {t.read} {kind} rows skipped "
                f"({t.skipped_total / t.read:.1%} > max_skipped_fraction {max_skipped_fraction:.1%}); "
                f"nothing was published at {out}. Skipped: {t.skipped}. First: {first}")
    if report.examples.written == 0:
        raise ConversionError(f"{report.format}: no example rows left to write; nothing was published at {out}")


def convert(fmt: str, src: str, out: str, options: ConvertOptions = ConvertOptions(),
            rows_per_shard: int = 512, max_skipped_fraction: float = 0.01,
            address: str | None = None, in_process: bool = False) -> tuple[schema.Manifest, ConversionReport]:
    """Convert the release of ``fmt`` at ``src`` into a canonical dataset at ``out`` (see module doc).

    ``in_process``: fetch the images and write the shards one block after the other in this
    process, without Ray (small releases, tests); the result is the same."""
    from ray_sticker.runtime import init_ray

    t0 = time.perf_counter()
    converter = get_converter(fmt)
    scan = converter.scan(Source(src), options)
    if scan.seeded_split is not None:
        split = scan.seeded_split
        if options.split_fractions:
            split = SeededSplit(options.split_fractions, split.group_by)
        assign_splits(scan.examples, split, options.seed)
    _check_scan(scan, fmt)

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    data_dir = f"{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    tables = storage.join(out, data_dir)
    report = ConversionReport(format=fmt, source=src, out=out, data_dir=data_dir, examples=TableReport(),
                              stickers=TableReport() if scan.stickers else None, fixups=dict(scan.fixups))
    for row_id, reason, detail in scan.skipped:  # rows the converter read but did not keep
        report.examples.read += 1
        report.examples.skip(row_id, reason, detail)
    storage.ensure_bucket(out)
    if not in_process:
        init_ray(address)
    try:
        examples, images = scan.examples, scan.image_root or src
        if scan.stickers:
            lost = _convert_table(scan.stickers, "stickers", images, tables, rows_per_shard, True, report.stickers,
                                  in_process)
            known = {r["sticker_id"] for r in scan.stickers}
            examples = _drop_examples_of(examples, lost, known, report.examples)
        _convert_table(examples, "examples", images, tables, rows_per_shard, False, report.examples, in_process)
        report.seconds = time.perf_counter() - t0
        _check_published(out, report, max_skipped_fraction)
    except BaseException:
        storage.delete(tables)
        raise

    manifest = schema.Manifest(
        name=scan.name, task=scan.task, label_maps=scan.label_maps,
        splits=dict(sorted(report.examples.splits.items())),
        stickers=report.stickers.written if report.stickers else 0,
        source_format=fmt, source_version=scan.version, data_dir=data_dir,
        extra={**scan.extra, "seed": options.seed,
               **({"num_candidates": options.num_candidates} if scan.task == "select" else {}),
               "skipped": {"examples": report.examples.skipped,
                           **({"stickers": report.stickers.skipped} if report.stickers else {})},
               "fixups": scan.fixups},
    )
    storage.write_text(storage.join(tables, REPORT), json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    schema.write_manifest(out, manifest)  # the publication: one write
    _remove_old_versions(out, keep=data_dir)
    return manifest, report


def _remove_old_versions(out: str, keep: str) -> None:
    """After publishing: older conversions and tables at the root (e.g. a synthetic dataset)."""
    for child in storage.listdir(out):
        name = child.rstrip("/").rsplit("/", 1)[-1]
        if (name.startswith(VERSION_PREFIX) and name != keep) or name in ("examples", "stickers"):
            storage.delete(child)


def read_report(uri: str) -> dict[str, Any]:
    """The validation report of the dataset published at ``uri``."""
    return storage.read_json(storage.join(schema.tables_uri(uri), REPORT))
