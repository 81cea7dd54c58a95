"""The conversion runner: splits, shards, images, the report, publication; every release format
converted from its fixture on a real Ray, locally and S3 to S3, and trained for one epoch."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_sticker import storage
from ray_sticker.cli import main
from ray_sticker.config import load_config
from ray_sticker.data import schema
from ray_sticker.data.convert.base import (
    ConvertOptions, FormatError, SeededSplit, Source, get_converter, list_formats,
)
from ray_sticker.data.convert.runner import (
    ConversionError, _shards, assign_splits, convert, read_report,
)
from ray_sticker.data.images import ImageDecodeError, decode_image, npy_to_png
from tests.releases import all_fixtures

FIXTURES = all_fixtures()
FORMATS = sorted(FIXTURES)


# ------------------------------------------------------------------------------ fast units


def test_every_format_has_a_fixture():
    assert FORMATS == list_formats()
    assert len(FORMATS) >= 10


def test_unknown_format_names_the_available_ones(tmp_path, capsys):
    assert main(["prepare", "nope", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset format 'nope'" in err and "mvsa-single" in err


def test_prepare_needs_a_source_and_valid_split_fractions(tmp_path, capsys):
    assert main(["prepare", "mvsa-single", "--out", str(tmp_path)]) == 2
    assert "--src" in capsys.readouterr().err
    assert main(["prepare", "msairs", "--src", str(tmp_path), "--out", str(tmp_path), "--splits", "train:0.9"]) == 2
    assert "NAME=FRACTION" in capsys.readouterr().err


def test_missing_release_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="release not found: .*nowhere"):
        Source(str(tmp_path / "nowhere"))


def test_seeded_splits_keep_groups_together_and_follow_fractions():
    rows = [{"example_id": f"e{i}", "sticker_id": f"s{i % 40}", "split": None} for i in range(400)]
    assign_splits(rows, SeededSplit({"train": 0.9, "test": 0.1}, group_by="sticker_id"), seed=3)
    by_sticker: dict[str, set] = {}
    for r in rows:
        by_sticker.setdefault(r["sticker_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_sticker.values())  # sticker-disjoint
    assert sum(r["split"] == "test" for r in rows) == 40  # 4 of 40 groups of 10
    again = [dict(r, split=None) for r in rows]
    assign_splits(again, SeededSplit({"train": 0.9, "test": 0.1}, group_by="sticker_id"), seed=3)
    assert [r["split"] for r in again] == [r["split"] for r in rows]
    other = [dict(r, split=None) for r in rows]
    assign_splits(other, SeededSplit({"train": 0.9, "test": 0.1}, group_by="sticker_id"), seed=4)
    assert [r["split"] for r in other] != [r["split"] for r in rows]


def test_seeded_splits_reject_fractions_not_summing_to_one():
    with pytest.raises(schema.SchemaError, match="sum to 1"):
        assign_splits([{"example_id": "a"}], SeededSplit({"train": 0.9, "test": 0.2}), seed=0)


@pytest.mark.parametrize("layout", ["hwc", "chw", "float", "gray"])
def test_npy_arrays_become_png(layout):
    rgb = np.zeros((6, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    arr = {"hwc": rgb, "chw": rgb.transpose(2, 0, 1), "float": rgb / 255.0, "gray": rgb[..., 0]}[layout]
    buf = io.BytesIO()
    np.save(buf, arr)
    img = decode_image(npy_to_png(buf.getvalue()))
    assert img.size == (5, 6)
    assert np.asarray(img)[0, 0, 0] == 200


def test_npy_that_is_not_an_image_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 3, 7)))
    with pytest.raises(ImageDecodeError, match="not an image"):
        npy_to_png(buf.getvalue())
    with pytest.raises(ImageDecodeError, match=".npy"):
        npy_to_png(b"not numpy")


def test_shards_hold_one_split_each_and_every_column():
    rows = [{"example_id": f"e{i}", "split": "train" if i < 5 else "test", "context": ["x"]} for i in range(7)]
    rows[6]["extra"] = "only the last row has it"
    blocks = _shards(rows, "examples", rows_per_shard=2)
    names = [b["_shard"][0].as_py() for b in blocks]
    assert names == ["examples/test/part-00000.parquet", "examples/train/part-00000.parquet",
                     "examples/train/part-00001.parquet", "examples/train/part-00002.parquet"]
    assert all(len(set(b["split"].to_pylist())) == 1 for b in blocks)
    assert all("extra" in b.column_names for b in blocks)
    assert sum(b.num_rows for b in blocks) == 7


def test_a_column_mixing_types_is_named():
    rows = [{"example_id": "a", "split": "train", "odd": 1}, {"example_id": "b", "split": "train", "odd": "x"}]
    with pytest.raises(schema.SchemaError, match="column 'odd' mixes"):
        _shards(rows, "examples", 10)


def test_format_errors_name_file_and_place(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"ok": 1}\n{"broken": \n')
    (tmp_path / "b.json").write_text('[\n {"id": 1},\n {"id": 2,,}\n]')
    src = Source(str(tmp_path))
    with pytest.raises(FormatError, match=r"a\.jsonl:2: malformed JSON line"):
        list(src.jsonl("a.jsonl"))
    with pytest.raises(FormatError, match=r"b\.json:3: malformed JSON"):
        src.json("b.json")
    assert str(FormatError("f.json", "bad", "record 4")) == "f.json (record 4): bad"


# --------------------------------------------------------------- conversions on a real Ray


def _release(tmp_path: Path, fmt: str):
    src = tmp_path / f"{fmt}-release"
    return src, FIXTURES[fmt](src)


def _check_dataset(out: str, fmt: str, expected) -> schema.Manifest:
    manifest = schema.read_manifest(out)
    assert manifest.source_format == fmt
    assert manifest.splits == expected.splits
    assert manifest.stickers == expected.stickers
    assert manifest.label_maps == expected.label_maps
    root = schema.tables_uri(out)
    for split, n in expected.splits.items():
        fs, path = storage.resolve(schema.split_uri(root, split))
        table = pq.ParquetDataset(path, filesystem=fs).read()
        assert table.num_rows == n
        # Round trip: the canonical columns come back first with their canonical types.
        assert table.schema.names[: len(schema.EXAMPLES_SCHEMA)] == schema.EXAMPLES_SCHEMA.names
        assert schema.conform(table, "examples").schema == table.schema
        assert set(table["split"].to_pylist()) == {split}
        for name, labels in manifest.label_maps.items():
            values = [v for v in table[name].to_pylist() if v is not None] if name in table.column_names else []
            assert all(0 <= v < len(labels) for v in values), name
        if manifest.task == "classify":
            for data in table["image"].to_pylist():
                if data is not None:
                    decode_image(data)
    if expected.stickers:
        fs, path = storage.resolve(schema.stickers_uri(root))
        stickers = pq.ParquetDataset(path, filesystem=fs).read()
        assert stickers.num_rows == expected.stickers
        assert len(set(stickers["sticker_id"].to_pylist())) == expected.stickers
        decode_image(stickers["image"][0].as_py())
    return manifest


@pytest.mark.ray
@pytest.mark.parametrize("fmt", FORMATS)
def test_release_converts_with_a_right_report(ray_cluster, tmp_path, fmt):
    src, expected = _release(tmp_path, fmt)
    out = str(tmp_path / "out")
    manifest, report = convert(fmt, str(src), out)
    _check_dataset(out, fmt, expected)
    assert report.examples.read == report.examples.written == sum(expected.splits.values())
    assert report.examples.skipped == {}
    if expected.stickers:
        assert report.stickers.read == report.stickers.written == expected.stickers
    assert read_report(out)["examples"]["written"] == report.examples.written
    assert [p.name for p in Path(out).iterdir() if p.name.startswith("v-")] == [manifest.data_dir]


@pytest.mark.ray
@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_image_is_skipped_counted_and_bounded(ray_cluster, tmp_path, fmt):
    src, expected = _release(tmp_path, fmt)
    if not expected.missing_image:
        pytest.skip(f"{fmt} embeds its images in its index files: no image file can go missing")
    out = str(tmp_path / "out")
    published, _ = convert(fmt, str(src), out)
    (src / expected.missing_image).unlink()

    # Above the threshold: nothing is published, the dataset already there stays readable.
    with pytest.raises(ConversionError, match="nothing was published"):
        convert(fmt, str(src), out, max_skipped_fraction=0.0)
    assert schema.read_manifest(out).data_dir == published.data_dir
    assert [p.name for p in Path(out).iterdir() if p.name.startswith("v-")] == [published.data_dir]

    _, report = convert(fmt, str(src), out, max_skipped_fraction=1.0)
    skipped = {"examples": report.examples.skipped_total,
               "stickers": report.stickers.skipped_total if report.stickers else 0}
    assert {k: v for k, v in skipped.items() if v} == expected.missing_skips
    for table in (report.examples, report.stickers):
        if table is not None:
            assert table.read == table.written + table.skipped_total
    assert any(r["reason"] == "missing image" for r in (report.stickers or report.examples).skipped_rows)


@pytest.mark.ray
def test_prepare_command_converts_and_prints_the_report(ray_cluster, tmp_path, capsys):
    src, expected = _release(tmp_path, "twitter15")
    out = tmp_path / "out"
    assert main(["prepare", "twitter15", "--src", str(src), "--out", str(out), "--rows-per-shard", "2"]) == 0
    printed = capsys.readouterr().out
    total = sum(expected.splits.values())
    assert f"examples: read {total}, written {total}" in printed and "published" in printed
    _check_dataset(str(out), "twitter15", expected)
    train = Path(schema.tables_uri(str(out))) / "examples" / "train"
    assert len(list(train.glob("part-*.parquet"))) == -(-expected.splits["train"] // 2)


@pytest.mark.ray
@pytest.mark.s3
def test_every_release_converts_from_s3_to_s3(ray_cluster, s3_env, s3_bucket, tmp_path):
    for fmt in FORMATS:
        src, expected = _release(tmp_path, fmt)
        storage.upload_dir(str(src), f"{s3_bucket}/releases/{fmt}")
        out = f"{s3_bucket}/datasets/{fmt}"
        convert(fmt, f"{s3_bucket}/releases/{fmt}", out)
        _check_dataset(out, fmt, expected)


def test_converters_read_releases_on_s3_and_locally_alike(s3_env, s3_bucket, tmp_path):
    """The scan (driver side) gives the same rows from both places."""
    fmt = "mvsa-single"
    src, _ = _release(tmp_path, fmt)
    storage.upload_dir(str(src), f"{s3_bucket}/r")
    local = get_converter(fmt).scan(Source(str(src)), ConvertOptions())
    remote = get_converter(fmt).scan(Source(f"{s3_bucket}/r"), ConvertOptions())
    assert local.examples == remote.examples


# Which tiny model trains on which converted release (heads follow the dataset's label maps).
def _training_config(fmt: str, manifest: schema.Manifest, uri: str):
    heads = {k: len(v) for k, v in manifest.label_maps.items() if k in ("sentiment", "intent", "emotion")}
    common = [f"data.uri={uri}", "data.synthetic_if_missing=false", "train.epochs=1", "train.batch_size=4",
              "train.num_workers=0", "train.export=false",
              "data.max_corrupt_fraction=0.2",  # fixtures hold rows without an image on purpose
              f"data.eval_split={'validation' if 'validation' in manifest.splits else 'test'}"]
    if manifest.task == "select":
        common.append("data.train_negatives=per_epoch")  # DSTC10-MOD's train sets are drawn: redrawn here
        if fmt == "stickerint":  # candidates drawn from its small pool: fewer than the default 10
            return load_config("intra-tiny", [*common, "data.num_candidates=4",
                                              f"model.overrides.heads={json.dumps({'intent': heads['intent']})}"])
        return load_config("clip-select-tiny", common)
    if fmt == "msairs":
        return load_config("mmsair-tiny", [*common, f"model.overrides.heads={json.dumps(heads)}"])
    return load_config("m2sa-tiny", [*common, f"model.overrides.heads={json.dumps(heads)}"])


# mvsa-multiple and twitter17 are the same converter classes and fixture writers as
# mvsa-single and twitter15: their conversions are tested above, their training adds nothing.
TRAINED = [f for f in FORMATS if f not in ("mvsa-multiple", "twitter17")]


def _train_steps_in_process(cfg) -> int:
    """The worker loop's data path without Ray Train: the checked config's Ray Data pipeline
    over the whole train split, what training adds to each batch (candidates from the sticker
    pool, augmentation), forward, backward and an optimizer step per batch. Returns the steps taken."""
    import torch

    from ray_sticker.data.pipeline import build_dataset
    from ray_sticker.models.registry import build_from_config
    from ray_sticker.train.batches import keep_usable, prepare_train_batch
    from ray_sticker.train.inputs import check_inputs

    inputs = check_inputs(cfg)
    cfg = inputs.cfg
    torch.manual_seed(0)
    model = build_from_config(inputs.model_config)
    pool = inputs.load_pool()
    ds = build_dataset(cfg.data.uri, cfg.data.train_split, inputs.train_spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = 0
    for batch in ds.iter_torch_batches(batch_size=cfg.train.batch_size):
        batch, _, empty = keep_usable(batch)
        if empty:
            continue
        batch = prepare_train_batch(batch, pool, cfg, 0, torch.Generator().manual_seed(steps))
        out = model(batch)
        assert torch.isfinite(out.loss), out.losses
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    return steps


@pytest.mark.slow
@pytest.mark.ray
def test_every_converted_release_feeds_its_model(ray_cluster, tmp_path):
    """Each converted fixture through the training data path of a matching tiny model (the
    heads from its label maps); MSAIRS with MMSAIR also one epoch of the training loop with
    DeepSpeed, in local mode (the loop is the same for every dataset: one run shows it end to end)."""
    from ray_sticker.train.trainer import run_training

    cfgs = {}
    for fmt in TRAINED:
        src, _ = _release(tmp_path, fmt)
        out = str(tmp_path / f"{fmt}-dataset")
        manifest, _ = convert(fmt, str(src), out)
        cfgs[fmt] = _training_config(fmt, manifest, out)
        assert _train_steps_in_process(cfgs[fmt]) >= 1, fmt
    final = run_training(cfgs["msairs"]).history[-1]
    assert np.isfinite(final["train_loss"]) and final["global_step"] >= 1
    assert {"val_sentiment_accuracy", "val_intent_accuracy", "val_mean_accuracy"} <= final.keys()


def test_examples_of_skipped_or_unknown_stickers_are_skipped_and_reported():
    from ray_sticker.data.convert.runner import TableReport, _drop_examples_of

    examples = [{"example_id": "ok", "sticker_id": "a", "candidate_ids": ["a", "b"]},
                {"example_id": "lost-candidate", "sticker_id": "a", "candidate_ids": ["a", "c"]},
                {"example_id": "unknown", "sticker_id": "z"}]
    report = TableReport()
    kept = _drop_examples_of(examples, lost={"c"}, known={"a", "b", "c"}, report=report)
    assert [e["example_id"] for e in kept] == ["ok"]
    assert report.read == 2
    assert report.skipped == {"uses a skipped sticker": 1, "sticker not in the release": 1}
    assert report.skipped_rows[0] == {"id": "lost-candidate", "reason": "uses a skipped sticker", "detail": "c"}
