"""Ray Data ingest without Ray: ``preprocess_batch`` on numpy batches, skip codes, the
offline tokenizer, and the up-front schema checks of ``split_schema`` / ``check_inputs``."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_sticker.config import load_config
from ray_sticker.data import schema, synthetic
from ray_sticker.data.pipeline import (
    SKIP_REASONS,
    DataQualityError,
    PreprocessSpec,
    count_skips,
    preprocess_batch,
    split_schema,
)
from ray_sticker.data.text import TINY_TOKENIZER, load_tokenizer
from ray_sticker.train.inputs import check_inputs

SIZE, LENGTH = 16, 20
SPEC = PreprocessSpec(labels=(("sentiment", 3),), tokenizer=TINY_TOKENIZER, max_text_length=LENGTH,
                      image_size=SIZE)


def _batch(table: pa.Table) -> dict[str, np.ndarray]:
    """A numpy batch as Ray Data hands it to ``map_batches``."""
    return {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}


@pytest.fixture(scope="module")
def rows():
    return synthetic.classify_rows(12, seed=3, image_size=24)


def test_outputs_keys_dtypes_and_shapes(rows):
    out = preprocess_batch(_batch(rows), SPEC)
    n = rows.num_rows
    assert set(out) == {"pixel_values", "input_ids", "attention_mask", "label_sentiment", "skip", "truncated"}
    assert out["pixel_values"].dtype == np.uint8 and out["pixel_values"].shape == (n, 3, SIZE, SIZE)
    assert out["input_ids"].dtype == np.int64 and out["input_ids"].shape == (n, LENGTH)
    assert out["attention_mask"].dtype == np.int64 and out["attention_mask"].shape == (n, LENGTH)
    assert out["label_sentiment"].dtype == np.int64
    assert out["label_sentiment"].tolist() == rows["sentiment"].to_pylist()
    assert out["skip"].dtype == np.int8 and not out["skip"].any()
    assert count_skips(out["skip"]) == {}
    # Real pixels (a noisy background and a bright disk), not the zero fill of skipped rows.
    assert (out["pixel_values"].reshape(n, -1).max(axis=1) > 100).all()
    tok = load_tokenizer(TINY_TOKENIZER)
    assert (out["input_ids"][:, 0] == tok.cls_token_id).all()
    assert (out["attention_mask"].sum(axis=1) >= 7).all()  # [CLS] + >= 5 words + [SEP]


def test_preprocessing_is_deterministic(rows):
    a = preprocess_batch(_batch(rows), SPEC)
    b = preprocess_batch(_batch(rows), SPEC)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_skip_codes_for_unusable_rows(rows):
    data = rows.to_pydict()
    data["image"][1] = b"\x89PNG but not really an image"
    data["image"][2] = None
    data["image"][3] = b""
    data["sentiment"][4] = 3  # outside the 3-class map
    data["sentiment"][5] = -1
    data["sentiment"][6] = None
    table = schema.conform(pa.table(data), "examples")
    out = preprocess_batch(_batch(table), SPEC)
    assert out["skip"].tolist() == [0, 1, 2, 2, 3, 3, 4, 0, 0, 0, 0, 0]
    labels = out["label_sentiment"]
    assert labels[4] == labels[5] == labels[6] == -1
    good = [0, 1, 2, 3, 7, 8, 9, 10, 11]
    assert labels[good].tolist() == [rows["sentiment"][i].as_py() for i in good]
    # Rows with unusable images keep a zero image; the text is still tokenized.
    assert not out["pixel_values"][1:4].any()
    assert out["pixel_values"][0].any()
    assert out["attention_mask"][1:4].sum() > 0
    assert count_skips(out["skip"]) == {"corrupt image": 1, "missing image": 2,
                                        "label outside the label map": 2, "missing label": 1}


def test_skip_codes_with_object_label_column(rows):
    """A label column holding Python objects (None for missing) is handled like nulls."""
    batch = _batch(rows.slice(0, 3))
    batch["sentiment"] = np.array([None, 1, 5], dtype=object)
    out = preprocess_batch(batch, SPEC)
    assert out["skip"].tolist() == [4, 0, 3]
    assert out["label_sentiment"].tolist() == [-1, 1, -1]


def test_count_skips():
    skip = np.array([0, 1, 1, 2, 0, 3, 4, 4, 4], dtype=np.int8)
    assert count_skips(skip) == {SKIP_REASONS[1]: 2, SKIP_REASONS[2]: 1, SKIP_REASONS[3]: 1, SKIP_REASONS[4]: 3}
    assert count_skips(np.zeros(4, dtype=np.int8)) == {}


def test_text_only_and_image_only_specs(rows):
    text_only = PreprocessSpec(labels=SPEC.labels, tokenizer=TINY_TOKENIZER, max_text_length=LENGTH, use_image=False)
    batch = _batch(rows)
    del batch["image"]  # the text-only model does not read images at all
    out = preprocess_batch(batch, text_only)
    assert "pixel_values" not in out
    assert out["input_ids"].shape == (rows.num_rows, LENGTH)
    assert text_only.columns() == ["example_id", "context", "sentiment"]

    image_only = PreprocessSpec(labels=SPEC.labels, tokenizer=None, image_size=SIZE)
    batch = _batch(rows)
    del batch["context"]
    out = preprocess_batch(batch, image_only)
    assert "input_ids" not in out and "attention_mask" not in out
    assert out["pixel_values"].shape == (rows.num_rows, 3, SIZE, SIZE)
    assert image_only.columns() == ["example_id", "image", "sentiment"]
    assert SPEC.columns() == ["example_id", "context", "image", "sentiment"]


def test_context_turns_are_joined_with_sep():
    table = schema.conform(pa.table({
        "example_id": ["a", "b"], "split": ["train", "train"],
        "context": [["my friends", "sunny day"], ["the coffee"]],
        "sentiment": pa.array([1, 0], pa.int32()),
    }), "examples")
    spec = PreprocessSpec(labels=SPEC.labels, tokenizer=TINY_TOKENIZER, max_text_length=10, use_image=False)
    out = preprocess_batch(_batch(table), spec)
    tok = load_tokenizer(TINY_TOKENIZER)
    ids = tok.convert_tokens_to_ids(["[CLS]", "my", "friends", "[SEP]", "sunny", "day", "[SEP]"])
    assert out["input_ids"][0].tolist() == ids + [tok.pad_token_id] * 3
    assert out["attention_mask"][0].tolist() == [1] * 7 + [0] * 3
    assert out["input_ids"][1].tolist()[:4] == tok.convert_tokens_to_ids(["[CLS]", "the", "coffee", "[SEP]"])


def test_long_text_is_truncated_to_max_length():
    words = " ".join(synthetic.FILLER * 3)
    table = schema.conform(pa.table({"example_id": ["a"], "split": ["train"], "context": [[words]],
                                     "sentiment": pa.array([0], pa.int32())}), "examples")
    spec = PreprocessSpec(labels=SPEC.labels, tokenizer=TINY_TOKENIZER, max_text_length=8, use_image=False)
    out = preprocess_batch(_batch(table), spec)
    tok = load_tokenizer(TINY_TOKENIZER)
    assert out["input_ids"].shape == (1, 8)
    assert out["attention_mask"].tolist() == [[1] * 8]
    assert out["input_ids"][0, -1] == tok.sep_token_id


def test_tiny_tokenizer_knows_every_synthetic_word():
    tok = load_tokenizer(TINY_TOKENIZER)
    assert tok.sep_token == "[SEP]" and tok.unk_token == "[UNK]"
    for word in synthetic.VOCABULARY:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, (word, tok.convert_ids_to_tokens(ids))
        assert tok.convert_ids_to_tokens(ids) == [word]
    # A whole synthetic sentence has no [UNK] either.
    text = synthetic.classify_rows(1, seed=9, image_size=8)["context"][0][0].as_py()
    assert tok.unk_token_id not in tok(text)["input_ids"]


# ---------------------------------------------------------------------------- up-front schema checks


def _write_dataset(uri: str, drop: tuple[str, ...] = (), label_map=None, rows: int = 48) -> None:
    table = synthetic.classify_rows(rows, seed=4, image_size=8)
    if drop:
        table = table.drop_columns(list(drop))
    counts = synthetic.write_examples(table, uri)
    schema.write_manifest(uri, schema.Manifest(
        name="hand-made", task="classify",
        label_maps={"sentiment": label_map or synthetic.SENTIMENT_LABELS}, splits=counts))


def test_split_schema_missing_and_empty_split(tmp_path):
    uri = str(tmp_path / "ds")
    _write_dataset(uri)
    assert split_schema(uri, "train").names == schema.EXAMPLES_SCHEMA.names
    with pytest.raises(FileNotFoundError, match="split 'dev' not found"):
        split_schema(uri, "dev")
    (tmp_path / "ds" / "examples" / "empty").mkdir()
    with pytest.raises(DataQualityError, match="split 'empty' has no Parquet files"):
        split_schema(uri, "empty")


@pytest.mark.s3
def test_split_schema_on_s3(s3_env, s3_bucket):
    uri = f"{s3_bucket}/datasets/noimage"
    table = synthetic.classify_rows(24, seed=4, image_size=8).drop_columns(["image"])
    synthetic.write_examples(table, uri)
    found = split_schema(uri, "train")
    assert "image" not in found.names and "context" in found.names
    with pytest.raises(schema.SchemaError, match=r"missing column\(s\) image;"):
        schema.check_columns(found, SPEC.columns(), uri)
    with pytest.raises(FileNotFoundError, match=f"split 'dev' not found: {uri}/examples/dev"):
        split_schema(uri, "dev")


def test_dataset_without_image_column_fails_naming_it(tmp_path):
    uri = str(tmp_path / "noimage")
    _write_dataset(uri, drop=("image",))
    found = split_schema(uri, "train")
    assert "image" not in found.names
    with pytest.raises(schema.SchemaError, match=r"missing column\(s\) image; found: example_id"):
        schema.check_columns(found, SPEC.columns(), "here")
    cfg = load_config("m2sa-tiny", [f"data.uri={uri}", "data.synthetic_if_missing=false"])
    with pytest.raises(schema.SchemaError) as err:
        check_inputs(cfg)
    assert f"dataset {uri} split 'train'" in str(err.value)
    assert "part-00000.parquet lacks column(s) image; found: example_id" in str(err.value)
    # The text-only baseline does not need the image column.
    inputs = check_inputs(load_config("text-only-tiny", [f"data.uri={uri}", "data.synthetic_if_missing=false"]))
    assert inputs.manifest.name == "hand-made" and inputs.model_config["arch"] == "text-only"


def test_check_inputs_rejects_head_size_different_from_label_map(tmp_path):
    uri = str(tmp_path / "two-class")
    _write_dataset(uri, label_map=["negative", "positive"])
    cfg = load_config("m2sa-tiny", [f"data.uri={uri}", "data.synthetic_if_missing=false"])
    with pytest.raises(schema.SchemaError, match="head 'sentiment' has 3 classes but .* has 2"):
        check_inputs(cfg)


def test_check_inputs_on_a_good_dataset_and_a_missing_one(tmp_path):
    uri = str(tmp_path / "good")
    _write_dataset(uri)
    inputs = check_inputs(load_config("m2sa-tiny", [f"data.uri={uri}", "data.synthetic_if_missing=false"]))
    assert inputs.train_rows == 36 and inputs.model_config["heads"] == {"sentiment": 3}
    assert inputs.spec.columns() == ["example_id", "context", "image", "sentiment", "language"]  # data.eval_by
    with pytest.raises(schema.SchemaError, match="ds_language"):  # a group column the dataset lacks
        check_inputs(load_config("m2sa-tiny", [f"data.uri={uri}", "data.eval_by=ds_language"]))
    with pytest.raises(ValueError, match="data.eval_by='language': metrics per group are for classification"):
        check_inputs(load_config("eigml-tiny", [f"data.uri={tmp_path / 'select'}", "data.eval_by=language"]))
    with pytest.raises(FileNotFoundError, match="ray-sticker prepare"):
        check_inputs(load_config("m2sa-tiny", [f"data.uri={tmp_path / 'none'}", "data.synthetic_if_missing=false"]))
    with pytest.raises(ValueError, match="has no split 'dev'"):
        check_inputs(load_config("m2sa-tiny", [f"data.uri={uri}", "data.synthetic_if_missing=false",
                                               "data.eval_split=dev"]))
    # Checked for evaluation (one split, an export's architecture): the split is checked, the
    # training-only checks are not, and a missing dataset is never replaced by a synthetic one.
    evaluated = check_inputs(load_config("m2sa-tiny", [f"data.uri={uri}", "data.train_split=none"]),
                             model_config=inputs.model_config, split="test")
    assert evaluated.spec == inputs.spec
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match="ray-sticker prepare"):
        check_inputs(load_config("m2sa-tiny", [f"data.uri={missing}"]), split="test")
    assert not missing.exists()


def test_group_values_travel_as_bytes_and_a_too_long_one_fails(rows):
    from ray_sticker.data.pipeline import GROUP_BYTES, decode_texts

    spec = PreprocessSpec(labels=(("sentiment", 3),), tokenizer=TINY_TOKENIZER, max_text_length=LENGTH,
                          image_size=SIZE, group_column="language")
    assert spec.columns()[-1] == "language" and spec.row_bytes() == SPEC.row_bytes() + GROUP_BYTES
    batch = _batch(rows)
    batch["language"] = np.array(["en", None, "pt-BR"] * 4, dtype=object)
    out = preprocess_batch(batch, spec)
    assert out["group_bytes"].shape == (12, GROUP_BYTES) and out["group_bytes"].dtype == np.uint8
    assert decode_texts(out["group_bytes"])[:3] == ["en", "", "pt-BR"]
    batch["language"][5] = "x" * (GROUP_BYTES + 1)
    with pytest.raises(DataQualityError, match=f"example syn-000005: language='x+' is longer than {GROUP_BYTES}"):
        preprocess_batch(batch, spec)


def test_an_empty_batch_gives_empty_arrays(rows):
    """Ray Data hands over an empty block for an empty Parquet shard."""
    out = preprocess_batch(_batch(rows.slice(0, 0)), SPEC)
    assert out["pixel_values"].shape == (0, 3, SIZE, SIZE) and out["input_ids"].shape == (0, LENGTH)
    assert out["skip"].shape == out["truncated"].shape == (0,)


def test_texts_cut_at_max_length_are_counted():
    table = schema.conform(pa.table({
        "example_id": ["long", "fits", "short"], "split": ["train"] * 3,
        "context": [[" ".join(synthetic.FILLER * 3)], ["sunny day coffee friends"], ["hi"]],
        "sentiment": pa.array([0, 1, 2], pa.int32()),
    }), "examples")
    tok = load_tokenizer(TINY_TOKENIZER)
    fits = len(tok("sunny day coffee friends")["input_ids"])  # exactly max_length tokens: not cut
    spec = PreprocessSpec(labels=SPEC.labels, tokenizer=TINY_TOKENIZER, max_text_length=fits, use_image=False)
    out = preprocess_batch(_batch(table), spec)
    assert out["truncated"].tolist() == [1, 0, 0]
    assert out["input_ids"][0, -1] == tok.sep_token_id  # the cut text still ends with [SEP]
    assert out["input_ids"][1].tolist() == tok("sunny day coffee friends")["input_ids"]
    assert not out["skip"].any()  # cut, not dropped


def test_raw_text_cut_at_max_bytes_is_counted():
    from ray_sticker.data.pipeline import TextInput

    table = schema.conform(pa.table({
        "example_id": ["a", "b"], "split": ["train"] * 2, "context": [["x" * 40], ["short"]],
        "sentiment": pa.array([0, 1], pa.int32()),
    }), "examples")
    spec = PreprocessSpec(labels=SPEC.labels, use_image=False,
                          texts=(TextInput("prompt", ("context",), "", 16, raw=True),))
    out = preprocess_batch(_batch(table), spec)
    assert out["truncated"].tolist() == [1, 0] and out["prompt_bytes"].shape == (2, 1, 16)


def test_an_empty_evaluation_split_is_rejected_before_training(tmp_path):
    from ray_sticker.config import ConfigError

    data = tmp_path / "d"
    synthetic.make_classify_dataset(str(data), num_rows=40, image_size=16)
    manifest = schema.read_manifest(str(data))
    manifest.splits["validation"] = 0
    schema.write_manifest(str(data), manifest)
    cfg = load_config("m2sa-tiny", [f"data.uri={data}", "data.synthetic_if_missing=false"]).resolved()
    with pytest.raises(schema.SchemaError, match="split 'validation': the manifest says 0 rows, its 1 shard"):
        check_inputs(cfg)  # the manifest disagrees with the shards
    for shard in (data / "examples" / "validation").glob("*.parquet"):
        pq.write_table(pq.read_table(shard).slice(0, 0), shard)
    with pytest.raises(ConfigError, match="split 'validation' of dataset .* has no rows"):
        check_inputs(cfg)


def test_row_bytes_is_what_a_preprocessed_row_holds(rows):
    """The size estimate that decides whether the train split is cached (data.cache_train)."""
    out = preprocess_batch(_batch(rows), SPEC)
    assert SPEC.row_bytes() * rows.num_rows == sum(v.nbytes for v in out.values())


def test_skip_counter_fails_above_the_threshold_naming_counts_and_reasons():
    from ray_sticker.train.batches import RowCodes, SkipCounter

    counter = SkipCounter()
    counter.add(RowCodes(np.array([0, 1, 1, 3, 0], dtype=np.int8), np.array([1, 0, 0, 0, 1], dtype=bool)))
    assert counter.check(0.6, "train epoch 0") == {
        "rows_seen": 5, "rows_skipped": 3, "rows_text_truncated": 2,
        "skipped[corrupt image]": 2, "skipped[label outside the label map]": 1}
    with pytest.raises(DataQualityError, match=r"train epoch 0: skipped 3 of 5 rows \(60.0%: 2 corrupt image, "
                                               r"1 label outside the label map\), above data.max_corrupt_fraction=0.5"):
        counter.check(0.5, "train epoch 0")
