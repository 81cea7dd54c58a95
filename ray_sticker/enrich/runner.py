"""Running an enrichment job: plan on the driver, annotate on a Ray Data actor pool, publish last.

1. **Plan** (no model, no Ray): the manifest, the annotator class's ``table`` / ``key`` /
   ``input_columns`` / ``output_schema``, the table's Parquet files (the chosen splits of
   ``examples``, or ``stickers``). Fails naming missing input columns, repeated keys, and
   output columns that already hold values (unless ``overwrite``).
2. **Resume**: rows annotated earlier live in ``<work_dir>/part-*.parquet`` (key, outputs,
   ``enrich_error``). Their keys are read first; a part that cannot be read (a torn write) is
   deleted. Only the other rows are annotated. ``run.json`` beside the parts records the
   annotator and options they were made with: a run with other settings is refused.
3. **Annotate**: ``read_parquet`` (input columns only) -> drop finished keys -> blocks of
   ``batch_size`` rows -> ``map_batches`` over a pool of 1 to ``concurrency`` actors (each holds
   one annotator instance, its model loaded once). The driver writes every output block as a part as soon
   as it arrives, atomically (local: temp file + rename; S3: one PUT), so an interrupted or
   killed run loses only the blocks in flight. ``max_rows`` stops after that many new rows.
4. **Publish**, once every row is done: the outputs are joined onto the table by key (file
   sharding and row order kept; a key found in several parts counts once), written with the
   untouched files into a fresh ``v-<time>-<id>/`` directory; one manifest write (new
   ``data_dir``, the annotator's label maps, ``extra["enrichment"][name]``) publishes it; then
   the old tables and the work directory are deleted. Readers see the old tables or the new
   ones, never a mix. Above ``max_error_fraction`` of rows with ``enrich_error`` nothing is
   published (the parts stay: a run with a higher threshold publishes them without
   annotating again); below it the failed rows are published as nulls and reported.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from ray_sticker import storage
from ray_sticker.config import ConfigError
from ray_sticker.data import schema
from ray_sticker.data.convert.runner import VERSION_PREFIX
from ray_sticker.data.pipeline import read_parquet
from ray_sticker.enrich.annotators import ERROR_COLUMN, annotator_class
from ray_sticker.enrich.spec import WORK_SUBDIR, EnrichSpec

log = logging.getLogger("ray_sticker.enrich")

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
RUN_FILE = "run.json"
_FIRST_ERRORS = 3  # rows named in messages and kept in the report
_PROGRESS_EVERY_S = 10.0
_READ_THREADS = 8
ACTOR_START_TIMEOUT_S = 1800  # for the first actor: node start-up (e.g. GPU nodes) and model load


class EnrichError(schema.SchemaError):
    """An enrichment that cannot publish (too many failed rows, a dataset changed meanwhile)."""


class AnnotatorSetupError(RuntimeError):
    """The annotator refused its options or could not load its model (raised in an actor)."""


def _setup_error(exc: BaseException) -> str | None:
    """The one-line reason of an actor that failed to construct its annotator, if that is what
    ``exc`` (Ray's error, which carries the actor's traceback as text) reports."""
    found = re.findall(rf"{AnnotatorSetupError.__name__}: (.+)", str(exc))
    return found[-1].strip() if found else None


@dataclass
class EnrichReport:
    name: str
    annotator: str
    dataset: str
    table: str
    total: int  # rows of the table to annotate
    annotated: int = 0  # this run
    reused: int = 0  # done by earlier runs (parts in the work directory)
    errors: int = 0  # rows with enrich_error among the done ones
    first_errors: list[dict[str, str]] = field(default_factory=list)  # key, reason
    seconds: float = 0.0
    rows_per_s: float = 0.0  # rows annotated by this run per second of annotation
    published: bool = False
    data_dir: str = ""  # the published tables (when published)
    work_dir: str = ""

    @property
    def remaining(self) -> int:
        return self.total - self.annotated - self.reused

    def summary(self) -> str:
        lines = [f"{self.name} ({self.annotator}) on {self.dataset} {self.table}: {self.total} rows; "
                 f"annotated {self.annotated} in this run ({self.rows_per_s:.1f} rows/s), "
                 f"reused {self.reused} from earlier runs, {self.errors} errors ({self.seconds:.1f}s)"]
        for e in self.first_errors:
            lines.append(f"  error: {e['key']}: {e['reason']}")
        if self.published:
            lines.append(f"published {self.dataset} (tables in {self.data_dir})")
        else:
            lines.append(f"not published: {self.remaining} rows left; annotated rows kept in {self.work_dir} "
                         "(run again without max_rows to finish)")
        return "\n".join(lines)


@dataclass
class Plan:
    spec: EnrichSpec  # resolved
    manifest: schema.Manifest
    annotator: type
    tables_uri: str  # where the published tables are
    files: list[str]  # the Parquet files to annotate, relative to tables_uri, in order
    keys: list[str]  # their keys, in order

    @property
    def key(self) -> str:
        return self.annotator.key

    @property
    def outputs(self) -> pa.Schema:
        return self.annotator.output_schema

    def part_schema(self) -> pa.Schema:
        return pa.schema([pa.field(self.key, pa.string()), *self.outputs, pa.field(ERROR_COLUMN, pa.string())])

    def run_info(self) -> dict[str, Any]:
        return {"annotator": self.spec.annotator, "table": self.annotator.table, "options": self.spec.options}


# -------------------------------------------------------------------------------- planning


def ensure_dataset(spec: EnrichSpec) -> None:
    """Write the synthetic selection dataset to ``spec.dataset`` when asked and missing (or
    stale), the way experiment configs do with ``data.synthetic_if_missing``."""
    if spec.synthetic_if_missing:
        from ray_sticker.config import TrainConfig
        from ray_sticker.data.embedded import ensure_synthetic

        # The experiment configs' default seed: a tiny experiment finds the same dataset there.
        ensure_synthetic(spec.dataset, "select", spec.synthetic_rows, seed=TrainConfig().seed)


def _table_dirs(spec: EnrichSpec, manifest: schema.Manifest, table: str, root: str) -> list[str]:
    if table == "stickers":
        if spec.splits:
            raise ConfigError(f"enrichment '{spec.name}': splits apply to the examples table; "
                              f"annotator {spec.annotator} annotates stickers")
        return [schema.stickers_uri(root)]
    splits = spec.splits or sorted(manifest.splits)
    unknown = [s for s in splits if s not in manifest.splits]
    if unknown:
        raise ConfigError(f"enrichment '{spec.name}': splits {', '.join(unknown)} not in dataset {spec.dataset} "
                          f"(it has {', '.join(sorted(manifest.splits))})")
    return [schema.split_uri(root, s) for s in splits]


def plan(spec: EnrichSpec) -> Plan:
    """Everything checked before a model loads or Ray starts (see module doc)."""
    spec = spec if spec.work_dir else spec.resolved()
    cls = annotator_class(spec.annotator)
    manifest = schema.read_manifest(spec.dataset)
    root = schema.tables_uri(spec.dataset)
    fs, base = storage.resolve(root)
    if cls.table == "stickers" and not manifest.stickers:
        raise schema.SchemaError(f"dataset {spec.dataset} has no stickers table; annotator {spec.annotator} "
                                 "annotates stickers")
    outputs = [f.name for f in cls.output_schema]
    files: list[str] = []
    datasets = []
    for where in _table_dirs(spec, manifest, cls.table, root):
        wfs, path = storage.resolve(where)
        try:
            ds = pads.dataset(path, filesystem=wfs, format="parquet")
        except FileNotFoundError:
            raise FileNotFoundError(f"dataset {spec.dataset}: no table at {where}") from None
        if not ds.files:
            raise schema.SchemaError(f"dataset {spec.dataset}: no Parquet files at {where}")
        schema.check_columns(ds.schema, list(cls.input_columns), f"dataset {spec.dataset} table {where} "
                                                                  f"(annotator {spec.annotator})")
        files += [f[len(base):].lstrip("/") for f in ds.files]
        datasets.append(ds)
    keys: list[str] = []
    filled: dict[str, int] = {}
    for ds in datasets:
        present = [c for c in outputs if c in ds.schema.names]
        table = ds.to_table(columns=[cls.key, *present])
        keys += [str(k) for k in table[cls.key].to_pylist()]
        for c in present:
            n = table.num_rows - table[c].null_count
            if n:
                filled[c] = filled.get(c, 0) + n
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    dupes = sorted(k for k, n in counts.items() if n > 1)
    if dupes:
        raise schema.SchemaError(f"dataset {spec.dataset} {cls.table}: {len(dupes)} {cls.key}s repeat, e.g. "
                                 f"{', '.join(dupes[:5])}; each row needs its own key")
    if filled and not spec.overwrite:
        raise schema.SchemaError(
            f"dataset {spec.dataset} {cls.table}: column(s) {', '.join(filled)} already hold values "
            f"({', '.join(f'{c}: {n} rows' for c, n in filled.items())}); set overwrite=true to replace them")
    for label, names in cls.label_maps.items():
        have = manifest.label_maps.get(label)
        if have is not None and list(have) != list(names) and not spec.overwrite:
            raise schema.SchemaError(
                f"dataset {spec.dataset}: label map '{label}' is {have}, annotator {spec.annotator} writes "
                f"{list(names)}; set overwrite=true to replace it")
    return Plan(spec, manifest, cls, root, files, keys)


# ------------------------------------------------------------------------------ the work dir


def _part_uris(work_dir: str) -> list[str]:
    """The finished parts; leftovers of interrupted local writes are removed."""
    out = []
    for uri in storage.listdir(work_dir):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(PART_PREFIX) and ".tmp-" in name:
            storage.delete(uri)
        elif name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX):
            out.append(uri)
    return out


def _read_part(uri: str, columns: list[str] | None) -> pa.Table | None:
    """A part's table; None when it vanished, or when it cannot be parsed (a torn write: deleted).
    Storage errors (unreachable endpoint, credentials) are raised, never taken for torn parts."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    try:
        return pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowException, ValueError, OSError) as exc:
        log.warning("deleting unreadable part %s (an interrupted write): %s", uri, exc)
        storage.delete(uri)
        return None


def read_parts(work_dir: str, plan: Plan, columns: list[str] | None = None) -> pa.Table:
    """Every readable part (``columns``, default all of the part schema), one row per key."""
    schema_ = plan.part_schema()
    columns = columns or schema_.names
    uris = _part_uris(work_dir)
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        tables = [t for t in pool.map(lambda u: _read_part(u, columns), uris) if t is not None]
    target = pa.schema([schema_.field(c) for c in columns])
    tables = [t.select(columns).cast(target) for t in tables]
    table = pa.concat_tables(tables) if tables else target.empty_table()
    return _dedupe(table, plan.key)


def _dedupe(table: pa.Table, key: str) -> pa.Table:
    """One row per key (the last written); a retried task can emit rows twice."""
    keys = table[key].to_pylist()
    last = {k: i for i, k in enumerate(keys)}
    if len(last) == len(keys):
        return table
    return table.take(pa.array(sorted(last.values()), type=pa.int64()))


def _check_run_info(plan: Plan, has_parts: bool) -> None:
    work_dir = plan.spec.work_dir
    uri = storage.join(work_dir, RUN_FILE)
    mine = plan.run_info()
    if has_parts and storage.exists(uri):
        theirs = storage.read_json(uri)
        diff = [k for k in mine if theirs.get(k) != mine[k]]
        if diff:
            changes = "; ".join(f"{k}: {theirs.get(k)!r} -> {mine[k]!r}" for k in diff)
            raise ConfigError(f"enrichment '{plan.spec.name}': {work_dir} holds rows annotated with other settings "
                              f"({changes}); restore them to resume, or delete {work_dir} to start over")
    elif not has_parts:
        storage.write_json(uri, mine)


def _write_part(work_dir: str, name: str, table: pa.Table) -> None:
    """One part, atomically: a local temp file renamed, or one S3 PUT of the whole file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(storage.join(work_dir, name), sink.getvalue().to_pybytes())


# ------------------------------------------------------------------------------- annotation


class AnnotatorActor:
    """One annotator instance per Ray Data actor; outputs checked against the contract and
    typed by the annotator's ``output_schema`` (so every part has the same schema)."""

    def __init__(self, annotator_cls: type, /, **options: Any):
        self.cls = annotator_cls
        self.schema = pa.schema([pa.field(annotator_cls.key, pa.string()), *annotator_cls.output_schema,
                                 pa.field(ERROR_COLUMN, pa.string())])
        try:
            self.annotator = annotator_cls(**options)
        except (TypeError, ValueError, OSError) as exc:  # bad options, a model that cannot load
            raise AnnotatorSetupError(" ".join(f"{type(exc).__name__}: {exc}".split())) from exc

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        n = len(batch[self.cls.key])
        out = self.annotator(batch)
        missing = [c for c in self.schema.names if c not in out]
        if missing:
            raise RuntimeError(f"annotator {self.cls.name} returned no {', '.join(missing)}")
        arrays = []
        for f in self.schema:
            values = out[f.name]
            if len(values) != n:
                raise RuntimeError(f"annotator {self.cls.name} returned {len(values)} values of {f.name} for {n} rows")
            try:
                arrays.append(pa.array(values, type=f.type, from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arrays.append(pa.array(list(values), type=f.type, from_pandas=True))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _drop_done(block: pa.Table, key: str, done: pa.Array) -> pa.Table:
    return block.filter(pc.invert(pc.is_in(block[key], value_set=done)))


def _dataset(plan: Plan, done: Iterable[str]):
    import ray.data

    spec, cls = plan.spec, plan.annotator
    fs, base = storage.resolve(plan.tables_uri)
    ds = read_parquet([f"{base}/{rel}" for rel in plan.files], fs)
    ds = ds.select_columns(list(cls.input_columns))
    done = sorted(done)
    if done:
        ds = ds.map_batches(_drop_done, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"key": plan.key, "done": pa.array(done, type=pa.string())})
    if spec.max_rows:
        ds = ds.limit(spec.max_rows)
    # Blocks of batch_size rows: each actor call's output then reaches the driver (and a part
    # file) on its own, instead of whole read blocks' worth of outputs at once.
    ds = ds.repartition(target_num_rows_per_block=spec.batch_size)
    # From one actor up to `concurrency`: Ray Data adds actors while there is work and room (an
    # autoscaling cluster adds nodes for them); a fixed pool larger than the cluster would wait forever.
    return ds.map_batches(
        AnnotatorActor, fn_constructor_args=(cls,), fn_constructor_kwargs=dict(spec.options),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=spec.concurrency), batch_size=spec.batch_size,
        batch_format="numpy", num_cpus=spec.num_cpus, **({"num_gpus": spec.num_gpus} if spec.num_gpus else {}))


def _check_resources(spec: EnrichSpec) -> None:
    """Say up front when the cluster, as it is now, cannot hold what the job asks for."""
    import ray

    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    if spec.num_gpus and gpus < spec.num_gpus:
        log.warning("%s: each actor needs %g GPU but the cluster has %g now: the job waits up to %ds for GPU nodes "
                    "(an autoscaling cluster adds them); num_gpus=0 runs on CPU", spec.name, spec.num_gpus, gpus,
                    ACTOR_START_TIMEOUT_S)
    elif spec.num_cpus and spec.num_cpus * spec.concurrency > cpus - 1:
        log.info("%s: the cluster has %g CPUs now: fewer than %d actors of %g CPUs fit beside reading; the pool "
                 "grows as nodes join", spec.name, cpus, spec.concurrency, spec.num_cpus)


def _annotate(plan: Plan, done: set[str], report: EnrichReport, address: str | None) -> None:
    from ray_sticker.runtime import init_ray

    spec = plan.spec
    todo = len(plan.keys) - len(done)
    if spec.max_rows:
        todo = min(todo, spec.max_rows)
    init_ray(address)
    _check_resources(spec)
    run_id = f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    log.info("%s: annotating %d of %d rows with %s (%d actors, batches of %d)", spec.name, todo, len(plan.keys),
             spec.annotator, spec.concurrency, spec.batch_size)
    t0 = last_log = time.perf_counter()
    first: tuple[float, int] | None = None  # when the first rows arrived (model loads excluded from the ETA)
    seq = 0
    try:
        from ray.data import DataContext

        context = DataContext.get_current().copy()
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S  # not forever when no node can hold an actor
        with DataContext.current(context):
            ds = _dataset(plan, done)
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if block.num_rows == 0:
                continue
            _write_part(spec.work_dir, f"{PART_PREFIX}{run_id}-{seq:06d}{PART_SUFFIX}", block)
            seq += 1
            report.annotated += block.num_rows
            report.errors += block.num_rows - block[ERROR_COLUMN].null_count
            now = time.perf_counter()
            if first is None:
                first = (now, report.annotated)
                last_log = now
                log.info("%s: first rows after %.0fs (actors started, models loaded)", spec.name, now - t0)
            if now - last_log >= _PROGRESS_EVERY_S or report.annotated >= todo:
                last_log = now
                steady = report.annotated > first[1] and now > first[0]
                rate = (report.annotated - first[1]) / (now - first[0]) if steady else report.annotated / (now - t0)
                eta = f"{(todo - report.annotated) / rate:.0f}s" if rate > 0 else "?"
                log.info("%s: %d / %d rows done (%.1f rows/s, ETA %s, %d errors)", spec.name,
                         report.reused + report.annotated, len(plan.keys), rate, eta, report.errors)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is an annotator setup failure
        reason = _setup_error(exc)
        if reason is None:
            raise
        raise ConfigError(f"enrichment '{spec.name}': annotator {spec.annotator} with options {spec.options} "
                          f"cannot start: {reason}") from None
    finally:
        report.rows_per_s = report.annotated / max(time.perf_counter() - t0, 1e-9)


# -------------------------------------------------------------------------------- publishing


def _files_under(uri: str) -> list[str]:
    """Every file below ``uri``, relative to it ([] when it does not exist)."""
    fs, path = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path):].lstrip("/") for i in infos if i.type == pafs.FileType.File)


def _untouched_files(plan: Plan) -> list[str]:
    """The published files that are copied as they are, relative to the tables' directory."""
    if plan.manifest.data_dir:
        candidates = _files_under(plan.tables_uri)
    else:  # tables at the dataset's root (e.g. a synthetic dataset): only the tables
        candidates = [f"{t}/{f}" for t in schema.TABLES for f in _files_under(storage.join(plan.tables_uri, t))]
    annotated = set(plan.files)
    return [f for f in candidates if f not in annotated]


def _enriched(table: pa.Table, plan: Plan, results: pa.Table, index: dict[str, int]) -> pa.Table:
    rows = pa.array([index[str(k)] for k in table[plan.key].to_pylist()], type=pa.int64())
    outputs = results.take(rows)
    for f in plan.outputs:
        column, out_field = outputs[f.name].cast(f.type), f.with_nullable(True)
        if f.name in table.column_names:
            table = table.set_column(table.column_names.index(f.name), out_field, column)
        else:
            table = table.append_column(out_field, column)
    return table


def _publish(plan: Plan, results: pa.Table, report: EnrichReport, seconds: float) -> str:
    spec, dataset = plan.spec, plan.spec.dataset
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    data_dir = f"{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    new_root = storage.join(dataset, data_dir)
    src_fs, src_base = storage.resolve(plan.tables_uri)
    dst_fs, dst_base = storage.resolve(new_root)
    local = not storage.is_s3(new_root)
    index = {str(k): i for i, k in enumerate(results[plan.key].to_pylist())}

    def enrich_file(rel: str) -> None:
        table = pq.read_table(f"{src_base}/{rel}", filesystem=src_fs)
        if local:
            dst_fs.create_dir(f"{dst_base}/{rel}".rsplit("/", 1)[0], recursive=True)
        pq.write_table(_enriched(table, plan, results, index), f"{dst_base}/{rel}", filesystem=dst_fs)

    def copy_file(rel: str) -> None:
        if local:
            dst_fs.create_dir(f"{dst_base}/{rel}".rsplit("/", 1)[0], recursive=True)
        dst_fs.copy_file(f"{src_base}/{rel}", f"{dst_base}/{rel}")  # S3: a server-side copy

    try:
        with ThreadPoolExecutor(_READ_THREADS) as pool:
            list(pool.map(enrich_file, plan.files))
            list(pool.map(copy_file, _untouched_files(plan)))
        current = schema.read_manifest(dataset)
        if current.data_dir != plan.manifest.data_dir:
            raise EnrichError(f"dataset {dataset} was republished while annotating (data_dir "
                              f"{plan.manifest.data_dir or '(root)'} -> {current.data_dir or '(root)'}); nothing "
                              f"was published, the annotated rows stay in {spec.work_dir}: run again to publish")
        enrichment = dict(current.extra.get("enrichment", {}))
        enrichment[spec.name] = {
            "annotator": spec.annotator, "options": spec.options, "table": plan.annotator.table,
            "splits": spec.splits, "rows": len(plan.keys), "errors": report.errors, "seconds": round(seconds, 3),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        manifest = dataclasses.replace(current, data_dir=data_dir,
                                       label_maps={**current.label_maps, **plan.annotator.label_maps},
                                       extra={**current.extra, "enrichment": enrichment})
        schema.write_manifest(dataset, manifest)  # the publication: one write
    except BaseException:
        storage.delete(new_root)
        raise
    if plan.manifest.data_dir:
        storage.delete(plan.tables_uri)
    else:
        for t in schema.TABLES:
            storage.delete(storage.join(dataset, t))
    storage.delete(spec.work_dir)
    parent = spec.work_dir.rstrip("/").rsplit("/", 1)[0]
    if parent == storage.join(dataset, WORK_SUBDIR) and not storage.listdir(parent):
        storage.delete(parent)  # the default work dirs' parent, when it is left empty
    return data_dir


def _error_rows(results: pa.Table, key: str, limit: int = _FIRST_ERRORS) -> list[dict[str, str]]:
    failed = results.filter(pc.is_valid(results[ERROR_COLUMN])).slice(0, limit)
    return [{"key": str(k), "reason": str(r)}
            for k, r in zip(failed[key].to_pylist(), failed[ERROR_COLUMN].to_pylist())]


# ------------------------------------------------------------------------------------ entry


def run_enrichment(spec: EnrichSpec, address: str | None = None) -> EnrichReport:
    """Plan, resume, annotate and publish one enrichment job (see module doc). Ctrl-C leaves
    the parts written so far: the same call resumes."""
    t0 = time.perf_counter()
    spec = spec.resolved()
    ensure_dataset(spec)
    p = plan(spec)
    report = EnrichReport(name=spec.name, annotator=spec.annotator, dataset=spec.dataset, table=p.annotator.table,
                          total=len(p.keys), work_dir=spec.work_dir)
    wanted = set(p.keys)
    earlier = read_parts(spec.work_dir, p, [p.key, ERROR_COLUMN])
    earlier = earlier.filter(pc.is_in(earlier[p.key], value_set=pa.array(sorted(wanted), type=pa.string())))
    done = set(earlier[p.key].to_pylist())
    _check_run_info(p, has_parts=bool(done))
    report.reused = len(done)
    report.errors = earlier.num_rows - earlier[ERROR_COLUMN].null_count
    if done:
        log.info("%s: %d of %d rows were annotated by earlier runs (%s)", spec.name, len(done), len(wanted),
                 spec.work_dir)
    if len(done) < len(wanted):
        _annotate(p, done, report, address)
    report.seconds = time.perf_counter() - t0
    if report.reused + report.annotated < report.total:
        return report

    results = read_parts(spec.work_dir, p)
    results = results.filter(pc.is_in(results[p.key], value_set=pa.array(sorted(wanted), type=pa.string())))
    missing = len(wanted) - results.num_rows
    if missing:  # parts vanished meanwhile (e.g. deleted by hand)
        raise EnrichError(f"enrichment '{spec.name}': {missing} rows are missing from {spec.work_dir}; run again")
    report.errors = results.num_rows - results[ERROR_COLUMN].null_count
    report.first_errors = _error_rows(results, p.key)
    fraction = report.errors / max(report.total, 1)
    if fraction > spec.max_error_fraction:
        first = "; ".join(f"{e['key']}: {e['reason']}" for e in report.first_errors)
        raise EnrichError(
            f"enrichment '{spec.name}': {report.errors} of {report.total} rows failed ({fraction:.1%} > "
            f"max_error_fraction {spec.max_error_fraction:.1%}); nothing was published, the annotated rows stay "
            f"in {spec.work_dir} (a run with a higher max_error_fraction publishes them). First: {first}")
    if report.errors:
        log.warning("%s: %d rows could not be annotated and are published as nulls, e.g. %s", spec.name,
                    report.errors, "; ".join(f"{e['key']}: {e['reason']}" for e in report.first_errors))
    report.data_dir = _publish(p, results, report, time.perf_counter() - t0)
    report.published = True
    report.seconds = time.perf_counter() - t0
    log.info("%s: published %s (tables in %s)", spec.name, spec.dataset, report.data_dir)
    return report
