"""The canonical schema, the dataset manifest, and the synthetic dataset's planted signal."""

import collections
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_sticker import storage
from ray_sticker.data import schema, synthetic
from ray_sticker.data.schema import (
    EXAMPLES_SCHEMA,
    MANIFEST,
    SCHEMA_VERSION,
    Manifest,
    SchemaError,
    check_columns,
    conform,
    read_manifest,
    write_manifest,
)

# ---------------------------------------------------------------------------- conform / check_columns


def _minimal_examples(**extra) -> pa.Table:
    """Only the non-nullable columns (in a scrambled order, sentiment as int64) plus ``extra``."""
    return pa.table(
        {
            "sentiment": pa.array([2, None], pa.int64()),
            "context": [["hello", "there"], ["one"]],
            "split": ["train", "test"],
            "example_id": ["a", "b"],
            **extra,
        }
    )


def test_conform_orders_casts_and_fills_nullable_columns():
    out = conform(_minimal_examples(), "examples")
    assert out.schema.equals(EXAMPLES_SCHEMA, check_metadata=False)
    assert out.column_names == EXAMPLES_SCHEMA.names
    assert out.schema.field("sentiment").type == pa.int32()
    assert out["sentiment"].to_pylist() == [2, None]
    assert out["example_id"].to_pylist() == ["a", "b"]
    assert out["context"].to_pylist() == [["hello", "there"], ["one"]]
    for name in ("language", "image", "sticker_id", "sticker_text", "candidate_ids", "intent", "emotion"):
        assert out[name].null_count == 2, name
        assert out.schema.field(name).type == EXAMPLES_SCHEMA.field(name).type


def test_conform_keeps_enrichment_columns_after_canonical_ones():
    table = _minimal_examples(description=["a cat", "a dog"], score=pa.array([0.5, 1.5], pa.float32()))
    out = conform(table, "examples")
    n = len(EXAMPLES_SCHEMA)
    assert out.column_names[:n] == EXAMPLES_SCHEMA.names
    assert out.column_names[n:] == ["description", "score"]
    assert out["description"].to_pylist() == ["a cat", "a dog"]
    assert out.schema.field("score").type == pa.float32()


def test_conform_fails_naming_missing_required_column():
    table = _minimal_examples().drop_columns(["context"])
    with pytest.raises(SchemaError, match=r"examples table: missing column\(s\) context;"):
        conform(table, "examples")
    stickers = pa.table({"sticker_id": ["s1"]})
    with pytest.raises(SchemaError, match=r"missing column\(s\) image"):
        conform(stickers, "stickers")


def test_check_columns_names_every_missing_column_and_what_is_there():
    sch = pa.schema([("example_id", pa.string()), ("context", pa.list_(pa.string()))])
    check_columns(sch, ["example_id", "context"], "here")  # all present: no error
    with pytest.raises(SchemaError) as err:
        check_columns(sch, ["example_id", "image", "sentiment"], "dataset x split 'train'")
    msg = str(err.value)
    assert msg.startswith("dataset x split 'train': ")
    assert "missing column(s) image, sentiment" in msg
    assert "found: example_id, context" in msg


# ---------------------------------------------------------------------------- manifest


def _manifest(**kw) -> Manifest:
    base = dict(
        name="ds",
        task="classify",
        label_maps={"sentiment": ["neutral", "positive", "negative"], "intent": ["a", "b"]},
        splits={"train": 30, "validation": 5},
        stickers=7,
        source_format="synthetic",
        source_version="1",
        extra={"seed": 3, "note": "x"},
    )
    base.update(kw)
    return Manifest(**base)


def test_manifest_dict_round_trip():
    m = _manifest()
    d = m.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION
    assert d["created"]  # a timestamp is filled in
    assert Manifest.from_dict(json.loads(json.dumps(d))) == m


def test_manifest_round_trip_through_local_dir(tmp_path):
    m = _manifest()
    write_manifest(str(tmp_path), m)
    assert (tmp_path / MANIFEST).is_file()
    assert json.loads((tmp_path / MANIFEST).read_text())["name"] == "ds"
    assert read_manifest(str(tmp_path)) == m


@pytest.mark.s3
def test_manifest_round_trip_through_s3(s3_env, s3_bucket):
    uri = f"{s3_bucket}/datasets/one"
    with pytest.raises(FileNotFoundError, match="ray-sticker prepare"):
        read_manifest(uri)
    m = _manifest()
    write_manifest(uri, m)
    # The object really is in the bucket, at <prefix>/manifest.json.
    bucket = s3_bucket[len("s3://"):]
    body = s3_env.client().get_object(Bucket=bucket, Key="datasets/one/manifest.json")["Body"].read()
    assert json.loads(body)["splits"] == {"train": 30, "validation": 5}
    assert read_manifest(uri) == m


def test_from_dict_rejects_wrong_schema_version():
    d = _manifest().to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match=f"schema_version {SCHEMA_VERSION + 1} is not supported"):
        Manifest.from_dict(d, where="s3://b/ds/manifest.json")
    del d["schema_version"]
    with pytest.raises(SchemaError, match="schema_version None is not supported"):
        Manifest.from_dict(d)


def test_from_dict_rejects_unknown_keys():
    d = _manifest().to_dict()
    d["colour"] = "blue"
    d["another"] = 1
    with pytest.raises(SchemaError, match=r"where-x: unknown manifest keys \['another', 'colour'\]"):
        Manifest.from_dict(d, where="where-x")


def test_from_dict_rejects_missing_keys():
    d = _manifest().to_dict()
    del d["label_maps"], d["splits"]
    with pytest.raises(SchemaError, match=r"manifest lacks \['label_maps', 'splits'\]"):
        Manifest.from_dict(d)


def test_read_manifest_without_manifest_points_at_prepare(tmp_path):
    (tmp_path / "examples").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        read_manifest(str(tmp_path))
    assert str(tmp_path) in str(err.value)
    assert f"`ray-sticker prepare synthetic --out {tmp_path}`" in str(err.value)


def test_num_classes_and_error_naming_available_label_maps():
    m = _manifest()
    assert m.num_classes("sentiment") == 3
    assert m.num_classes("intent") == 2
    with pytest.raises(SchemaError, match=r"dataset 'ds' has no label map 'emotion'; it has \['intent', 'sentiment'\]"):
        m.num_classes("emotion")


def test_split_and_sticker_uris():
    assert schema.split_uri("s3://b/ds", "train") == "s3://b/ds/examples/train"
    assert schema.stickers_uri("s3://b/ds/") == "s3://b/ds/stickers"


# ---------------------------------------------------------------------------- synthetic planted signal

CUE_WORDS = {**{w: 1 for w in synthetic.POSITIVE}, **{w: 0 for w in synthetic.NEUTRAL},
             **{w: -1 for w in synthetic.NEGATIVE}}
SIGN_TO_LABEL = {1: synthetic.SENTIMENT_LABELS.index("positive"), 0: synthetic.SENTIMENT_LABELS.index("neutral"),
                 -1: synthetic.SENTIMENT_LABELS.index("negative")}


def _text_cue(context: list[str]) -> int:
    assert len(context) == 1
    cues = [CUE_WORDS[w] for w in context[0].split() if w in CUE_WORDS]
    assert len(cues) == 1, context  # exactly one cue word among filler
    assert all(w in synthetic.VOCABULARY for w in context[0].split())
    return cues[0]


def _image_cue(png: bytes) -> int:
    """The disk is one flat colour: the most frequent pixel value, matched to a cue colour."""
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    pixels = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(np.int64)
    packed = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    mode = int(values[counts.argmax()])
    disk = np.array([mode >> 16, (mode >> 8) & 255, mode & 255])
    dist = {v: int(np.abs(disk - np.array(c)).max()) for v, c in synthetic.CUE_COLOURS.items()}
    cue = min(dist, key=dist.get)
    assert dist[cue] <= 15, (disk, dist)  # colour jitter is at most 15 per channel
    return cue


@pytest.fixture(scope="module")
def rows_3000():
    return synthetic.classify_rows(3000, seed=1)


def test_classify_rows_splits_and_labels(rows_3000):
    t = rows_3000
    assert t.schema.equals(EXAMPLES_SCHEMA, check_metadata=False)
    assert t.num_rows == 3000
    assert len(set(t["example_id"].to_pylist())) == 3000
    counts = collections.Counter(t["split"].to_pylist())
    assert counts == {"train": 2250, "validation": 375, "test": 375}
    assert set(t["sentiment"].to_pylist()) == {0, 1, 2}
    assert t["image"].null_count == 0 and t["sentiment"].null_count == 0


def test_split_proportions_on_an_odd_row_count():
    counts = collections.Counter(synthetic.classify_rows(101, image_size=8)["split"].to_pylist())
    assert sum(counts.values()) == 101
    assert abs(counts["train"] / 101 - 0.75) < 0.02
    assert abs(counts["validation"] / 101 - 0.125) < 0.02
    assert abs(counts["test"] / 101 - 0.125) < 0.02


def test_label_is_sign_of_text_cue_plus_image_cue(rows_3000):
    contexts = rows_3000["context"].to_pylist()
    images = rows_3000["image"].to_pylist()
    labels = rows_3000["sentiment"].to_pylist()
    text_cues, image_cues = [], []
    for context, image, label in zip(contexts, images, labels):
        t, v = _text_cue(context), _image_cue(image)
        assert label == SIGN_TO_LABEL[int(np.sign(t + v))], (context, t, v, label)
        text_cues.append(t)
        image_cues.append(v)
    # Both cues are drawn uniformly from {-1, 0, +1}.
    for cues in (text_cues, image_cues):
        freq = collections.Counter(cues)
        assert set(freq) == {-1, 0, 1}
        assert all(abs(n / len(cues) - 1 / 3) < 0.04 for n in freq.values())

    def best_unimodal_accuracy(cues):
        by_cue = collections.defaultdict(collections.Counter)
        for c, y in zip(cues, labels):
            by_cue[c][y] += 1
        return sum(max(cnt.values()) for cnt in by_cue.values()) / len(labels)

    # Neither modality alone determines the label: the best unimodal classifier gets ~5/9.
    assert best_unimodal_accuracy(text_cues) == pytest.approx(5 / 9, abs=0.06)
    assert best_unimodal_accuracy(image_cues) == pytest.approx(5 / 9, abs=0.06)
    # Both together determine it.
    assert best_unimodal_accuracy(list(zip(text_cues, image_cues))) == 1.0


def test_classify_rows_is_seeded_and_corrupts_on_request():
    a = synthetic.classify_rows(40, seed=5, image_size=16)
    b = synthetic.classify_rows(40, seed=5, image_size=16)
    assert a.equals(b)
    assert not a.equals(synthetic.classify_rows(40, seed=6, image_size=16))
    bad = synthetic.classify_rows(200, seed=5, image_size=16, corrupt_fraction=0.5)
    corrupt = [img for img in bad["image"].to_pylist() if img.startswith(b"not an image")]
    assert 50 < len(corrupt) < 150


def test_make_classify_dataset_writes_shards_and_matching_manifest(tmp_path):
    uri = str(tmp_path / "ds")
    m = synthetic.make_classify_dataset(uri, num_rows=160, seed=2, image_size=16, rows_per_shard=50)
    assert m.task == "classify"
    assert m.label_maps == {"sentiment": synthetic.SENTIMENT_LABELS, "intent": synthetic.INTENT_LABELS}
    assert sum(m.splits.values()) == 160
    assert read_manifest(uri) == m
    for split, n in m.splits.items():
        files = sorted((tmp_path / "ds" / "examples" / split).glob("*.parquet"))
        assert [f.name for f in files] == [f"part-{k:05d}.parquet" for k in range(-(-n // 50))]
        table = pa.concat_tables([pq.read_table(str(f)) for f in files])
        assert table.num_rows == n, split
        assert set(table["split"].to_pylist()) == {split}
        assert table.schema.names == EXAMPLES_SCHEMA.names
    assert storage.exists(storage.join(uri, MANIFEST))


def test_preparing_again_into_the_same_directory_replaces_the_dataset(tmp_path):
    uri = str(tmp_path / "ds")
    synthetic.make_classify_dataset(uri, num_rows=80, seed=0, image_size=8, rows_per_shard=20)
    m = synthetic.make_classify_dataset(uri, num_rows=40, seed=1, image_size=8, rows_per_shard=20)
    assert m.splits == {"train": 30, "validation": 5, "test": 5}
    for split, n in m.splits.items():
        files = sorted((tmp_path / "ds" / "examples" / split).glob("*.parquet"))
        rows = sum(pq.read_metadata(str(f)).num_rows for f in files)
        assert rows == n, f"split '{split}': manifest says {n} rows, its files hold {rows}"
