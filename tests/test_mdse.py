"""MDSE: the MACL loss against direct computations, CE, the private-feature weights,
the ablation switches, forward/backward, bf16 and the full config's parameter count."""

import math

import pytest
import torch
import torch.nn.functional as F

from ray_sticker.models import params
from ray_sticker.models.mdse import MDSE, MDSEFusion, _reversed_importance, supcon_loss
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import build_from_config, build_model, get_model_config

B, L = 4, 10
BLOCK_768 = 3_546_624  # one attention block at d = 768: MHA 4d²+4d, FF 2(d²+d), two LayerNorms 4d


def _batch(seed: int = 0, length: int = L) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, length, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    ids = torch.randint(5, 100, (B, length), generator=g) * mask
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.randint(0, 256, (B, 3, 32, 32), generator=g, dtype=torch.uint8),
        "label_sentiment": torch.tensor([0, 1, 2, 1]),
    }


def _model(**overrides) -> MDSE:
    torch.manual_seed(0)
    return build_model("mdse-tiny", overrides)


def _fusion_outputs(model: MDSE, batch: dict[str, torch.Tensor]) -> tuple[ModelOutput, tuple]:
    captured = []
    handle = model.fusion.register_forward_hook(lambda mod, args, out: captured.append(out))
    try:
        out = model(batch)
    finally:
        handle.remove()
    return out, captured[0]


# ---------------------------------------------------------------------------- MACL


def test_supcon_by_hand():
    # cosines: C01 = 0, C02 = -1, C12 = 0; row 0 is not unit length (normalised inside); row 3 unlabelled
    e = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([0, 0, 1, -1])
    tau = 0.5
    anchor0 = -math.log(math.exp(0 / tau) / (math.exp(0 / tau) + math.exp(-1 / tau)))
    anchor1 = -math.log(math.exp(0 / tau) / (math.exp(0 / tau) + math.exp(0 / tau)))
    # anchor 2 has no positive and is left out of the mean
    expected = (anchor0 + anchor1) / 2
    assert supcon_loss(e, labels, tau).item() == pytest.approx(expected, abs=1e-5)


def test_supcon_matches_a_direct_loop():
    g = torch.Generator().manual_seed(3)
    e = torch.randn(9, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1])
    tau = 0.07
    e64 = e.double()
    total, anchors = 0.0, 0
    for i in range(9):
        cos = [float(F.cosine_similarity(e64[i], e64[j], dim=0)) for j in range(9)]
        denom = sum(math.exp(cos[a] / tau) for a in range(9) if a != i)
        pos = [p for p in range(9) if p != i and labels[p] == labels[i]]
        if pos:
            total += -sum(math.log(math.exp(cos[p] / tau) / denom) for p in pos) / len(pos)
            anchors += 1
    assert supcon_loss(e, labels, tau).item() == pytest.approx(total / anchors, abs=1e-5)


def test_supcon_without_positives_is_zero_with_gradient():
    e = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(e, torch.tensor([0, 1, -1]), 0.07)
    assert loss.item() == 0.0
    loss.backward()
    assert e.grad is not None


@pytest.mark.parametrize("views", ["all", "modal"])
def test_macl_contrasts_the_configured_views(views):
    model = _model(macl_views=views).eval()
    batch = _batch()
    out, (f_v, f_z, f, _) = _fusion_outputs(model, batch)
    stacked = [f_v, f_z, f] if views == "all" else [f_v, f_z]
    expected = supcon_loss(torch.cat(stacked), batch["label_sentiment"].repeat(len(stacked)), 0.07)
    torch.testing.assert_close(out.losses["macl"], expected)


# ---------------------------------------------------------------------------- CE and forward


def test_forward_loss_is_ce_plus_weighted_macl():
    model = _model(macl_weight=0.5).eval()
    batch = _batch()
    out = model(batch)
    assert isinstance(out, ModelOutput)
    assert set(out.losses) == {"ce_sentiment", "macl"} and set(out.logits) == {"sentiment"}
    logits = out.logits["sentiment"]
    assert logits.shape == (B, 3)
    logp = logits.detach().double().log_softmax(-1)
    by_hand = -logp[torch.arange(B), batch["label_sentiment"]].mean()
    assert out.losses["ce_sentiment"].item() == pytest.approx(by_hand.item(), abs=1e-5)
    total = out.losses["ce_sentiment"].item() + 0.5 * out.losses["macl"].item()
    assert out.loss.item() == pytest.approx(total, abs=1e-5)
    assert model.heads_spec == {"sentiment": 3}


def test_without_labels_the_loss_is_zero():
    batch = _batch()
    del batch["label_sentiment"]
    out = _model()(batch)
    assert out.losses == {} and out.loss.item() == 0.0


def test_backward_reaches_every_parameter():
    model = _model().train()
    model(_batch()).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_padding_does_not_change_the_output():
    model = _model().eval()
    short = _batch(length=L)
    long = {k: v.clone() for k, v in short.items()}
    extra = 4
    long["input_ids"] = torch.cat([short["input_ids"], torch.randint(5, 100, (B, extra))], dim=1)
    long["attention_mask"] = torch.cat([short["attention_mask"], torch.zeros(B, extra, dtype=torch.long)], dim=1)
    a, b = model(short), model(long)
    torch.testing.assert_close(a.logits["sentiment"], b.logits["sentiment"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-4)


def test_bf16_forward_and_backward():
    model = _model().to(torch.bfloat16).train()
    out = model(_batch())
    assert out.logits["sentiment"].dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.fusion.parameters())


# ---------------------------------------------------------------------------- private features


def test_reversed_importance_by_hand():
    # image side: tokens v (1, 2, 2), interacted f_v^s (1, 3, 2) with its third (padded) word masked
    v = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    fvs = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    # S = v fvsᵀ over real words: row 0 = [1, 2] -> 3, row 1 = [2, 0] -> 2
    s_bar = [math.exp(3) / (math.exp(3) + math.exp(2)), math.exp(2) / (math.exp(3) + math.exp(2))]
    got = _reversed_importance(v, fvs, None, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(got, torch.tensor([[1 - s_bar[0], 1 - s_bar[1]]]))
    # text side: the padded token gets no share of the softmax (weight 1, later masked out)
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    fzs = torch.tensor([[[1.0, 0.0]]])
    got = _reversed_importance(z, fzs, torch.tensor([[1, 1, 0]]), None)
    e1 = math.exp(1) / (math.exp(1) + 1.0)
    torch.testing.assert_close(got, torch.tensor([[1 - e1, 1 - (1 - e1), 1.0]]))


# ---------------------------------------------------------------------------- switches


@pytest.mark.parametrize("switch", ["use_ipfl", "use_tpfl", "use_adaptation", "shared_block"])
def test_structural_switches_change_parameters_and_output(switch):
    on, off = _model(), _model(**{switch: False})
    names_on = {n: p.shape for n, p in on.named_parameters()}
    names_off = {n: p.shape for n, p in off.named_parameters()}
    assert names_on != names_off
    assert sum(p.numel() for p in off.parameters()) < sum(p.numel() for p in on.parameters())
    batch = _batch()
    a, b = on.eval()(batch), off.eval()(batch)
    assert not torch.allclose(a.logits["sentiment"], b.logits["sentiment"])
    off.train()(batch).loss.backward()
    assert all(p.grad is not None for p in off.parameters())


def test_ipfl_and_tpfl_off_feed_only_the_shared_feature():
    model = _model(use_ipfl=False, use_tpfl=False)
    assert model.fusion.image_private is None and model.fusion.text_private is None
    assert model.fusion.image_fuse[1].in_features == 32 and model.fusion.text_fuse[1].in_features == 32
    full = _model()
    assert full.fusion.image_fuse[1].in_features == 64 and full.fusion.image_private.adaptation is not None
    assert _model(use_adaptation=False).fusion.image_private.adaptation is None


def test_use_macl_changes_the_loss_not_the_parameters():
    on, off = _model().eval(), _model(use_macl=False).eval()
    assert [n for n, _ in on.named_parameters()] == [n for n, _ in off.named_parameters()]
    batch = _batch()
    a, b = on(batch), off(batch)
    assert "macl" in a.losses and "macl" not in b.losses
    torch.testing.assert_close(a.logits["sentiment"], b.logits["sentiment"])
    assert b.loss.item() == pytest.approx(b.losses["ce_sentiment"].item(), abs=1e-6)
    assert a.loss.item() != pytest.approx(b.loss.item(), abs=1e-4)


def test_macl_views_change_the_loss():
    batch = _batch()
    all_views = _model(macl_views="all").eval()(batch).losses["macl"]
    modal = _model(macl_views="modal").eval()(batch).losses["macl"]
    assert all_views.item() != pytest.approx(modal.item(), abs=1e-4)
    with pytest.raises(ValueError, match="macl_views"):
        _model(macl_views="text")


def test_fusion_heads_change_the_output():
    four, two = _model(fusion_heads=4).eval(), _model(fusion_heads=2).eval()
    two.load_state_dict(four.state_dict())  # same shapes: only the head split differs
    batch = _batch()
    assert not torch.allclose(four(batch).logits["sentiment"], two(batch).logits["sentiment"])


def test_builder_errors():
    cfg = get_model_config("mdse-tiny")
    with pytest.raises(ValueError, match="mdse needs towers"):
        build_from_config({**cfg, "vision": None})
    wide = get_model_config("mdse-tiny", {"vision.vision_cfg.width": 64})
    with pytest.raises(ValueError, match="text width 32 != vision width 64"):
        build_from_config(wide)


# ---------------------------------------------------------------------------- parameter counts


def test_full_size_fusion_matches_the_paper_count():
    cfg = get_model_config("mdse")
    with torch.device("meta"):
        fusion = MDSEFusion(cfg, 768)
        literal = MDSEFusion({**cfg, "shared_block": False}, 768)
    assert [sum(p.numel() for p in b.parameters()) for b in fusion.blocks()] == [BLOCK_768] * 5
    counts = fusion.param_breakdown()
    assert counts["fusion"] == 5 * BLOCK_768
    paper = cfg["paper_params"]["fusion"]
    assert abs(counts["fusion"] - paper) / paper < 0.02
    assert literal.param_breakdown()["fusion"] == 4 * BLOCK_768  # Eq. 2 without the code's shared block
    # Eq. 7 (x2), Eq. 8: Linear(2d, d) + Linear(d, d); Eq. 9: Linear(d, d/2) + Linear(d/2, 3)
    ff = 2 * 768 * 768 + 768 + 768 * 768 + 768
    assert counts["heads"] == 3 * ff + (768 * 384 + 384 + 384 * 3 + 3)


def test_full_config_counts_on_meta():
    counts = params.count(get_model_config("mdse"))
    assert counts["fusion"] == 5 * BLOCK_768
    assert counts["text"] == 124_055_040  # roberta-base without its pooler
    assert counts["vision"] == 85_799_424  # open_clip ViT-B-16 visual without the projection
    assert counts["total"] == counts["text"] + counts["vision"] + counts["fusion"] + counts["heads"]
