"""The CLIP dual encoder (classify and select) on CPU at tiny size."""

import math

import pytest
import torch
import torch.nn.functional as F

from ray_sticker.models.clip import ClipDualEncoder, build_clip_model, eos_positions
from ray_sticker.data.text import TINY_TOKENIZER, load_tokenizer, tiny_vocab_size
from ray_sticker.models.layers import ImageNormalize
from ray_sticker.models.registry import build_model, get_model_config, list_archs, list_models

B, K, L = 4, 5, 16
LABEL_NAMES = {"sentiment": ["neutral", "positive", "negative"], "intent": ["greet", "thank", "complain", "ask"]}
CLASSIFY = {"label_names": LABEL_NAMES}


def tokens(texts: list[str], length: int = L) -> dict[str, torch.Tensor]:
    enc = load_tokenizer(TINY_TOKENIZER)(texts, padding="max_length", truncation=True, max_length=length,
                                        return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def classify_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    texts = ["i went home [SEP] we had tea", "rain today", "my friends and family", "so very nice morning"]
    return {**tokens(texts),
            "pixel_values": torch.randint(0, 256, (B, 3, 32, 32), generator=g, dtype=torch.uint8),
            "label_sentiment": torch.tensor([0, 1, 2, 1]), "label_intent": torch.tensor([3, 0, -1, 2])}


POOL = 12


def sticker_pool(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (POOL, 3, 32, 32), generator=g, dtype=torch.uint8)


def select_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Candidates gathered from ``sticker_pool(seed)`` by ``candidate_idx``, as the pipeline does."""
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.stack([torch.randperm(POOL, generator=g)[:K] for _ in range(B)])
    return {**tokens(["hello [SEP] thank you", "the worst day", "wow a party", "could you help"]),
            "candidate_idx": idx, "candidate_pixel_values": sticker_pool(seed)[idx],
            "target": torch.tensor([0, 3, 1, 4])}


def build(name: str, seed: int = 0, **overrides) -> ClipDualEncoder:
    torch.manual_seed(seed)
    return build_model(name, overrides).eval()


def manual_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    keep = target >= 0
    rows = logits[keep].double()
    log_z = torch.log(torch.exp(rows).sum(-1))
    return (log_z - rows[torch.arange(rows.shape[0]), target[keep]]).mean()


# ---------------------------------------------------------------------------- configs and towers


def test_configs_registered_and_tiny_text_sized_to_tokenizer():
    assert "clip" in list_archs()
    assert {"clip-tiny", "clip-select-tiny", "clip-vit-b32", "clip-select-vit-b32"} <= set(list_models())
    model = build("clip-tiny")
    tok = load_tokenizer(TINY_TOKENIZER)
    assert model.text.model.config.vocab_size == tiny_vocab_size() == len(tok)
    assert model.text.eos_token_id == tok.sep_token_id  # [SEP] ends every tiny text
    for name in ("clip-tiny", "clip-select-tiny", "clip-vit-b32", "clip-select-vit-b32"):
        cfg = get_model_config(name)
        assert cfg["text_inputs"] == {"text": {"columns": ["context"], "tower": "clip",
                                               "max_length": cfg["clip"]["hf_config"]["text_config"]
                                               ["max_position_embeddings"]}}
        assert cfg["image_size"] == cfg["clip"]["hf_config"]["vision_config"]["image_size"]
        assert "vision" not in cfg and "text" not in cfg


def test_tower_kinds_cover_backbones_and_projections():
    model = build("clip-tiny")
    kinds = {}
    for prefix, module in model.named_modules():
        if getattr(module, "tower_kind", None):
            kinds.update({n: module.tower_kind for n, _ in module.named_parameters(prefix=prefix)})
    names = {n for n, _ in model.named_parameters()}
    assert {n for n, k in kinds.items() if k == "text"} == {n for n in names if n.startswith("text.")}
    assert {n for n, k in kinds.items() if k == "vision"} == {n for n in names if n.startswith("vision.")}
    assert "text.projection.weight" in kinds and "vision.projection.weight" in kinds
    assert names - set(kinds) == {"logit_scale"}


def test_full_size_config_builds_offline_with_clip_vit_b32_parameter_count():
    model = build_model("clip-vit-b32", {"clip.pretrained": False})
    assert sum(p.numel() for p in model.parameters()) == 151_277_313  # HF CLIPModel ViT-B/32
    assert model.text.eos_token_id == 49407 and model.text.max_length == 77
    assert model.vision.image_size == 224


def test_config_errors():
    with pytest.raises(ValueError, match="image_size=48 but the vision encoder takes 32"):
        build("clip-tiny", image_size=48)
    with pytest.raises(ValueError, match="fusion must be one of"):
        build("clip-tiny", fusion="max")
    with pytest.raises(ValueError, match="no classification heads"):
        build("clip-select-tiny", heads={"intent": 4})
    with pytest.raises(ValueError, match=r"label_names\['sentiment'\] must list 3"):
        build("clip-tiny", label_names={"sentiment": ["good", "bad"]})
    with pytest.raises(ValueError, match="model_type 'clip'"):
        build("clip-tiny", **{"clip.hf_config.model_type": "bert"})


# ---------------------------------------------------------------------------- text pooling


def test_pools_at_the_last_end_of_text_token():
    batch = tokens(["we had tea [SEP] rain today", "coffee", "my family"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    sep = load_tokenizer(TINY_TOKENIZER).sep_token_id
    assert (ids[0] == sep).sum() == 2  # joined turns: two end-of-text tokens
    pos = eos_positions(ids, mask, sep)
    assert pos.tolist() == (mask.sum(-1) - 1).tolist()
    assert (ids[torch.arange(3), pos] == sep).all()
    # without an end-of-text token, the last attended token
    assert eos_positions(torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]]), sep).tolist() == [2]

    model = build("clip-tiny")
    hidden = model.text.model(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = model.text.projection(hidden[torch.arange(3), mask.sum(-1) - 1])
    torch.testing.assert_close(model.text(ids, mask), expected)
    first_sep = model.text.model(input_ids=ids, attention_mask=mask).pooler_output  # HF: the first one
    assert not torch.allclose(model.text.projection(first_sep[0]), expected[0])


# ---------------------------------------------------------------------------- classification


def test_prompts_tokenized_at_build_time():
    model = build("clip-tiny", heads={"sentiment": 3, "intent": 4}, prompt={"sentiment": "a {label} post",
                                                                        "intent": "to {label}"}, **CLASSIFY)
    tok = load_tokenizer(TINY_TOKENIZER)
    ids, mask = model.prompt_ids_sentiment, model.prompt_mask_sentiment
    assert ids.shape[0] == 3 and mask.shape == ids.shape
    assert [tok.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(ids, mask)] == [
        "a neutral post", "a positive post", "a negative post"]
    assert [tok.decode(row, skip_special_tokens=True) for row in model.prompt_ids_intent] == [
        "to greet", "to thank", "to complain", "to ask"]
    assert "prompt_ids_sentiment" not in model.state_dict()  # rebuilt from the config, never checkpointed


def test_missing_label_names_builds_but_forward_explains():
    model = build("clip-tiny")
    assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(RuntimeError, match="no 'label_names'"):
        model(classify_batch())


@pytest.mark.parametrize("fusion", ["image", "text", "mean"])
def test_classify_logits_and_loss_match_hand_computation(fusion):
    model = build("clip-tiny", fusion=fusion, heads={"sentiment": 3, "intent": 4}, **CLASSIFY)
    batch = classify_batch()
    with torch.no_grad():
        out = model(batch)
        t = model.text(batch["input_ids"], batch["attention_mask"])
        pixels = ImageNormalize()(batch["pixel_values"], torch.float32)
        query = {"text": F.normalize(t, dim=-1)}
        if fusion != "text":
            v = model.vision.projection(model.vision.model(pixel_values=pixels).pooler_output)
            query["image"] = F.normalize(v, dim=-1)
            query["mean"] = F.normalize(query["image"] + query["text"], dim=-1)
        scale = math.exp(2.6592)  # logit_scale_init_value
        total = 0.0
        for head, n in model.heads_spec.items():
            prompts = model.text(getattr(model, f"prompt_ids_{head}"), getattr(model, f"prompt_mask_{head}"))
            expected = scale * query[fusion] @ F.normalize(prompts, dim=-1).t()
            assert out.logits[head].shape == (B, n)
            torch.testing.assert_close(out.logits[head], expected, atol=1e-5, rtol=1e-5)
            ce = manual_ce(expected, batch[f"label_{head}"])
            assert abs(out.losses[f"ce_{head}"].item() - ce.item()) < 1e-5
            total += ce.item()
        assert abs(out.loss.item() - total) < 1e-5


def test_fusion_switch_changes_logits_and_parameters():
    batch = classify_batch()
    with torch.no_grad():
        logits = {f: build("clip-tiny", fusion=f, **CLASSIFY)(batch).logits["sentiment"]
                  for f in ("image", "text", "mean")}
    assert not torch.allclose(logits["image"], logits["text"])
    assert not torch.allclose(logits["mean"], logits["text"])
    assert not torch.allclose(logits["mean"], logits["image"])
    text_only = {n for n, _ in build("clip-tiny", fusion="text", **CLASSIFY).named_parameters()}
    both = {n for n, _ in build("clip-tiny", **CLASSIFY).named_parameters()}
    assert text_only < both and all(n.startswith("vision.") for n in both - text_only)


def test_zero_shot_uses_only_checkpoint_weights(tmp_path):
    """Built from one saved CLIPModel, whatever the seed: nothing in the model is freshly initialised."""
    torch.manual_seed(123)
    spec = get_model_config("clip-tiny")["clip"]
    build_clip_model(spec).save_pretrained(tmp_path)
    over = {"clip.pretrained": True, "clip.hf_model_name": str(tmp_path), **CLASSIFY}
    a, b = build("clip-tiny", seed=1, **over), build("clip-tiny", seed=2, **over)
    checkpoint = build_clip_model({**spec, "hf_model_name": str(tmp_path), "pretrained": True}).state_dict()
    renamed = {"text.model.": "text_model.", "text.projection.": "text_projection.",
               "vision.model.": "vision_model.", "vision.projection.": "visual_projection."}
    for name, p in a.named_parameters():
        key = next((name.replace(k, v, 1) for k, v in renamed.items() if name.startswith(k)), name)
        torch.testing.assert_close(p, checkpoint[key].reshape(p.shape), rtol=0, atol=0)
    assert a.text.eos_token_id == 3
    batch = classify_batch()
    with torch.no_grad():
        torch.testing.assert_close(a(batch).logits["sentiment"], b(batch).logits["sentiment"], rtol=0, atol=0)


def test_every_parameter_gets_a_gradient():
    for name, overrides, batch in (("clip-tiny", CLASSIFY, classify_batch()),
                                   ("clip-select-tiny", {}, select_batch())):
        model = build(name, **overrides).train()
        model(batch).loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"{name}: no gradient for {missing[:5]}"


# ---------------------------------------------------------------------------- selection


def test_select_scores_match_embed_queries_and_embed_stickers():
    model = build("clip-select-tiny")
    batch = select_batch()
    with torch.no_grad():
        out = model(batch)
        queries = model.embed_queries(batch)
        stickers = model.embed_stickers({"pixel_values": sticker_pool()})
    assert out.scores.shape == (B, K) and out.logits == {}
    assert queries.shape == (B, 32) and stickers.shape == (POOL, 32)
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(stickers.norm(dim=-1), torch.ones(POOL))
    for b in range(B):
        for k in range(K):
            cos = queries[b] @ stickers[batch["candidate_idx"][b, k]]
            assert abs(out.scores[b, k].item() - math.exp(2.6592) * cos.item()) < 1e-4


@pytest.mark.parametrize("in_batch", [False, True])
def test_select_loss_matches_direct_computation(in_batch):
    model = build("clip-select-tiny", in_batch_negatives=in_batch)
    batch = select_batch()
    with torch.no_grad():
        out = model(batch)
        q = model.embed_queries(batch).double()
        c = model.embed_stickers({"pixel_values": sticker_pool()})[batch["candidate_idx"]].double()
    scale = math.exp(2.6592)
    scores = scale * torch.einsum("bd,bkd->bk", q, c)
    ce = manual_ce(scores, batch["target"])
    assert abs(out.losses["ce_select"].item() - ce.item()) < 1e-5
    expected = ce.item()
    if in_batch:
        pos = c[torch.arange(B), batch["target"]]
        sim = scale * q @ pos.t()  # (text, image)
        t2i = manual_ce(sim, torch.arange(B))
        i2t = manual_ce(sim.t(), torch.arange(B))
        assert abs(out.losses["in_batch_nce"].item() - 0.5 * (t2i + i2t).item()) < 1e-5
        expected += 0.5 * (t2i + i2t).item()
    else:
        assert set(out.losses) == {"ce_select"}
    assert abs(out.loss.item() - expected) < 1e-5


def test_logit_scale_clamped_at_100():
    model = build("clip-select-tiny")
    with torch.no_grad():
        model.logit_scale.fill_(6.0)
    assert model.scale().item() == 100.0


# ---------------------------------------------------------------------------- bf16


def test_bf16_forward():
    for name, overrides, batch in (("clip-tiny", CLASSIFY, classify_batch()),
                                   ("clip-select-tiny", {}, select_batch())):
        model = build(name, **overrides).to(torch.bfloat16)
        out = model(batch)
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        for v in [*out.logits.values(), *([out.scores] if out.scores is not None else [])]:
            assert torch.isfinite(v).all()
        out.loss.backward()
        assert model.logit_scale.grad is not None
