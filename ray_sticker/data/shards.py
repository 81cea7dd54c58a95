"""What a canonical table's Parquet shards hold, read from their footers only.

Before a run reads a split (or the stickers table), every shard's footer is read — a few
kilobytes per file, in parallel — and checked against the canonical schema
(``data/schema.py``) and the manifest: a shard that is not Parquet or was cut short, a shard
lacking a column the run reads or holding a canonical column of another type, and row
counts that disagree with the manifest are refused naming the shard, before any worker
starts. Extra columns are allowed (enrichment adds them); ``ray-sticker check`` lists them.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_sticker import storage
from ray_sticker.data import schema

FOOTER_READERS = 16  # footers read at once (S3 round trips overlap)


@dataclass(frozen=True)
class Shard:
    uri: str
    rows: int
    schema: pa.Schema


@dataclass(frozen=True)
class Table:
    """The shards of one table directory (a split of ``examples``, or ``stickers``)."""

    uri: str
    shards: tuple[Shard, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def columns(self) -> list[str]:
        """Every column some shard holds, in first-seen order."""
        names: list[str] = []
        for shard in self.shards:
            names += [n for n in shard.schema.names if n not in names]
        return names


def _parquet_files(where: str) -> list[str]:
    fs, path = storage.resolve(where)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{where} not found")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        raise schema.SchemaError(f"{where} has no Parquet files")
    return [storage.join(where, posixpath.relpath(f, path)) for f in files]


def _read_footer(uri: str) -> Shard:
    fs, path = storage.resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
            return Shard(uri, meta.num_rows, meta.schema.to_arrow_schema())
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise schema.SchemaError(f"shard {uri} is not a readable Parquet file (cut short or damaged?): "
                                 f"{reason}") from None


def scan(where: str) -> Table:
    """Every shard's row count and schema under ``where``; fails naming an unreadable shard."""
    table, unreadable = scan_all(where)
    if unreadable:
        raise unreadable[0]
    return table


def scan_all(where: str) -> tuple[Table, list[schema.SchemaError]]:
    """The readable shards under ``where``, and the error of each unreadable one."""
    def read(uri: str) -> Shard | schema.SchemaError:
        try:
            return _read_footer(uri)
        except schema.SchemaError as exc:
            return exc

    files = _parquet_files(where)
    with ThreadPoolExecutor(min(FOOTER_READERS, len(files))) as pool:
        found = list(pool.map(read, files))
    return (Table(where, tuple(f for f in found if isinstance(f, Shard))),
            [f for f in found if isinstance(f, schema.SchemaError)])


def _type_problems(table: Table, kind: str, columns: list[str]) -> list[str]:
    canonical = schema.TABLES[kind]
    problems = []
    for shard in table.shards:
        missing = [c for c in columns if c not in shard.schema.names]
        if missing:
            problems.append(f"shard {shard.uri} lacks column(s) {', '.join(missing)}; found: "
                            f"{', '.join(shard.schema.names)}")
        for name in shard.schema.names:
            if name in canonical.names and name in columns:
                want, got = canonical.field(name).type, shard.schema.field(name).type
                if got != want and not (pa.types.is_null(got) or _castable(got, want)):
                    problems.append(f"shard {shard.uri}: column {name} is {got}, not {want}")
    return problems


def _castable(got: pa.DataType, want: pa.DataType) -> bool:
    """Types a reader converts without loss of meaning (int64 labels, large strings)."""
    if pa.types.is_integer(got) and pa.types.is_integer(want):
        return True
    if pa.types.is_string(want) or pa.types.is_large_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    if pa.types.is_binary(want):
        return pa.types.is_binary(got) or pa.types.is_large_binary(got)
    if pa.types.is_list(want) and (pa.types.is_list(got) or pa.types.is_large_list(got)):
        return _castable(got.value_type, want.value_type)
    return False


def check(table: Table, kind: str, columns: list[str], expected_rows: int | None, where: str) -> None:
    """Refuse, in one line naming the shard, a table whose shards lack ``columns``, hold a
    canonical column of another type, or whose rows disagree with the manifest's count."""
    problems = _type_problems(table, kind, columns)
    if expected_rows is not None and table.rows != expected_rows:
        problems.append(f"the manifest says {expected_rows} rows, its {len(table.shards)} shard(s) hold {table.rows}")
    if problems:
        more = f" [+{len(problems) - 1} more]" if len(problems) > 1 else ""
        raise schema.SchemaError(f"{where}: {problems[0]}{more}")
