"""Selection data: candidate sets, the synthetic selection dataset, the pipeline's candidate
indices and the sticker pool's rows."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest

from ray_sticker.data import schema, synthetic_select
from ray_sticker.data.candidates import example_key, example_rng, sample_candidates
from ray_sticker.data.pipeline import (
    DataQualityError,
    PoolSpec,
    PreprocessSpec,
    TextInput,
    count_skips,
    preprocess_batch,
    read_sticker_ids,
)
from ray_sticker.data.pool import StickerPool, read_pool
from ray_sticker.data.text import TINY_TOKENIZER, load_tokenizer

K = synthetic_select.NUM_CANDIDATES


def _batch(table: pa.Table) -> dict[str, np.ndarray]:
    return {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("select") / "ds")
    manifest = synthetic_select.make_select_dataset(uri, num_rows=64, seed=5, image_size=24)
    return uri, manifest


def test_sample_candidates_positive_once_never_a_distractor_and_seeded():
    pool = [f"s{i}" for i in range(30)]
    for seed in range(20):
        cands = sample_candidates("s7", pool, 10, np.random.default_rng(seed), exclude=["s8"])
        assert len(cands) == len(set(cands)) == 10
        assert cands.count("s7") == 1 and "s8" not in cands
    a = sample_candidates("s7", pool, 10, example_rng("ex-1", 0))
    assert a == sample_candidates("s7", pool, 10, example_rng("ex-1", 0))
    assert a != sample_candidates("s7", pool, 10, example_rng("ex-2", 0))
    positions = {sample_candidates("s7", pool, 10, np.random.default_rng(s)).index("s7") for s in range(40)}
    assert len(positions) > 5  # the positive is not always in the same slot
    with pytest.raises(ValueError, match="pool offers 2"):
        sample_candidates("s0", ["s0", "s1", "s2"], 4, np.random.default_rng(0))


def test_synthetic_selection_dataset_is_canonical_and_well_posed(dataset):
    uri, manifest = dataset
    assert manifest.task == "select" and manifest.stickers == 7 * 4 * 3
    assert manifest.label_maps["emotion"] == synthetic_select.EMOTION_LABELS
    stickers = pa.concat_tables([pa.parquet.read_table(f"{uri}/stickers/part-00000.parquet")])
    assert stickers.schema.names[:len(schema.STICKERS_SCHEMA)] == schema.STICKERS_SCHEMA.names
    labels = {r["sticker_id"]: (r["emotion"], r["intent"]) for r in stickers.to_pylist()}
    rows = pa.parquet.read_table(f"{uri}/examples/train").to_pylist()
    assert rows
    for r in rows:
        cands = r["candidate_ids"]
        assert len(cands) == K == len(set(cands)) and cands.count(r["sticker_id"]) == 1
        assert labels[r["sticker_id"]] == (r["emotion"], r["intent"])
        others = [labels[c] for c in cands if c != r["sticker_id"]]
        # No distractor shares both labels; 3 share only the emotion, 3 only the intention.
        assert (r["emotion"], r["intent"]) not in others
        assert sum(e == r["emotion"] for e, _ in others) == 3
        assert sum(i == r["intent"] for _, i in others) == 3
        text = " ".join(r["context"])
        # Sticker-side words never occur in dialogues (no surface matching).
        for phrase in synthetic_select.FACIAL + synthetic_select.GESTURE + synthetic_select.VERBAL:
            assert phrase not in text.split()
        assert r["comet_xReact"] == f"feels {synthetic_select.REACT_WORDS[r['emotion']]}"


def test_tiny_tokenizer_knows_every_selection_word():
    tok = load_tokenizer(TINY_TOKENIZER)
    for word in synthetic_select.VOCABULARY:
        assert tok.unk_token_id not in tok(word, add_special_tokens=False)["input_ids"], word


def test_pipeline_candidate_indices_and_targets(dataset):
    uri, _ = dataset
    ids = read_sticker_ids(uri)
    table = pa.parquet.read_table(f"{uri}/examples/train")
    spec = PreprocessSpec(labels=(), aux_labels=(("emotion", 7),), tokenizer=TINY_TOKENIZER, max_text_length=32,
                          num_candidates=K, sticker_ids=tuple(ids))
    assert spec.columns() == ["example_id", "context", "sticker_id", "candidate_ids", "emotion"]
    out = preprocess_batch(_batch(table), spec)
    assert not out["skip"].any()
    assert out["candidate_idx"].shape == (table.num_rows, K) and "pixel_values" not in out
    for i, row in enumerate(table.to_pylist()):
        assert [ids[j] for j in out["candidate_idx"][i]] == row["candidate_ids"]
        assert row["candidate_ids"][out["target"][i]] == row["sticker_id"]
    assert out["label_emotion"].tolist() == table["emotion"].to_pylist()


def test_pipeline_draws_candidates_for_rows_without_and_skips_bad_rows(dataset):
    uri, _ = dataset
    ids = tuple(read_sticker_ids(uri))
    table = pa.parquet.read_table(f"{uri}/examples/train").slice(0, 6)
    batch = _batch(table)
    batch["candidate_ids"] = np.array([None, None, ["st-000"] * 3, list(table["candidate_ids"][3].as_py()[:-1]) +
                                       ["nope"], None, None], dtype=object)
    batch["sticker_id"] = np.array(list(batch["sticker_id"][:4]) + ["unknown", None], dtype=object)
    batch["emotion"] = np.array([1, None, 2, 3, 4, 99], dtype=object)
    spec = PreprocessSpec(labels=(), aux_labels=(("emotion", 7),), num_candidates=K, sticker_ids=ids, seed=3,
                          use_image=False)
    out = preprocess_batch(batch, spec)
    assert out["skip"].tolist() == [0, 0, 7, 5, 5, 3]
    assert out["label_emotion"][:2].tolist() == [1, -1]  # an optional label may be missing
    drawn = [ids[j] for j in out["candidate_idx"][0]]
    assert len(set(drawn)) == K and drawn[out["target"][0]] == batch["sticker_id"][0]
    again = preprocess_batch(batch, spec)  # seeded by example id: stable
    np.testing.assert_array_equal(again["candidate_idx"][:2], out["candidate_idx"][:2])
    # drawn sets carry their example's key (training may redraw them), stored sets -1
    assert out["candidate_key"][:2].tolist() == [example_key(str(e)) for e in batch["example_id"][:2]]
    assert out["candidate_key"][2:4].tolist() == [-1, -1]
    assert count_skips(out["skip"]) == {"wrong number of candidates": 1, "unknown sticker id": 2,
                                        "label outside the label map": 1}


def test_separate_and_gated_text_inputs(dataset):
    uri, _ = dataset
    table = pa.parquet.read_table(f"{uri}/examples/train").slice(0, 3)
    rel = ("comet_xIntent", "comet_xNeed", "comet_xWant", "comet_xEffect")
    spec = PreprocessSpec(labels=(), use_image=False, texts=(
        TextInput("text", ("context", "comet_xReact"), TINY_TOKENIZER, 40),
        TextInput("knowledge", rel, TINY_TOKENIZER, 8, separate=True)))
    out = preprocess_batch(_batch(table), spec)
    assert out["knowledge_input_ids"].shape == (3, 4, 8)
    tok = load_tokenizer(TINY_TOKENIZER)
    first = tok.decode(out["knowledge_input_ids"][0, 0], skip_special_tokens=True)
    assert first == table["comet_xIntent"][0].as_py()
    joined = tok.decode(out["input_ids"][0], skip_special_tokens=False)
    assert table["comet_xReact"][0].as_py() in joined and "[SEP]" in joined


def test_sticker_pool_in_the_given_order_with_texts_and_labels(dataset):
    uri, _ = dataset
    ids = read_sticker_ids(uri)[::-1]
    spec = PoolSpec(texts=(TextInput("desc", ("desc_gesture", "desc_posture", "desc_facial", "desc_verbal"),
                                     TINY_TOKENIZER, 6, separate=True),), image_size=16)
    pool = StickerPool(read_pool(uri, spec, ids)).rows(np.arange(len(ids)))
    n = len(ids)
    assert pool["pixel_values"].shape == (n, 3, 16, 16) and pool["pixel_values"].dtype == np.uint8
    assert pool["desc_input_ids"].shape == (n, 4, 6)
    e, i = int(ids[0][3]), int(ids[0][4])  # st-<e><i><k>
    assert pool["emotion"][0] == e and pool["intent"][0] == i
    with pytest.raises(DataQualityError, match="lacks stickers"):
        read_pool(uri, spec, ids + ["ghost"])


def test_corrupt_sticker_images_fail_above_the_threshold(tmp_path):
    stickers = synthetic_select.stickers_table(1, image_size=16)
    images = stickers["image"].to_pylist()
    images[0] = b"broken"
    stickers = stickers.set_column(stickers.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    (tmp_path / "stickers").mkdir()
    pa.parquet.write_table(stickers, tmp_path / "stickers" / "part-00000.parquet")
    ids = read_sticker_ids(str(tmp_path))
    with pytest.raises(DataQualityError, match="1 of 28 images unusable"):
        read_pool(str(tmp_path), PoolSpec(image_size=8), ids, max_corrupt_fraction=0.0)
    pool = StickerPool(read_pool(str(tmp_path), PoolSpec(image_size=8), ids, max_corrupt_fraction=0.05))
    pixels = pool.rows(np.array([[0, 1], [1, 0]]))["pixel_values"]
    assert pixels.shape == (2, 2, 3, 8, 8) and (pixels[0, 0] == 128).all() and (pixels[1, 1] == 128).all()
    assert not (pixels[0, 1] == 128).all()
