"""Int-RA (ray_sticker/models/intra.py) on CPU at test size."""

import json
import math
from importlib import resources

import pytest
import torch
import torch.nn.functional as F

from ray_sticker.models import registry
from ray_sticker.data.text import load_tokenizer
from ray_sticker.models.intra import AttributeCrossAttention, IntRA, hinge_retrieval_loss
from ray_sticker.models.registry import build_model, get_model_config

B, K, J, L_TEXT, L_DESC = 4, 10, 4, 20, 8
LABELS = ["thank", "apologize", "query", "ask for help"]
COMET = ["comet_xIntent", "comet_xNeed", "comet_xWant", "comet_xEffect", "comet_xReact"]


def build(seed: int = 0, **overrides) -> IntRA:
    torch.manual_seed(seed)
    return build_model("intra-tiny", {"label_names": {"intent": LABELS}, **overrides})


def make_batch(seed: int = 1, k: int = K) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L_TEXT, dtype=torch.long)
    mask[1, 12:] = 0
    desc_mask = torch.ones(B, k, J, L_DESC, dtype=torch.long)
    desc_mask[:, :, 2, 5:] = 0
    return {
        "input_ids": torch.randint(5, 100, (B, L_TEXT), generator=g) * mask,
        "attention_mask": mask,
        "candidate_pixel_values": torch.randint(0, 256, (B, k, 3, 32, 32), generator=g, dtype=torch.uint8),
        "candidate_desc_input_ids": torch.randint(5, 100, (B, k, J, L_DESC), generator=g) * desc_mask,
        "candidate_desc_attention_mask": desc_mask,
        "candidate_idx": torch.randint(0, 50, (B, k), generator=g),
        "target": torch.tensor([0, 3, k - 1, 5]) % k,
        "label_intent": torch.tensor([0, 3, 1, 2]),
    }


def pool_of(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The candidates of a batch as a flat sticker pool (row-major over (B, K))."""
    return {key[len("candidate_"):]: batch[key].flatten(0, 1)
            for key in ("candidate_pixel_values", "candidate_desc_input_ids", "candidate_desc_attention_mask")}


# ---------------------------------------------------------------------------- losses


def test_hinge_retrieval_loss_by_hand():
    scores = torch.tensor([[0.5, 0.2, 0.4, -0.1],
                           [0.1, 0.3, 0.35, 0.0]])
    target = torch.tensor([0, 2])
    # row 0 (pos 0.5): negatives 0.2, 0.4, -0.1 -> max(0, s - 0.5 + 0.2) = 0, 0.1, 0
    # row 1 (pos 0.35): negatives 0.1, 0.3, 0.0 -> 0, 0.15, 0   -> mean of sums (0.1 + 0.15) / 2
    assert hinge_retrieval_loss(scores, target, 0.2).item() == pytest.approx(0.125, abs=1e-6)
    # margin 0.5: row 0 -> 0.2, 0.4, 0 ; row 1 -> 0.25, 0.45, 0.15 -> (0.6 + 0.85) / 2
    assert hinge_retrieval_loss(scores, target, 0.5).item() == pytest.approx(0.725, abs=1e-6)
    assert hinge_retrieval_loss(scores, target, 0.0).item() == 0.0


def test_losses_are_the_weighted_hinge_and_intent_cross_entropy():
    model = build(lambda_ret=0.7, lambda_int=0.3, margin=0.3).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
    assert set(out.losses) == {"ret", "ce_intent"}
    logits = out.logits["intent"].double()
    assert logits.shape == (B, 4)
    ce = -torch.log_softmax(logits, -1)[torch.arange(B), batch["label_intent"]].mean()  # Eq. 6
    assert out.losses["ce_intent"].item() == pytest.approx(ce.item(), abs=1e-5)
    s, t = out.scores.double(), batch["target"]
    ret = sum(max(0.0, s[b, k].item() - s[b, t[b]].item() + 0.3) for b in range(B) for k in range(K) if k != t[b]) / B
    assert out.losses["ret"].item() == pytest.approx(ret, abs=1e-5)
    assert out.loss.item() == pytest.approx(0.7 * ret + 0.3 * ce.item(), abs=1e-5)

    unlabelled = {**batch, "label_intent": torch.full((B,), -1)}  # rows without a label are ignored
    with torch.no_grad():
        assert model(unlabelled).losses["ce_intent"].item() == 0.0


# ---------------------------------------------------------------------------- towers


def test_relation_score_matches_a_direct_computation():
    torch.manual_seed(0)
    n, t, d, heads = 3, 5, 8, 2
    attn = AttributeCrossAttention(d, heads)
    a, r = torch.randn(n, J, d), torch.randn(n, t, d)
    got = attn(a, r)
    dk = d // heads
    wq, wk, wv = attn.w_q.weight.t(), attn.w_k.weight.t(), attn.w_v.weight.t()
    expected = torch.empty(n, d)
    for i in range(n):
        per_attribute = []
        for j in range(J):
            m_j = []
            for h in range(heads):
                cols = slice(h * dk, (h + 1) * dk)
                q = a[i, j] @ wq[:, cols]
                k, v = r[i] @ wk[:, cols], r[i] @ wv[:, cols]
                weights = torch.softmax(k @ q / math.sqrt(dk), dim=0)  # Eq. 11, one head
                m_j.append(weights @ v)
            per_attribute.append(torch.cat(m_j))
        expected[i] = torch.stack(per_attribute).max(dim=0).values  # max_j M_j
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_sticker_vector_is_relation_times_pooled_visual():
    model = build().eval()
    pool = pool_of(make_batch(k=2))
    with torch.no_grad():
        tokens, pooled = model.vision(model.normalize(pool["pixel_values"], torch.float32))
        ids, mask = pool["desc_input_ids"], pool["desc_attention_mask"]
        n = ids.shape[0]
        h_a = model.text(ids.reshape(n * J, -1), mask.reshape(n * J, -1))[1]
        relation = model.relation(model.f_des(h_a).view(n, J, -1), model.f_vis(tokens))
        expected = F.normalize(relation * model.f_vis(pooled), dim=-1)  # Eq. 12
        torch.testing.assert_close(model.embed_stickers(pool), expected, atol=1e-5, rtol=1e-5)


def test_query_fuses_context_with_the_predicted_intent_text():
    model = build().eval()
    batch = make_batch()
    tok = load_tokenizer("builtin:tiny")(LABELS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h_t = model.text(batch["input_ids"], batch["attention_mask"])[1]
        logits = model.classifier(h_t)
        label_text = model.text(tok["input_ids"], tok["attention_mask"])[1]
        h_y = label_text[logits.argmax(-1)]  # Eq. 5: the argmax label's text
        expected = F.normalize(model.f_txt(torch.cat([h_t, h_y], -1)), dim=-1)
        torch.testing.assert_close(model.embed_queries(batch), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(batch).logits["intent"], logits)


def test_embeddings_reproduce_forward_scores():
    model = build().eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        queries = model.embed_queries(batch)
        stickers = model.embed_stickers(pool_of(batch)).view(B, K, -1)
    assert out.scores.shape == (B, K) and queries.shape == (B, 32)
    torch.testing.assert_close(out.scores, torch.einsum("bd,bkd->bk", queries, stickers), atol=1e-5, rtol=1e-5)
    assert float(out.scores.abs().max()) <= 1.0 + 1e-5  # cosines


# ---------------------------------------------------------------------------- switches


def _names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_use_attribute_switch():
    full, plain = build(), build(use_attribute=False)
    assert _names(full) - _names(plain) == {
        "f_des.weight", "f_des.bias", "relation.w_q.weight", "relation.w_k.weight", "relation.w_v.weight"}
    batch = make_batch()
    no_desc = {k: v for k, v in batch.items() if "desc" not in k}
    with torch.no_grad():
        s_plain = plain.eval()(no_desc).scores  # runs without descriptions: H^R = f_vis(pooled)
        assert not torch.allclose(full.eval()(batch).scores, s_plain)
        pixels = no_desc["candidate_pixel_values"].flatten(0, 1)
        pooled = plain.vision(plain.normalize(pixels, torch.float32))[1]
        expected = F.normalize(plain.f_vis(pooled), dim=-1)
        torch.testing.assert_close(plain.embed_stickers({"pixel_values": pixels}), expected)


def test_use_intention_switch():
    plain = build(use_intention=False)
    full = build()
    assert plain.heads_spec == {} and full.heads_spec == {"intent": 4}
    assert "classifier.weight" in _names(full) - _names(plain)
    assert plain.f_txt.in_features == plain.text.width and full.f_txt.in_features == 2 * full.text.width
    with torch.no_grad():
        out = plain.eval()(make_batch())
    assert out.logits == {} and set(out.losses) == {"ret"}
    assert out.loss.item() == pytest.approx(out.losses["ret"].item())


def test_soft_intent_switch_mixes_label_texts_by_probability():
    hard, soft = build(), build(soft_intent=True)
    assert _names(hard) == _names(soft)
    batch = make_batch()
    tok = load_tokenizer("builtin:tiny")(LABELS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(hard.eval()(batch).scores, soft.eval()(batch).scores)
        h_t = soft.text(batch["input_ids"], batch["attention_mask"])[1]
        h_y = torch.softmax(soft.classifier(h_t), -1) @ soft.text(tok["input_ids"], tok["attention_mask"])[1]
        torch.testing.assert_close(soft.embed_queries(batch),
                                   F.normalize(soft.f_txt(torch.cat([h_t, h_y], -1)), dim=-1))


def test_use_knowledge_switch_appends_the_comet_columns():
    from ray_sticker.config import ExperimentConfig
    from ray_sticker.train.inputs import text_inputs

    exp = ExperimentConfig(task="select")
    (with_k,) = text_inputs(exp, get_model_config("intra-tiny"))
    (without,) = text_inputs(exp, get_model_config("intra-tiny", {"use_knowledge": False}))
    assert with_k.columns == ("context", *COMET) and without.columns == ("context",)
    # and the knowledge text changes the query
    model = build().eval()
    tok = load_tokenizer("builtin:tiny")
    context = "we went home [SEP] really felt tired"
    texts = [context, f"{context} [SEP] to rest [SEP] sleep [SEP] to sleep [SEP] sleeps [SEP] tired"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        q = model.embed_queries({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    assert not torch.allclose(q[0], q[1])


# ---------------------------------------------------------------------------- build, dtype, gradients


def test_the_predicted_intent_is_encoded_from_its_text_where_the_dataset_gives_one():
    """StickerInt's intent_label.txt gives each intention a text: H^Y encodes it, not the name."""
    texts = ["thanks a lot", "so sorry", "what is it", "please help me"]
    with_texts = build(label_texts={"intent": texts})
    tok = load_tokenizer("builtin:tiny")(texts, padding=True, return_tensors="pt")
    assert torch.equal(with_texts.label_input_ids, tok["input_ids"])
    assert not torch.equal(build().label_input_ids[:, :2], with_texts.label_input_ids[:, :2])  # names otherwise
    with pytest.raises(ValueError, match="3 intent label texts for 4 classes"):
        build(label_texts={"intent": texts[:3]})


def test_a_manifests_label_texts_reach_the_model_config():
    from ray_sticker.config import ConfigError
    from ray_sticker.data.schema import Manifest
    from ray_sticker.train.inputs import label_texts

    maps = {"intent": ["a", "b"], "emotion": ["x"]}
    manifest = Manifest(name="m", task="select", label_maps=maps, splits={}, extra={"intent_texts": ["A a", "B b"]})
    assert label_texts(manifest) == {"intent": ["A a", "B b"]}
    assert label_texts(Manifest(name="m", task="select", label_maps=maps, splits={})) == {}
    with pytest.raises(ConfigError, match="extra.intent_texts must be 2 strings"):
        label_texts(Manifest(name="m", task="select", label_maps=maps, splits={}, extra={"intent_texts": ["A"]}))


def test_label_names_are_needed_to_run_not_to_build():
    torch.manual_seed(0)
    model = build_model("intra-tiny")
    assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(ValueError, match="intent label names"):
        model(make_batch())
    with pytest.raises(ValueError, match="3 intent label texts for 4 classes"):
        build_model("intra-tiny", {"label_names": {"intent": LABELS[:3]}})
    assert "label_input_ids" not in build().state_dict()  # rebuilt from the config, not saved


def test_bf16_forward_and_backward():
    model = build().to(torch.bfloat16).train()
    out = model(make_batch())
    assert out.scores.dtype == torch.float32 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("soft", [False, True])
def test_every_parameter_gets_a_gradient(soft):
    model = build(soft_intent=soft).train()
    model(make_batch(k=3)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert float(model.classifier.weight.grad.abs().sum()) > 0 and float(model.relation.w_q.weight.grad.abs().sum()) > 0


def test_registry_and_configs():
    assert "intra" in registry.list_archs()
    assert {"intra", "intra-tiny"} <= set(registry.list_models())
    root = resources.files("ray_sticker.models") / "configs"
    tiny, full = (json.loads((root / f"{n}.json").read_text()) for n in ("intra-tiny", "intra"))
    switches = ("use_intention", "use_attribute", "use_knowledge", "soft_intent")
    for cfg in (tiny, full):
        assert cfg["arch"] == "intra" and cfg["task"] == "select" and "paper_params" not in cfg
        assert all(cfg[s] is (s != "soft_intent") for s in switches)
        assert cfg["text_inputs"]["text"]["columns_when"] == {"use_knowledge": COMET}
        assert cfg["sticker_inputs"]["desc"]["separate"] is True
        assert len(cfg["sticker_inputs"]["desc"]["columns_when"]["use_attribute"]) == J
    assert full["text"]["hf_model_name"] == "bert-base-multilingual-cased" and full["text"]["pretrained"] is True
    assert full["text"]["hf_config"]["model_type"] == "bert" and full["text"]["hf_config"]["vocab_size"] == 119547
    assert full["vision"] == {"open_clip_model": "ViT-B-16", "pretrained": "openai"}
