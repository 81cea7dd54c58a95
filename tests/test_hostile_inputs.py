"""Damaged and hostile datasets are refused before Ray starts, in one line naming the file:
a shard cut short, a shard lacking a column or holding one of another type, a manifest whose
counts disagree with its shards, cut in the middle, of mistyped fields or from a future
schema version. (Rows that are unusable one by one — undecodable, zero-byte or oversized
images, labels outside the map, empty or overlong texts — are skipped and counted: see
tests/test_pipeline.py, tests/test_images.py and tests/test_reliability.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_sticker import cli
from ray_sticker.config import load_config
from ray_sticker.data import schema
from ray_sticker.data.synthetic import make_classify_dataset
from ray_sticker.train.inputs import check_inputs


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A small classification dataset whose train split has 3 shards."""
    root = tmp_path / "ds"
    make_classify_dataset(str(root), num_rows=120, image_size=16, rows_per_shard=30, seed=1)
    assert len(_shards(root)) >= 3
    return root


def _shards(root: Path, split: str = "train") -> list[Path]:
    return sorted((root / "examples" / split).glob("*.parquet"))


def _refused(root: Path, monkeypatch, capsys) -> str:
    """``ray-sticker train`` on the dataset: exit 2, one line, Ray never started."""
    from ray_sticker.train import trainer

    monkeypatch.setattr(trainer, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    assert cli.main(["-q", "train", "--config", "m2sa-tiny", f"data.uri={root}", "data.image_size=32"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    return lines[0]


def _rewrite(shard: Path, change) -> None:
    pq.write_table(change(pq.read_table(shard)), shard)


def test_a_shard_cut_short_is_named(dataset, monkeypatch, capsys):
    victim = _shards(dataset)[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    line = _refused(dataset, monkeypatch, capsys)
    assert f"shard {victim} is not a readable Parquet file (cut short or damaged?)" in line


def test_a_zero_byte_shard_is_named(dataset, monkeypatch, capsys):
    victim = _shards(dataset)[2]
    victim.write_bytes(b"")
    assert f"shard {victim} is not a readable Parquet file" in _refused(dataset, monkeypatch, capsys)


def test_a_shard_lacking_a_column_is_named(dataset, monkeypatch, capsys):
    victim = _shards(dataset)[1]
    _rewrite(victim, lambda t: t.drop_columns(["image"]))
    assert f"shard {victim} lacks column(s) image; found: " in _refused(dataset, monkeypatch, capsys)


def test_a_column_of_another_type_is_named(dataset, monkeypatch, capsys):
    victim = _shards(dataset)[2]
    column = "sentiment"
    _rewrite(victim, lambda t: t.set_column(t.schema.get_field_index(column), column,
                                            pa.array([str(v) for v in t[column].to_pylist()])))
    assert f"shard {victim}: column sentiment is string, not int32" in _refused(dataset, monkeypatch, capsys)


def test_an_extra_column_is_allowed(dataset):
    """Enrichment adds columns: a shard holding one the others lack is read as the others are."""
    _rewrite(_shards(dataset)[0], lambda t: t.append_column("comet_xIntent", pa.array(["to win"] * t.num_rows)))
    inputs = check_inputs(load_config("m2sa-tiny", [f"data.uri={dataset}"]))
    assert inputs.manifest.splits["train"] == 90


def test_a_manifest_disagreeing_with_its_shards_is_named(dataset, monkeypatch, capsys):
    _rewrite(_shards(dataset)[0], lambda t: t.slice(0, t.num_rows - 1))  # a row lost
    line = _refused(dataset, monkeypatch, capsys)
    assert "split 'train': the manifest says 90 rows, its 3 shard(s) hold 89" in line


def test_a_split_the_shards_lack_is_named(dataset, monkeypatch, capsys):
    for shard in _shards(dataset, "validation"):
        shard.unlink()
    (dataset / "examples" / "validation").rmdir()
    assert "split 'validation' not found: " in _refused(dataset, monkeypatch, capsys)


def _edit_manifest(root: Path, edit) -> None:
    path = root / schema.MANIFEST
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(schema_version=schema.SCHEMA_VERSION + 1), "schema_version 2 is not supported (this release reads 1)"),
    (lambda d: d.update(splits={"train": "ninety", "validation": 15, "test": 15}), "'splits' must be a mapping of split to a row count"),
    (lambda d: d.update(task="regress"), "'task' must be 'classify' or 'select'"),
    (lambda d: d.update(label_maps={"sentiment": "neutral"}), "'label_maps' must be a mapping of label"),
    (lambda d: d.update(bogus=1), "unknown manifest keys ['bogus']"),
])
def test_a_mistyped_or_future_manifest_is_named(dataset, monkeypatch, capsys, edit, message):
    _edit_manifest(dataset, edit)
    line = _refused(dataset, monkeypatch, capsys)
    assert f"{dataset / schema.MANIFEST}: " in line and message in line, line


def test_a_manifest_cut_in_the_middle_is_named(dataset, monkeypatch, capsys):
    path = dataset / schema.MANIFEST
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    assert f"{path}:" in (line := _refused(dataset, monkeypatch, capsys)) and "malformed JSON" in line, line


def test_a_manifest_with_a_byte_order_mark_is_read(dataset):
    path = dataset / schema.MANIFEST
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert schema.read_manifest(str(dataset)).splits["train"] == 90
