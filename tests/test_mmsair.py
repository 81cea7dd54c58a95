"""MMSAIR on CPU: forward/backward, the joint loss by hand, the ablation switches, masks,
bf16 parameters and the full-size config's parameter count."""

from __future__ import annotations

import math

import pytest
import torch

from ray_sticker.models.mmsair import MMSAIR
from ray_sticker.models.registry import build_from_config, build_model, get_model_config

B, LX, LS = 4, 24, 8


def make_batch(b: int = B, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of the contract's shapes with some padding in both texts."""
    g = torch.Generator().manual_seed(seed)
    context_len = torch.tensor([LX, 10, 5, 17] * b)[:b]
    sticker_len = torch.tensor([LS, 3, 1, 6] * b)[:b]
    return {
        "input_ids": torch.randint(5, 100, (b, LX), generator=g),
        "attention_mask": (torch.arange(LX) < context_len[:, None]).long(),
        "sticker_text_input_ids": torch.randint(5, 100, (b, LS), generator=g),
        "sticker_text_attention_mask": (torch.arange(LS) < sticker_len[:, None]).long(),
        "pixel_values": torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=g),
        "label_sentiment": torch.randint(0, 3, (b,), generator=g),
        "label_intent": torch.randint(0, 4, (b,), generator=g),
    }


def build(seed: int = 0, **overrides) -> MMSAIR:
    torch.manual_seed(seed)
    return build_model("mmsair-tiny", overrides)


@pytest.fixture(scope="module")
def model() -> MMSAIR:
    """The tiny model in eval mode, for the tests that only read it."""
    return build().eval()


def hand_ce(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean of log(sum_j exp z_j) - z_y, row by row in plain Python."""
    rows = logits.double().tolist()
    return sum(math.log(sum(math.exp(z) for z in r)) - r[y] for r, y in zip(rows, target.tolist())) / len(rows)


def test_configs_declare_inputs_heads_and_switches():
    tiny = get_model_config("mmsair-tiny")
    full = get_model_config("mmsair")
    assert tiny["heads"] == {"sentiment": 3, "intent": 4}
    assert full["heads"] == {"sentiment": 3, "intent": 20}
    for cfg in (tiny, full):
        assert cfg["arch"] == "mmsair" and cfg["task"] == "classify"
        assert cfg["tasks"] == ["sentiment", "intent"] and cfg["use_diff_vector"] is True
        assert cfg["loss_weights"] == {"sentiment": 1.0, "intent": 1.0}
        assert cfg["text_inputs"]["text"]["columns"] == ["context"]
        sticker = cfg["text_inputs"]["sticker_text"]
        assert sticker["columns"] == ["sticker_text"] and sticker["tower"] == "sticker_text"
    assert (tiny["text_inputs"]["text"]["max_length"], tiny["text_inputs"]["sticker_text"]["max_length"]) == (24, 8)
    assert (full["text_inputs"]["text"]["max_length"], full["text_inputs"]["sticker_text"]["max_length"]) == (50, 10)
    assert full["text_inputs"]["sticker_text"]["default"] == "图中没有文本"
    assert tiny["text_inputs"]["sticker_text"]["default"] == "no text"
    for key in ("text", "sticker_text"):
        assert full[key]["hf_model_name"] == "hfl/chinese-roberta-wwm-ext" and full[key]["pretrained"] is True
        assert full[key]["hf_config"]["model_type"] == "bert" and full[key]["hf_config"]["vocab_size"] == 21128
    assert full["vision"] == {"open_clip_model": "ViT-B-32", "pretrained": "openai"}
    assert "paper_params" not in full


def test_forward_backward_reaches_every_parameter():
    model = build()
    model.train()
    out = model(make_batch())
    assert out.logits["sentiment"].shape == (B, 3) and out.logits["intent"].shape == (B, 4)
    assert set(out.losses) == {"ce_sentiment", "ce_intent"}
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert not any("pooler" in n for n, _ in model.named_parameters())  # poolers are unused, removed
    assert model.heads_spec == {"sentiment": 3, "intent": 4}


def test_loss_is_the_weighted_sum_of_cross_entropies():
    model = build(**{"loss_weights": {"sentiment": 0.3, "intent": 2.0}})
    model.eval()
    batch = make_batch()
    out = model(batch)
    ce_s = hand_ce(out.logits["sentiment"], batch["label_sentiment"])
    ce_i = hand_ce(out.logits["intent"], batch["label_intent"])
    assert out.losses["ce_sentiment"].item() == pytest.approx(ce_s, abs=1e-5)
    assert out.losses["ce_intent"].item() == pytest.approx(ce_i, abs=1e-5)
    assert out.loss.item() == pytest.approx(0.3 * ce_s + 2.0 * ce_i, abs=1e-5)


def test_no_labels_gives_zero_loss_and_logits(model: MMSAIR):
    batch = {k: v for k, v in make_batch().items() if not k.startswith("label_")}
    out = model(batch)
    assert out.losses == {} and out.loss.item() == 0.0
    assert set(out.logits) == {"sentiment", "intent"}


def test_diff_vector_switch_changes_parameters_and_output():
    full, ablated = build(seed=1), build(seed=1, use_diff_vector=False)
    names_full = {n for n, _ in full.named_parameters()}
    names_ablated = {n for n, _ in ablated.named_parameters()}
    assert names_full - names_ablated == {"diff_context.weight", "diff_sticker.weight"}
    assert names_ablated <= names_full
    assert full.classifiers["intent"].in_features == 3 * 32
    assert ablated.classifiers["intent"].in_features == 2 * 32
    # same weights everywhere they exist: the features differ exactly by V_diff
    shared = {k: v for k, v in full.state_dict().items() if not k.startswith(("classifiers", "diff_"))}
    ablated.load_state_dict(shared, strict=False)
    full.eval(), ablated.eval()
    batch = make_batch()
    with torch.no_grad():
        h_full, h_ablated = full.features(batch), ablated.features(batch)
        assert h_full.shape == (B, 96) and h_ablated.shape == (B, 64)
        assert torch.allclose(h_full[:, :32], h_ablated[:, :32])  # pool(E_X) is shared
        assert not torch.allclose(h_full[:, 32:64], h_ablated[:, 32:64])  # F attends over V_diff
        before = full(batch).logits["sentiment"]
        full.diff_sticker.weight.mul_(2.0)
        assert not torch.allclose(before, full(batch).logits["sentiment"])


@pytest.mark.parametrize(("task", "other", "classes"), [("sentiment", "intent", 4), ("intent", "sentiment", 3)])
def test_single_task_trains_only_its_head(task: str, other: str, classes: int):
    model = build(tasks=[task], **{"loss_weights": {"sentiment": 0.5, "intent": 3.0}})
    assert set(model.classifiers) == {task}
    assert model.heads_spec == {"sentiment": 3, "intent": 4}  # every head is still evaluated
    model.train()
    batch = make_batch()
    out = model(batch)
    assert set(out.losses) == {f"ce_{task}"}
    weight = {"sentiment": 0.5, "intent": 3.0}[task]
    assert out.loss.item() == pytest.approx(weight * out.losses[f"ce_{task}"].item(), abs=1e-6)
    assert torch.equal(out.logits[other], torch.zeros(B, classes))  # untrained: uniform prediction
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_tasks_must_be_heads():
    with pytest.raises(ValueError, match="tasks \\['emotion'\\] are not heads"):
        build(tasks=["emotion"])


def test_padding_is_masked_and_every_input_matters(model: MMSAIR):
    batch = make_batch()
    with torch.no_grad():
        base = model(batch).logits["intent"]
        for ids, mask in (("input_ids", "attention_mask"), ("sticker_text_input_ids", "sticker_text_attention_mask")):
            padded = dict(batch)
            padded[ids] = torch.where(batch[mask] == 1, batch[ids], torch.randint(5, 100, batch[ids].shape))
            assert torch.allclose(model(padded).logits["intent"], base, atol=1e-6)
            changed = dict(batch)
            changed[ids] = torch.where(batch[mask] == 1, (batch[ids] + 7) % 100, batch[ids])
            assert not torch.allclose(model(changed).logits["intent"], base)
        changed = dict(batch, pixel_values=255 - batch["pixel_values"])
        assert not torch.allclose(model(changed).logits["intent"], base)


def test_batch_of_one(model: MMSAIR):
    out = model(make_batch(b=1))
    assert out.logits["sentiment"].shape == (1, 3) and out.logits["intent"].shape == (1, 4)
    assert out.loss.shape == () and torch.isfinite(out.loss)


def test_bf16_parameters_forward_and_backward():
    model = build().to(torch.bfloat16)
    model.train()
    out = model(make_batch())
    assert out.logits["sentiment"].dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet_vision_tower_ablation():
    """The paper's ResNet-50-instead-of-CLIP ablation, at test size: an open_clip ResNet tower
    feeds the same Conv1d (its width is the attention-pooled output, embed_dim)."""
    resnet = {"vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}, "embed_dim": 16}
    cfg = get_model_config("mmsair-tiny")
    cfg["vision"] = resnet
    model = build_from_config(cfg)
    assert type(model.vision.visual).__name__ == "ModifiedResNet" and model.vision.width == 16
    vit = build_from_config(get_model_config("mmsair-tiny"))
    assert {n for n, _ in model.named_parameters()} != {n for n, _ in vit.named_parameters()}
    out = model(make_batch(4))
    assert out.logits["sentiment"].shape == (4, 3) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_full_config_parameter_count():
    """Built on the meta device (no weights allocated): two BERT-base encoders of 21,128
    tokens without pooler, the CLIP ViT-B/32 vision tower without projection, the fusion."""
    with torch.device("meta"):
        model = build_model("mmsair", {"text.pretrained": False, "sticker_text.pretrained": False,
                                       "vision.pretrained": None})
    d = 768
    fusion = (d * d + d) + 2 * (4 * d * d + 4 * d) + 2 * d * d + (3 * d + 1) * (3 + 20)
    assert model.param_breakdown() == {"text": 101_677_056, "sticker_text": 101_677_056, "vision": 87_456_000,
                                       "fusion": fusion}
    assert sum(p.numel() for p in model.parameters()) == 297_358_103
