"""MLLM baselines: prompts, answer parsing, answer-only labels, the model in and out of
training mode, and the metrics of unparsed answers (fast, no Ray)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from ray_sticker.data.pipeline import decode_texts, encode_texts
from ray_sticker.mllm import answers, prompts
from ray_sticker.mllm.loading import load_vlm, vlm_inputs
from ray_sticker.models.registry import build_from_config, get_model_config
from ray_sticker.train import metrics as M
from ray_sticker.train.evaluation import Evaluation, compute_metrics

HEADS = {"sentiment": 3, "intent": 20}
NAMES = {"sentiment": ["neutral", "positive", "negative"],
         "intent": ["Complain", "Praise", "Agree", "Compromise", "Query", "Joke", "Oppose", "Inform", "Ask for help",
                    "Greet", "Taunt", "Introduce", "Guess", "Leave", "Advise", "Flaunt", "Criticize", "Thank",
                    "Comfort", "Apologize"]}


@pytest.mark.parametrize("answer, expected", [
    ("sentiment: 1, intent: 7", (1, 7)),
    ('{"sentiment": 2, "intent": 19}', (2, 19)),
    ("Sentiment = 0; Intent = 3", (0, 3)),
    ("The sentiment is 2 and the intent is 11.", (2, 11)),
    ("1, 7", (1, 7)),
    ("1 7", (1, 7)),
    ("sentiment: positive, intent: Ask for help", (1, 8)),
    ("sentiment: negative\nintent: comfort", (2, 18)),
    ("sentiment: 5, intent: 7", (None, 7)),  # out of the label map
    ("sentiment: 1", (1, None)),
    ("I cannot tell from this sticker.", (None, None)),
    ("1, 7, 3", (None, None)),  # one number per head or nothing
    ("", (None, None)),
])
def test_parse_labels(answer, expected):
    got = answers.parse_labels(answer, HEADS, NAMES)
    assert (got["sentiment"], got["intent"]) == expected


@pytest.mark.parametrize("answer, expected", [
    ("3", 2), ("Sticker 3.", 2), ("(10)", 9), ("the third one", 2), ("0", None), ("11", None), ("none", None), ("", None),
])
def test_parse_choice(answer, expected):
    assert answers.parse_choice(answer, 10) == expected


def test_prompts_spell_out_the_label_maps_and_answers_round_trip():
    q = prompts.classify_prompt("明天见\n好的", "加油", HEADS, NAMES)
    assert "sentiment (0 = neutral, 1 = positive, 2 = negative)" in q
    assert "19 = Apologize" in q and "Text on the sticker: 加油" in q and "明天见" in q
    assert 'in the form "sentiment: <number>, intent: <number>"' in q
    assert "Text on the sticker" not in prompts.classify_prompt("hi", "  ", HEADS, NAMES)
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = {"sentiment": int(rng.integers(3)), "intent": int(rng.integers(20))}
        assert answers.parse_labels(prompts.classify_answer(labels), HEADS, NAMES) == labels
        k = int(rng.integers(10))
        assert answers.parse_choice(prompts.select_answer(k), 10) == k
    assert "numbered 1 to 10" in prompts.select_prompt("hello", 10)


def test_raw_text_bytes_round_trip_and_cut_at_a_character_boundary():
    texts = ["hello", "相信自己，明天会更好", ""]
    assert decode_texts(encode_texts(texts, 64)) == texts
    cut = decode_texts(encode_texts(["相信自己"], 7))  # 3 bytes per character: 2 fit
    assert cut == ["相信"]
    assert decode_texts(torch.from_numpy(encode_texts(texts, 64).reshape(3, 1, 64))) == [[t] for t in texts]


def test_unparsed_predictions_count_wrong_like_sklearn():
    y = np.array([0, 1, 2, 1, 0, 2, 1])
    p = np.array([0, -1, 2, 1, -1, 1, 1])  # -1: unreadable answers
    got = M.classification_metrics(y, p, 3)
    present = [0, 1, 2]  # classes in the labels or the (readable) predictions
    assert got["accuracy"] == pytest.approx(4 / 7)
    assert got["weighted_f1"] == pytest.approx(f1_score(y, p, labels=present, average="weighted"))
    assert got["macro_f1"] == pytest.approx(f1_score(y, p, labels=present, average="macro"))


def test_evaluation_reports_unparsed_answers():
    from ray_sticker.models.output import ModelOutput

    acc = Evaluation({"sentiment": 3}, select=False)
    batch = {"label_sentiment": torch.tensor([0, 1, 2, 1])}
    out = ModelOutput(loss=torch.tensor(0.5), logits={"sentiment": torch.zeros(4, 3)},
                      predictions={"sentiment": torch.tensor([0, -1, 2, -1])},
                      unparsed=torch.tensor([False, True, False, True]))
    acc.add(batch, out)
    metrics, artifacts = compute_metrics(acc.local_arrays(), {"sentiment": 3})
    assert metrics["unparsed"] == 2 and metrics["unparsed_fraction"] == 0.5
    assert metrics["accuracy"] == 0.5
    assert artifacts["confusion_sentiment"].sum() == 2  # only readable answers are in the matrix


@pytest.mark.parametrize("uri", ["builtin:tiny-llava", "builtin:tiny-qwen2-vl"])
def test_labels_mark_exactly_the_answer_tokens(uri):
    model, processor = load_vlm(uri)
    images = [[np.full((40, 30, 3), 200, np.uint8)], [np.zeros((32, 32, 3), np.uint8)] * 2]
    enc = vlm_inputs(processor, ["which sentiment", "which one of the two"], images, model,
                     answers=["sentiment: 1, intent: 3", "2"])
    tok = processor.tokenizer
    for i, answer in enumerate(["sentiment: 1, intent: 3", "2"]):
        marked = enc["labels"][i][enc["labels"][i] != -100]
        assert tok.decode(marked, skip_special_tokens=True).replace(" ", "") == answer.replace(" ", "")
        assert tok.convert_ids_to_tokens(int(marked[-1])) == tok.eos_token
    assert model(**enc).loss.item() > 0


def _classify_batch(n=4, size=32):
    rng = np.random.default_rng(0)
    prompt = np.stack([encode_texts(["we went home today", "thanks"], 512) for _ in range(n)])
    return {"pixel_values": torch.from_numpy(rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8)),
            "prompt_bytes": torch.from_numpy(prompt),
            "label_sentiment": torch.tensor([0, 1, 2, 1][:n]), "label_intent": torch.tensor([3, 0, 1, 2][:n])}


def _mllm(name="mllm-tiny", **overrides):
    cfg = get_model_config(name, overrides)
    cfg["label_names"] = {"sentiment": ["neutral", "positive", "negative"], "intent": ["a", "b", "c", "d"]}
    return build_from_config(cfg)


def test_mllm_learns_the_answer_format_and_evaluation_parses_it():
    torch.manual_seed(0)
    model = _mllm()
    batch = _classify_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = model(batch)
        first = first if first is not None else out.loss.item()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss.item() < first / 5
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert len(out.answers) == 4 and out.unparsed.dtype == torch.bool
    assert not out.unparsed.any(), out.answers  # the format is learnt on these 4 rows
    assert ((out.predictions["sentiment"] >= 0) & (out.predictions["sentiment"] < 3)).all()
    assert out.logits["intent"].shape == (4, 4)


def test_lora_trains_only_the_adapters():
    model = _mllm(lora={"r": 4, "alpha": 8})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("language_model" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)
    out = model(_classify_batch(2))
    out.loss.backward()
    with pytest.raises(ValueError, match="unknown lora keys \\['rank'\\]"):
        _mllm(lora={"rank": 4})


def test_selection_baseline_scores_the_chosen_candidate():
    model = _mllm("mllm-select-tiny").eval()
    rng = np.random.default_rng(1)
    n, k = 2, 4
    batch = {"candidate_pixel_values": torch.from_numpy(rng.integers(0, 255, (n, k, 3, 32, 32), dtype=np.uint8)),
             "prompt_bytes": torch.from_numpy(np.stack([encode_texts(["see you"], 512)] * n)),
             "candidate_idx": torch.arange(n * k).reshape(n, k), "target": torch.tensor([1, 3])}
    with torch.no_grad():
        out = model(batch)
    assert out.scores.shape == (n, k)
    for row, unparsed in zip(out.scores, out.unparsed):  # one chosen candidate, or none (ranked last)
        assert row.sum().item() == (0.0 if unparsed else 1.0)


@pytest.mark.s3
def test_vision_language_weights_load_from_s3_and_a_local_directory(s3_env, s3_bucket):
    from ray_sticker import storage
    from ray_sticker.mllm.loading import generate_texts
    from ray_sticker.mllm.tiny import builtin_dir

    local = builtin_dir("builtin:tiny-llava")
    storage.upload_dir(local, f"{s3_bucket}/models/tiny-llava")
    image = [[np.full((32, 32, 3), 90, np.uint8)]]
    answers_by_source = []
    for uri in (f"{s3_bucket}/models/tiny-llava", local):
        model, processor = load_vlm(uri)
        answers_by_source.append(generate_texts(model, processor, ["describe the gesture"], image, max_new_tokens=4))
    assert answers_by_source[0] == answers_by_source[1]  # the same weights, wherever they came from
    with pytest.raises(FileNotFoundError, match=f"not found on S3 endpoint .*{s3_bucket}/models/missing"):
        load_vlm(f"{s3_bucket}/models/missing")


def test_zero_shot_evaluation_of_the_built_model_runs_and_parses(tmp_path):
    """What ``train.epochs=0`` runs on each worker, here in one process: the untrained model
    generates over a whole split; every answer is parsed or counted as unparsed."""
    import pyarrow.dataset as pads

    from ray_sticker.config import load_config
    from ray_sticker.data import schema
    from ray_sticker.data.pipeline import preprocess_batch
    from ray_sticker.data.synthetic import make_classify_dataset
    from ray_sticker.train.inputs import check_inputs

    data = str(tmp_path / "data")
    make_classify_dataset(data, num_rows=160, image_size=32, seed=2)  # 20 validation rows
    cfg = load_config("mllm-tiny", [f"data.uri={data}", "train.epochs=0"])
    inputs = check_inputs(cfg)
    model_cfg, spec = inputs.model_config, inputs.spec
    table = pads.dataset(schema.split_uri(schema.tables_uri(data), "validation"), format="parquet").to_table(
        columns=spec.columns())
    rows = preprocess_batch({c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}, spec)
    model = build_from_config(model_cfg).eval()
    acc = Evaluation(dict(model.heads_spec), select=False)
    with torch.no_grad():
        for i in range(0, table.num_rows, 8):
            batch = {k: torch.from_numpy(v[i:i + 8]) for k, v in rows.items() if k != "skip"}
            out = model(batch)
            assert len(out.answers) == batch["label_sentiment"].shape[0]
            acc.add(batch, out)
    metrics, _ = compute_metrics(acc.local_arrays(), dict(model.heads_spec))
    assert metrics["examples"] == 20
    assert 0 <= metrics.get("unparsed", 0) <= 20 and 0.0 <= metrics["mean_accuracy"] <= 1.0
    parsed = [answers.parse_labels(a, model.heads_spec, model.label_names) for a in out.answers]
    assert out.unparsed.tolist() == [any(v is None for v in p.values()) for p in parsed]
