"""Damaged releases: every format's fixture (``tests/releases``) re-encoded, cut short and
fuzzed, converted in process (no Ray). Nothing here needs a cluster.

What is checked:

1. Text encodings. A UTF-8 byte-order mark on every text file of a release changes nothing
   (every format). For the formats that carry Chinese text (their converters write language
   "zh": DSTC10-MOD, MSAIRS, StickerChat, StickerInt), each text file the converter reads,
   re-encoded as GB18030 (GBK) or UTF-16 with a byte-order mark, is refused with a one-line
   :class:`FormatError` naming the file and line, saying it is not UTF-8 and giving the
   ``iconv`` command that fixes it. No official release of these formats is GB18030, so none
   is decoded as such (``base.Source.read_text``).
2. Cut index files. Every text file each format's scan reads, cut at seeded places inside a
   line, is refused with a :class:`FormatError` naming that file and the line of the cut. In
   TSV files the cut falls before the line's last tab: a cut inside the last field leaves a
   well-formed shorter line (see "undetectable" below).
3. A seeded damage fuzz of every format's fixture, in five classes: ``flip`` (a byte of an
   index file XOR-ed with a random mask), ``cut`` (an index file cut inside a line),
   ``remove`` (any file of the release deleted), ``image`` (an image file emptied, cut, or
   replaced by random bytes) and ``duplicate`` (an index row — a line, a JSON record or a
   JSON object member — repeated right after itself). Each damaged release must end in one of:

   - error: a :class:`FormatError` or :class:`FileNotFoundError`, or a ``ValueError`` whose
     message is one line naming a file of the release or the output;
   - skips: a conversion whose report accounts for the damage: skipped rows or fix-ups
     (``Scan.fixups``) went up by at least the rows lost or added, per table;
   - absorbed: a conversion with the same report as the intact release's, writing as many
     rows per table (e.g. a flipped byte inside a text only changes that text) or, but for
     repeated rows, more (a flipped byte in the id of a StickerInt sticker that another file
     also lists adds a sticker under the new id: no row is lost);
   - undetectable: rows lost or added silently by damage that leaves a well-formed release,
     which no reader can tell from one published that way: a TSV line cut inside its last
     field (the following lines are gone, the cut line is complete), an M2SA corpus file
     removed (M2SA reads whatever ``final_dataset/*.json`` it lists), an M2SA line repeated
     (the release repeats tweets, one per annotator, and its official code keeps them: the
     fixture holds such an identical line). Cuts at a line boundary are not generated.

   Never: another exception (``KeyError``, ``TypeError``, ``UnicodeDecodeError``, PIL errors …),
   a hang (over :data:`CASE_SECONDS`), or a silent success that lost or added rows.
   Duplicates (also checked on one repeated row of every index file of every format): an id
   the release gives twice is a FormatError naming both places; a repeated row of a release
   without ids (its line number is the id) is skipped and counted as "duplicate example"
   (``base.UniqueIds``, ``base.Repeats``) — except M2SA (above).
4. Regressions: each damage the fuzz or its review found mishandled, on its own.

The default run draws :data:`DEFAULT_CASES` cases per class and format; ``-m fuzz`` runs
:data:`FUZZ_CASES`. Run with ``-s`` to see one count line per class and format.
"""

from __future__ import annotations

import collections
import json
import random
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest

from ray_sticker.data.convert.base import DUPLICATE, ConvertOptions, FormatError, Scan, Source, get_converter
from ray_sticker.data.convert.dstc10_mod import FIX_FIELDS
from ray_sticker.data.convert.runner import ConversionReport, convert
from tests.releases import all_fixtures

FIXTURES = all_fixtures()
FORMATS = sorted(FIXTURES)
CHINESE = ["dstc10-mod", "msairs", "stickerchat", "stickerint"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".npy")
LINE_FILES = (".jsonl", ".tsv", ".txt")  # read line by line (some ".json" files are JSON lines too)
KINDS = ["flip", "cut", "remove", "image", "duplicate"]
OUTCOMES = ["errors", "skips", "absorbed", "undetectable", "silent", "crashes"]
DEFAULT_CASES = 3  # per damage class and format: the whole file runs in under 10 s on 2 cores
FUZZ_CASES = 60
CASE_SECONDS = 20.0  # a fixture converts in well under a second: longer is a hang
UNDETECTABLE_REMOVALS = {"m2sa": "final_dataset/"}  # files found by listing a folder
REPEATS_KEPT = {"m2sa"}  # formats whose releases repeat rows (module doc)


# ------------------------------------------------------------------------------ releases


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """Every format's fixture, written once; tests damage copies."""
    root = tmp_path_factory.mktemp("pristine")
    for fmt in FORMATS:
        FIXTURES[fmt](root / fmt)
    return {fmt: root / fmt for fmt in FORMATS}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _scan(root: Path, fmt: str) -> Scan:
    return get_converter(fmt).scan(Source(str(root)), ConvertOptions())


def files_read(root: Path, fmt: str) -> list[str]:
    """Release-relative paths of the files the format's scan reads (its index files)."""
    seen: list[str] = []
    original = Source.read_bytes

    def spy(self: Source, rel: str) -> bytes:
        seen.append(rel)
        return original(self, rel)

    with mock.patch.object(Source, "read_bytes", spy):
        _scan(root, fmt)
    return list(dict.fromkeys(seen))


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _line_of(data: bytes, pos: int) -> int:
    return data[:pos].count(b"\n") + 1


# ------------------------------------------------------------------------------ 1. encodings


def test_chinese_formats_are_the_zh_ones(pristine):
    zh = [f for f in FORMATS if any(r.get("language") == "zh" for r in _scan(pristine[f], f).examples)]
    assert zh == CHINESE


@pytest.mark.parametrize("fmt", FORMATS)
def test_utf8_byte_order_marks_change_nothing(pristine, tmp_path, fmt):
    root = _copy(pristine[fmt], tmp_path / fmt)
    for rel in files_read(root, fmt):
        path = root / rel
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    before, after = _scan(pristine[fmt], fmt), _scan(root, fmt)
    for part in ("examples", "stickers", "label_maps", "fixups", "extra", "skipped"):
        assert getattr(after, part) == getattr(before, part), part


def _refused(root: Path, fmt: str, rel: str) -> FormatError:
    with pytest.raises(FormatError) as info:
        _scan(root, fmt)
    exc = info.value
    assert exc.where == str(root / rel), str(exc)
    assert "\n" not in str(exc) and "not UTF-8" in str(exc)
    return exc


@pytest.mark.parametrize("fmt", CHINESE)
def test_gb18030_text_is_refused_with_the_fix(pristine, tmp_path, fmt):
    tested = 0
    for rel in files_read(pristine[fmt], fmt):
        utf8 = (pristine[fmt] / rel).read_bytes()
        gb = utf8.decode("utf-8").encode("gb18030")
        if gb == utf8:
            continue  # ASCII only: the same bytes in both encodings
        root = _copy(pristine[fmt], tmp_path / f"{fmt}-{tested}")
        (root / rel).write_bytes(gb)
        exc = _refused(root, fmt, rel)
        try:
            gb.decode("utf-8")
        except UnicodeDecodeError as bad:
            assert exc.at == _line_of(gb, bad.start)
        assert f"iconv -f GB18030 -t UTF-8 {root / rel} > {root / rel}.utf8" in str(exc)
        tested += 1
    assert tested, f"no text file of {fmt} holds non-ASCII text"


@pytest.mark.parametrize("fmt", CHINESE)
def test_utf16_text_is_refused_with_the_fix(pristine, tmp_path, fmt):
    for k, rel in enumerate(files_read(pristine[fmt], fmt)):
        root = _copy(pristine[fmt], tmp_path / f"{fmt}-{k}")
        (root / rel).write_bytes((pristine[fmt] / rel).read_text("utf-8").encode("utf-16"))
        exc = _refused(root, fmt, rel)
        assert exc.at == 1 and "UTF-16" in str(exc) and "iconv -f UTF-16 -t UTF-8" in str(exc)


# ------------------------------------------------------------------------------ 2. cut files


def _rest_of_line(data: bytes, pos: int) -> bytes:
    end = data.find(b"\n", pos)
    return data[pos:] if end < 0 else data[pos:end]


def mid_line_positions(data: bytes, tsv: bool) -> list[int]:
    """Cut points inside a line (never at its start or end); in a TSV line, before its last tab."""
    return [pos for pos in range(1, len(data))
            if data[pos - 1] not in b"\r\n" and data[pos] not in b"\r\n"
            and not (tsv and b"\t" not in _rest_of_line(data, pos))]


@pytest.mark.parametrize("fmt", FORMATS)
def test_cut_index_files_are_refused_naming_file_and_line(pristine, tmp_path, fmt):
    rng = random.Random(f"cut-{fmt}")
    for k, rel in enumerate(files_read(pristine[fmt], fmt)):
        data = (pristine[fmt] / rel).read_bytes()
        for pos in rng.sample(mid_line_positions(data, rel.endswith((".tsv", ".txt"))), 3):
            root = _copy(pristine[fmt], tmp_path / f"{k}-{pos}")
            (root / rel).write_bytes(data[:pos])
            with pytest.raises(FormatError) as info:
                _scan(root, fmt)
            where = f"{rel} cut at byte {pos} of {len(data)}: {info.value}"
            assert info.value.where == str(root / rel), where
            assert info.value.at == _line_of(data, pos), where


# ------------------------------------------------------------------------------ 3. repeats and the fuzz


@dataclass
class Damage:
    kind: str
    target: str  # the release-relative file damaged
    detail: str
    undetectable: bool = False  # it leaves a well-formed smaller release (module doc)


@dataclass
class Files:
    index: list[str]  # read by the scan
    images: list[str]
    every: list[str]


def _flip(root: Path, files: Files, rng: random.Random) -> Damage:
    rel = rng.choice(files.index)
    data = bytearray((root / rel).read_bytes())
    pos, mask = rng.randrange(len(data)), rng.randrange(1, 256)
    old = data[pos]
    data[pos] ^= mask
    (root / rel).write_bytes(bytes(data))
    return Damage("flip", rel, f"byte {pos} {old:#04x} -> {data[pos]:#04x}")


def _cut(root: Path, files: Files, rng: random.Random) -> Damage:
    rel = rng.choice(files.index)
    data = (root / rel).read_bytes()
    pos = rng.choice(mid_line_positions(data, tsv=False))
    (root / rel).write_bytes(data[:pos])
    inside_last_field = rel.endswith((".tsv", ".txt")) and b"\t" not in _rest_of_line(data, pos)
    return Damage("cut", rel, f"at byte {pos} of {len(data)}", undetectable=inside_last_field)


def _remove(root: Path, files: Files, rng: random.Random, fmt: str) -> Damage:
    rel = rng.choice(files.every)
    (root / rel).unlink()
    listed = UNDETECTABLE_REMOVALS.get(fmt)
    return Damage("remove", rel, "deleted", undetectable=bool(listed and rel.startswith(listed)))


def _image(root: Path, files: Files, rng: random.Random) -> Damage:
    rel = rng.choice(files.images)
    data = (root / rel).read_bytes()
    how = rng.choice(["zero-byte", "cut", "random bytes"])
    new = {"zero-byte": b"", "cut": data[:rng.randrange(1, len(data))],
           "random bytes": rng.randbytes(len(data))}[how]
    (root / rel).write_bytes(new)
    return Damage("image", rel, f"{how} ({len(new)} of {len(data)} bytes)")


def _duplicate_record(text: str, rng: random.Random) -> tuple[str, str]:
    """A JSON document with one record repeated: of its top array, of SER30K's "annotations"
    array, else one member of the top object (a repeated key: a DSTC10 dialogue, an img2id entry)."""
    doc = json.loads(text)
    if isinstance(doc, dict) and list(doc) == ["annotations"]:
        key = "annotations"
        i = rng.randrange(len(doc[key]))
        doc[key].insert(i + 1, doc[key][i])
        return json.dumps(doc, ensure_ascii=False, indent=1), f"record {i} of '{key}'"
    if isinstance(doc, list):
        i = rng.randrange(len(doc))
        doc.insert(i + 1, doc[i])
        return json.dumps(doc, ensure_ascii=False, indent=1), f"record {i}"
    pairs = list(doc.items())
    i = rng.randrange(len(pairs))
    pairs.insert(i + 1, pairs[i])
    members = ",\n".join(f" {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}" for k, v in pairs)
    return "{\n" + members + "\n}", f"member {pairs[i][0]!r}"


def _duplicate(root: Path, files: Files, rng: random.Random, fmt: str) -> Damage:
    return duplicate_row(root, rng.choice(files.index), rng, fmt)


def duplicate_row(root: Path, rel: str, rng: random.Random, fmt: str) -> Damage:
    """Repeat one row of the index file ``rel`` (a line, a JSON record or object member) right after itself."""
    text = (root / rel).read_text("utf-8")
    try:
        if rel.endswith(LINE_FILES):
            raise ValueError("read line by line")
        text, what = _duplicate_record(text, rng)
    except ValueError:  # JSON lines (json.JSONDecodeError is a ValueError), TSV, text
        lines = text.split("\n")
        i = rng.choice([k for k, line in enumerate(lines) if line.strip()])
        lines.insert(i + 1, lines[i])
        text, what = "\n".join(lines), f"line {i + 1}"
    (root / rel).write_text(text, "utf-8")
    return Damage("duplicate", rel, what, undetectable=fmt in REPEATS_KEPT)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_repeated_row_is_refused_or_counted_in_every_index_file(pristine, tmp_path, fmt):
    """An id given twice: FormatError naming the file and place; a repeated row without an id of
    its own: skipped as a duplicate naming the file; else the row changes nothing (an emoji
    mapped twice, a StickerInt image listed twice with its bytes) or, in M2SA, is kept."""
    before = _scan(pristine[fmt], fmt)
    for k, rel in enumerate(files_read(pristine[fmt], fmt)):
        root = _copy(pristine[fmt], tmp_path / str(k))
        d = duplicate_row(root, rel, random.Random(f"repeat-{fmt}-{rel}"), fmt)
        try:
            after = _scan(root, fmt)
        except FormatError as exc:
            assert exc.where == str(root / rel) and exc.at is not None, f"{rel} {d.detail}: {exc}"
            continue
        if after.skipped:
            assert {why for _, why, _ in after.skipped} == {DUPLICATE}, after.skipped
            assert all(detail.startswith(f"{root / rel} ") for *_, detail in after.skipped), after.skipped
            assert len(after.examples) == len(before.examples), f"{rel} {d.detail}"
        elif fmt in REPEATS_KEPT:
            assert len(after.examples) >= len(before.examples)
        else:
            assert (after.examples, after.stickers) == (before.examples, before.stickers), f"{rel} {d.detail}"


def damage(kind: str, root: Path, files: Files, rng: random.Random, fmt: str) -> Damage | None:
    if kind == "image" and not files.images:
        return None  # StickerInt's images are base64 inside its TSVs
    makers: dict[str, Callable[[], Damage]] = {
        "flip": lambda: _flip(root, files, rng), "cut": lambda: _cut(root, files, rng),
        "remove": lambda: _remove(root, files, rng, fmt), "image": lambda: _image(root, files, rng),
        "duplicate": lambda: _duplicate(root, files, rng, fmt)}
    return makers[kind]()


# ------------------------------------------------------------------------------ the fuzz's outcomes


@dataclass
class Counts:
    """What a successful conversion wrote and reported, per table."""

    written: dict[str, int]
    skipped: dict[str, int]
    fixups: int

    @classmethod
    def of(cls, report: ConversionReport) -> Counts:
        tables = {"examples": report.examples, "stickers": report.stickers}
        return cls(written={k: t.written for k, t in tables.items() if t is not None},
                   skipped={k: t.skipped_total for k, t in tables.items() if t is not None},
                   fixups=sum(report.fixups.values()))


def _run(fn: Callable[[], Any], seconds: float) -> tuple[Any, BaseException | None]:
    """``fn()`` in a thread: (result, exception); a hang is a TimeoutError (the thread is left)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - classified by the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return None, TimeoutError(f"hang: still converting after {seconds:.0f} s")
    return box.get("result"), box.get("error")


def _clear(exc: BaseException, names: tuple[str, ...]) -> bool:
    """A FormatError / FileNotFoundError, or a one-line ValueError naming a file."""
    text = str(exc)
    if isinstance(exc, (FormatError, FileNotFoundError)):
        return "\n" not in text
    named = any(n in text for n in names)
    return isinstance(exc, ValueError) and not isinstance(exc, UnicodeError) and "\n" not in text and named


def classify(d: Damage, base: Counts, result: Any, exc: BaseException | None, names: tuple[str, ...]) -> str:
    if exc is not None:
        return "errors" if _clear(exc, names) else "crashes"
    got = Counts.of(result[1])
    grew = d.kind != "duplicate" and all(got.written[k] >= base.written[k] for k in base.written)
    if got == base or (grew and (got.skipped, got.fixups) == (base.skipped, base.fixups)):
        return "absorbed"
    # The report accounts for the damage when its counts moved by at least the rows written moved
    # (a flipped tweet id no longer in the test split: one row more, one overlap fix-up less).
    fixed = abs(got.fixups - base.fixups)
    noted = {k: abs(got.skipped[k] - base.skipped[k]) + fixed for k in base.written}
    if any(noted.values()) and all(abs(got.written[k] - base.written[k]) <= noted[k] for k in noted):
        return "skips"
    return "undetectable" if d.undetectable else "silent"


def fuzz_format(fmt: str, pristine: Path, tmp: Path, cases: int, seed: int = 0) -> dict[str, collections.Counter]:
    """Damage copies of ``fmt``'s fixture ``cases`` times per class; outcome counts per class.
    Failures (silent, crashes) are listed under the key "failures"."""
    files = Files(index=files_read(pristine, fmt),
                  images=[f for f in all_files(pristine) if f.lower().endswith(IMAGE_SUFFIXES)],
                  every=all_files(pristine))
    base = Counts.of(convert(fmt, str(pristine), str(tmp / "base-out"), in_process=True, max_skipped_fraction=1.0)[1])
    counts: dict[str, collections.Counter] = {kind: collections.Counter() for kind in KINDS}
    failures: list[str] = []
    for kind in KINDS:
        for i in range(cases):
            root = _copy(pristine, tmp / f"{kind}-{i}")
            d = damage(kind, root, files, random.Random(f"{seed}-{fmt}-{kind}-{i}"), fmt)
            if d is None:
                break
            out = tmp / f"{kind}-{i}-out"
            result, exc = _run(lambda: convert(fmt, str(root), str(out), in_process=True,
                                               max_skipped_fraction=1.0), CASE_SECONDS)
            outcome = classify(d, base, result, exc, (str(root), str(out)))
            counts[kind]["tried"] += 1
            counts[kind][outcome] += 1
            if outcome in ("silent", "crashes"):
                why = f"{type(exc).__name__}: {exc}" if exc else f"{Counts.of(result[1])} vs {base}"
                failures.append(f"{fmt} {kind} {d.target} {d.detail}: {outcome}: {why}")
            shutil.rmtree(root)
            shutil.rmtree(out, ignore_errors=True)
    counts["failures"] = collections.Counter(failures)
    return counts


def _print_counts(fmt: str, counts: dict[str, collections.Counter]) -> None:
    for kind in KINDS:
        c = counts[kind]
        print(f"{kind:<9} {fmt:<13} tried {c['tried']:>3}  " + "  ".join(f"{o} {c[o]:>3}" for o in OUTCOMES))


def _check_fuzz(fmt: str, pristine: Path, tmp: Path, cases: int) -> None:
    counts = fuzz_format(fmt, pristine, tmp, cases)
    _print_counts(fmt, counts)
    assert not counts["failures"], "\n".join(counts["failures"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_releases_fail_clearly_or_count_the_damage(pristine, tmp_path, fmt):
    _check_fuzz(fmt, pristine[fmt], tmp_path, DEFAULT_CASES)


@pytest.mark.fuzz
@pytest.mark.parametrize("fmt", FORMATS)
def test_damage_fuzz_long_run(pristine, tmp_path, fmt):
    _check_fuzz(fmt, pristine[fmt], tmp_path, FUZZ_CASES)


# ------------------------------------------------------------------------------ 4. regressions
# What the fuzz and this review found, each on its smallest damaged release.


def _edit_json(path: Path, edit: Callable[[Any], None]) -> None:
    doc = json.loads(path.read_text("utf-8"))
    edit(doc)
    path.write_text(json.dumps(doc, ensure_ascii=False), "utf-8")


def _edit_line(path: Path, no: int, edit: Callable[[str], str]) -> None:
    lines = path.read_text("utf-8").split("\n")
    lines[no - 1] = edit(lines[no - 1])
    path.write_text("\n".join(lines), "utf-8")


def test_a_tsv_header_run_into_the_first_line_is_refused(pristine, tmp_path):
    root = _copy(pristine["twitter15"], tmp_path / "r")
    (root / "dev.tsv").write_bytes((root / "dev.tsv").read_bytes().replace(b"\n", b"Z", 1))
    with pytest.raises(FormatError, match=r"dev\.tsv:1: header of 9 fields"):
        _scan(root, "twitter15")  # it used to be taken for the header: the first example was lost


def test_line_breaks_inside_texts_stay_inside(pristine, tmp_path):
    """A carriage return in a TSV field (it used to raise csv.Error) and U+2028 / U+0085 in a
    JSON-lines text (``str.splitlines`` cut the line there: "malformed JSON line")."""
    root = _copy(pristine["twitter15"], tmp_path / "t")
    _edit_line(root / "train.tsv", 2, lambda line: line.replace("great", "gr\reat"))
    context = _scan(root, "twitter15").examples[0]["context"]
    assert context == ["RT @ fan : Taylor Swift played a gr\reat show tonight !"]
    root = _copy(pristine["m2sa"], tmp_path / "m")
    rel = "final_dataset/43.RETWEET_data@train_final_label.json"
    _edit_line(root / rel, 1, lambda line: line.replace("worst airline", "worst\u2028air\x85line"))
    assert ["worst\u2028air\x85line ever"] in [e["context"] for e in _scan(root, "m2sa").examples]


def test_an_image_reference_naming_a_directory_is_a_missing_image(pristine, tmp_path):
    root = _copy(pristine["ser30k"], tmp_path / "r")
    _edit_json(root / "Annotations/image-level/test.json", lambda doc: doc["annotations"][0].update(file_name=""))
    _, report = convert("ser30k", str(root), str(tmp_path / "out"), in_process=True, max_skipped_fraction=1.0)
    assert report.examples.skipped == {"missing image": 1}  # it used to raise OSError "is a directory"
    assert report.examples.skipped_rows[0]["detail"] == "Images/09-panda-bear/ (a directory)"


def test_one_dstc10_test_file_without_the_other_is_refused(pristine, tmp_path):
    root = _copy(pristine["dstc10-mod"], tmp_path / "r")
    (root / "c_test_hard_task2.json").unlink()  # its rows used to vanish unnoticed
    with pytest.raises(FileNotFoundError, match="lacks c_test_hard_task2.json"):
        _scan(root, "dstc10-mod")


def test_a_misspelt_dstc10_utterance_field_is_counted(pristine, tmp_path):
    root = _copy(pristine["dstc10-mod"], tmp_path / "r")
    utterance = lambda doc: doc["dialogue 101"][1]  # noqa: E731
    _edit_json(root / "c_val.json", lambda doc: utterance(doc).update(imf_id=utterance(doc).pop("img_id")))
    scan = _scan(root, "dstc10-mod")  # the sample is lost: the release cannot tell, the report does
    assert "validation-101-1" not in {e["example_id"] for e in scan.examples}
    assert scan.fixups[FIX_FIELDS] == 1


@pytest.mark.parametrize("fmt, rel, edit, match", [
    ("dstc10-mod", "c_val.json", lambda doc: doc["dialogue 101"][1].update(img_id="²"), "img_id '²' is not a number"),
    ("stickerchat", "release_val.json", None, "sticker_id must be an integer, got '1/2'"),
])
def test_odd_ids_are_format_errors(pristine, tmp_path, fmt, rel, edit, match):
    """Ids ``int()`` cannot read ("²" passed ``str.isdigit``) or that would break a set/sticker
    pair apart raised ValueError without a file."""
    root = _copy(pristine[fmt], tmp_path / "r")
    if edit:
        _edit_json(root / rel, edit)
    else:
        _edit_line(root / rel, 1, lambda line: line.replace('"sticker_id": 556029562811581405', '"sticker_id": "1/2"'))
    with pytest.raises(FormatError, match=re.escape(match)):
        _scan(root, fmt)
