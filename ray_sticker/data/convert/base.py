"""What a release-format converter is: it reads a public release and says what to write.

A converter's :meth:`Converter.scan` runs on the driver over the release's index files
(JSON, JSONL, TSV — small next to the images) and returns a :class:`Scan`: plain dicts in
the canonical schema (``data/schema.py``) whose images are still *references* — a path
inside the release (``image_ref``; ``.npy`` arrays are encoded to PNG) or bytes already in
hand (``image``). The heavy part — fetching, checking and embedding the images and writing
Parquet shards — runs in parallel on Ray Data (``convert/runner.py``), the same for every
format.

Bad input is reported, never guessed at: a malformed line or a label outside the release's
label set raises :class:`FormatError` naming the file and line; a missing or undecodable
image is skipped and counted by the runner (the conversion fails above a threshold).

Text is UTF-8 (a byte-order mark is dropped); a file in another encoding is refused with the
``iconv`` command that converts it, never decoded by a guess (no official release of these
formats is in GB18030 or UTF-16). Repeats: an id the release gives twice is a FormatError
naming both places (:class:`UniqueIds`, and a key repeated in a JSON object); in a release
without ids of its own, a row identical to an earlier row of its file is skipped and counted
as :data:`DUPLICATE` (:class:`Repeats`, ``Scan.skipped``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable, Iterator

from pyarrow import fs as pafs

from ray_sticker import storage
from ray_sticker.data.schema import SchemaError

SENTIMENT_LABELS = ["negative", "neutral", "positive"]  # one order for every sentiment dataset
DUPLICATE = "duplicate example"  # the skip reason of a row repeating an earlier row of its file
_FOREIGN_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                 (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


class FormatError(SchemaError):
    """The release does not match its documented format; names the file and line."""

    def __init__(self, where: str, message: str, at: int | str | None = None):
        # ``at``: a line number (JSON lines, TSV) or a phrase such as "record 12" (JSON arrays)
        self.where, self.at = where, at
        loc = "" if at is None else f":{at}" if isinstance(at, int) else f" ({at})"
        super().__init__(f"{where}{loc}: {message}")


@dataclass(frozen=True)
class SeededSplit:
    """Splits drawn with a seed for releases without their own: ``fractions`` of the rows (of
    the groups, with ``group_by``: every value of that column lands in one split)."""

    fractions: dict[str, float]
    group_by: str | None = None


@dataclass(frozen=True)
class ConvertOptions:
    """Options every converter understands (``ray-sticker prepare FORMAT --help``)."""

    seed: int = 0
    split_fractions: dict[str, float] | None = None  # replaces a converter's SeededSplit fractions
    num_candidates: int = 10  # selection datasets that draw distractors at conversion
    fold: str | None = None  # releases that ship several splits of one dataset (e.g. CLMLF's 10-flod-N)


@dataclass
class Scan:
    """What a converter found in a release; the runner fetches the images and writes it.

    ``examples`` / ``stickers`` rows are dicts of canonical columns (extra columns are kept as
    they are). An image is either ``image`` (bytes) or ``image_ref`` (a path relative to the
    release root). ``split`` may be ``None`` on every example when ``seeded_split`` is given.
    ``fixups`` counts what was corrected while reading (e.g. a known defect of a release)
    and ends up in the report. ``skipped``: example rows read but not kept, as
    ``(example_id, reason, detail)``; the runner counts them with the rows it skips.
    ``image_root``: where the images are when a release keeps them beside the directory read.
    """

    name: str
    task: str
    label_maps: dict[str, list[str]]
    examples: list[dict[str, Any]]
    stickers: list[dict[str, Any]] = field(default_factory=list)
    seeded_split: SeededSplit | None = None
    version: str = ""
    fixups: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    image_root: str | None = None  # the URI ``image_ref`` paths are relative to (None: the release root)


class Source:
    """Read-only access to a release's files at a local path or ``s3://`` URI; paths are
    relative to the release root and errors name the full URI."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/") or uri
        self.fs, self.root = storage.resolve(self.uri)
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"release not found: {uri}")

    def parent(self) -> Source | None:
        """The directory holding this release (None at a bucket's or filesystem's root)."""
        head, _, tail = self.uri.rstrip("/").rpartition("/")
        if not tail or not head or head.endswith(":/"):
            return None
        try:
            return Source(head)
        except FileNotFoundError:
            return None

    def uri_of(self, rel: str) -> str:
        return storage.join(self.uri, rel)

    def _path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def is_dir(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type == pafs.FileType.Directory

    def require(self, *candidates: str) -> str:
        """The first of ``candidates`` that exists; else a clear error listing them."""
        for rel in candidates:
            if self.exists(rel):
                return rel
        raise FileNotFoundError(f"release at {self.uri} lacks {' or '.join(candidates)}")

    def listdir(self, rel: str = "") -> list[str]:
        """Sorted names of the entries of a directory (``[]`` if it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel), allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in infos)

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"not found: {self.uri_of(rel)}") from None

    def read_text(self, rel: str) -> str:
        """The file as UTF-8 text (a byte-order mark dropped); any other encoding is refused
        with the line of the first byte that is not UTF-8 and the command that converts it."""
        data = self.read_bytes(rel)
        for bom, encoding in _FOREIGN_BOMS:
            if data.startswith(bom):
                raise FormatError(self.uri_of(rel), f"not UTF-8 but {encoding} (it starts with a {encoding} "
                                                    f"byte-order mark); {self._iconv(rel, encoding)}", 1)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise FormatError(self.uri_of(rel), f"not UTF-8 ({exc.reason}); {self._encoding_hint(rel, data)}",
                              line) from None

    def _iconv(self, rel: str, encoding: str) -> str:
        path = "FILE" if "://" in self.uri else self.uri_of(rel)
        return f"re-encode it: iconv -f {encoding} -t UTF-8 {path} > {path}.utf8"

    def _encoding_hint(self, rel: str, data: bytes) -> str:
        """What to do with bytes that are not UTF-8: mostly UTF-8 (a damaged copy), GB18030, or else."""
        text = data.decode("utf-8", "replace")
        bad = text.count("\ufffd")
        if sum(ord(c) > 0x7F for c in text) - bad > 2 * bad:
            return f"{bad} invalid byte sequence(s) in otherwise UTF-8 text: is the file damaged?"
        try:
            data.decode("gb18030")
        except UnicodeDecodeError:
            return self._iconv(rel, "<its encoding>")
        return f"it reads as GB18030 (GBK); {self._iconv(rel, 'GB18030')}"

    def lines(self, rel: str) -> Iterator[tuple[int, str]]:
        """(1-based line number, line without its newline) of every non-blank line. Lines end at a
        line feed (CR LF too) only, not at the other characters ``str.splitlines`` breaks at
        (U+2028, form feed, ...), which texts hold."""
        for no, line in enumerate(self.read_text(rel).split("\n"), start=1):
            if line.strip():
                yield no, line.removesuffix("\r")

    def json(self, rel: str) -> Any:
        """The JSON document; a key repeated in an object is a FormatError (which value is meant?)."""
        text = self.read_text(rel)
        try:
            return json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise FormatError(self.uri_of(rel), f"malformed JSON: {exc.msg}", exc.lineno) from None
        except _RepeatedKey as exc:
            raise FormatError(self.uri_of(rel), f"key {exc.key!r} appears twice in one object",
                              _second_key_line(text, exc.key)) from None

    def jsonl(self, rel: str) -> Iterator[tuple[int, Any]]:
        """(line number, parsed object) of every line of a JSON-lines file."""
        for no, line in self.lines(rel):
            try:
                yield no, json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                raise FormatError(self.uri_of(rel), f"malformed JSON line: {exc.msg}", no) from None
            except _RepeatedKey as exc:
                raise FormatError(self.uri_of(rel), f"key {exc.key!r} appears twice in one object", no) from None

    def tsv(self, rel: str) -> Iterator[tuple[int, list[str]]]:
        """(line number, fields) of every non-blank line of a tab-separated file (no quoting)."""
        for no, line in self.lines(rel):
            yield no, line.split("\t")


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return out


def _second_key_line(text: str, key: str) -> int | str:
    """Where a repeated key is: the line of its second spelling when the file spells it exactly
    twice (a key of the top object), else a phrase."""
    spellings = {json.dumps(key), json.dumps(key, ensure_ascii=False)}
    pattern = re.compile("|".join(re.escape(s) for s in spellings) + r"\s*:")
    found = [m.start() for m in pattern.finditer(text)]
    return text[: found[1]].count("\n") + 1 if len(found) == 2 else f"key {key!r}"


def _place(at: int | str | None) -> str:
    return "" if at is None else f"line {at}" if isinstance(at, int) else str(at)


class UniqueIds:
    """Ids the release gives (a record's id, a TSV index), each to be read once: a repeat is a
    FormatError naming both places."""

    def __init__(self, what: str):
        self.what = what
        self.first: dict[Hashable, str] = {}

    def add(self, key: Hashable, where: str, at: int | str | None) -> None:
        if key in self.first:
            raise FormatError(where, f"{self.what} {key!r} appears twice (first at {self.first[key]})", at)
        self.first[key] = _place(at)


class Repeats:
    """Rows of a release without ids of its own (its ids are line or record numbers): a row
    identical to an earlier row of the same file is a repeat, skipped and counted as
    :data:`DUPLICATE` in ``skipped`` (pass it to ``Scan.skipped``)."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, bytes], str] = {}
        self.skipped: list[tuple[str, str, str]] = []

    def seen(self, record: Any, where: str, at: int | str) -> str | None:
        """The place of the identical earlier row of ``where``, or None (and remember this one)."""
        digest = hashlib.blake2b(json.dumps(record, ensure_ascii=False).encode(),
                                 digest_size=16).digest()
        first = self.first.setdefault((where, digest), _place(at))
        return None if first == _place(at) else first

    def skip(self, record: Any, example_ids: list[str], where: str, at: int | str) -> bool:
        """True when the row repeats an earlier row of its file; then the examples it would
        give (``example_ids``) are counted as skipped."""
        first = self.seen(record, where, at)
        if first is not None:
            self.skipped += [(i, DUPLICATE, f"{where} {_place(at)} repeats {first}") for i in example_ids]
        return first is not None


def field_of(record: Any, key: str, where: str, at: int | str | None = None) -> Any:
    """``record[key]``, failing with the file and place when the record lacks it."""
    if not isinstance(record, dict):
        raise FormatError(where, f"expected a JSON object, got {type(record).__name__}", at)
    if key not in record:
        raise FormatError(where, f"record lacks '{key}' (has {sorted(record)})", at)
    return record[key]


def label_index(value: Any, names: list[str], what: str, where: str, at: int | str | None = None,
                codes: dict[Any, str] | None = None) -> int:
    """The index in ``names`` of a release label given by name or (with ``codes``) by code;
    an unknown label fails naming the file, place and the labels allowed."""
    name = (codes.get(value) if isinstance(value, (int, str)) else None) if codes is not None else value
    if name not in names:
        allowed = sorted(map(str, codes)) if codes is not None else names
        raise FormatError(where, f"unknown {what} {value!r}; expected one of {allowed}", at)
    return names.index(name)


class Converter:
    """One release format. Subclasses set the class attributes and implement :meth:`scan`."""

    name: ClassVar[str]  # the FORMAT of `ray-sticker prepare FORMAT`
    task: ClassVar[str]  # "classify" | "select"
    description: ClassVar[str]

    def scan(self, src: Source, options: ConvertOptions) -> Scan:
        raise NotImplementedError


_CONVERTERS: dict[str, type[Converter]] = {}


def register(cls: type[Converter]) -> type[Converter]:
    """Class decorator adding a converter under its ``name``."""
    if cls.name in _CONVERTERS:
        raise ValueError(f"converter '{cls.name}' registered twice")
    _CONVERTERS[cls.name] = cls
    return cls


def get_converter(name: str) -> Converter:
    importlib.import_module("ray_sticker.data.convert")  # registers every format module

    if name not in _CONVERTERS:
        raise SchemaError(f"unknown dataset format '{name}'; available: {', '.join(list_formats())}")
    return _CONVERTERS[name]()


def list_formats() -> list[str]:
    importlib.import_module("ray_sticker.data.convert")

    return sorted(_CONVERTERS)
