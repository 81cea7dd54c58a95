"""EIGML: every loss term against a direct computation, EIKS / IEGA / SAMM against their
equations, the ablation switches, forward/backward at K = 10 and K = 2, bf16, and the
full-size parameter count."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from ray_sticker.models.eigml import (
    EIGML,
    GuidedFusion,
    KnowledgeSelection,
    SimilarityAdjustedMatching,
    albef_vision_weights,
    candidate_info_nce,
    matching_bce,
)
from ray_sticker.models.encoders import VisionTower
from ray_sticker.models.registry import build_from_config, build_model, get_model_config

B, R, C = 4, 4, 7
SWITCHES = ("use_inter", "use_intra", "use_eiks", "use_iega", "use_samm")


def make_batch(k: int = 10, seed: int = 0, emotion: list[int] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 12, dtype=torch.long)
    mask[1, 8:] = 0  # one padded dialogue
    know_mask = torch.ones(B, R, 6, dtype=torch.long)
    know_mask[2, 1, 3:] = 0
    return {
        "input_ids": torch.randint(5, 100, (B, 12), generator=g) * mask,
        "attention_mask": mask,
        "knowledge_input_ids": torch.randint(5, 100, (B, R, 6), generator=g) * know_mask,
        "knowledge_attention_mask": know_mask,
        "candidate_pixel_values": torch.randint(0, 256, (B, k, 3, 32, 32), dtype=torch.uint8, generator=g),
        "target": torch.randint(0, k, (B,), generator=g),
        "label_emotion": torch.tensor(emotion if emotion is not None else [2, -1, 0, 6]),
    }


def tiny(**overrides) -> EIGML:
    torch.manual_seed(0)
    return build_model("eigml-tiny", overrides)


@pytest.fixture(scope="module")
def model() -> EIGML:
    return tiny()


# ---------------------------------------------------------------------------- direct computations


def lin(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ module.weight.double().t() + module.bias.double()


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(a @ b / (a.norm() * b.norm()))


def nce(logit_rows: list[list[float]], targets: list[int]) -> float:
    """Mean of -log softmax(row)[target], written out."""
    total = 0.0
    for row, t in zip(logit_rows, targets):
        total += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    return total / len(targets)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist())))


def two_view_nce(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    n = z1.shape[0]
    ab = [[cos(z1[i], z2[j]) / t for j in range(n)] for i in range(n)]
    ba = [[cos(z2[i], z1[j]) / t for j in range(n)] for i in range(n)]
    return 0.5 * (nce(ab, list(range(n))) + nce(ba, list(range(n))))


# ---------------------------------------------------------------------------- loss terms


def test_candidate_info_nce_and_bce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    c = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    t = 0.5  # cosines: row 0 (1, 0, -1), row 1 (0, 1, 1/√2); targets 0 and 2
    want = 0.5 * (-(2.0 - math.log(math.exp(2) + 1 + math.exp(-2)))
                  - (math.sqrt(2) - math.log(1 + math.exp(2) + math.exp(math.sqrt(2)))))
    assert candidate_info_nce(q, c, torch.tensor([0, 2]), t).item() == pytest.approx(want, abs=1e-5)
    p = torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.5, 0.7]])
    want = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.9) + math.log(0.5) + math.log(0.7)) / 6
    assert matching_bce(p, torch.tensor([0, 2])).item() == pytest.approx(want, abs=1e-5)


def test_samm_formula():
    samm = SimilarityAdjustedMatching()
    alpha, beta = 0.3, 0.8
    with torch.no_grad():
        samm.alpha_logit.fill_(math.log(alpha / (1 - alpha)))
        samm.beta_logit.fill_(math.log(beta / (1 - beta)))
    g = torch.Generator().manual_seed(3)
    p_vl = torch.rand(2, 3, generator=g)
    e_t, e_v = torch.randn(2, C, generator=g), torch.randn(2, 3, C, generator=g)
    i_t, i_v = torch.randn(2, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    out = samm(p_vl, e_t, e_v, i_t, i_v)
    for b in range(2):
        for k in range(3):
            s_emo = (1 + cos(e_t[b], e_v[b, k])) / 2  # Eq. 17
            s_int = (1 + cos(i_t[b], i_v[b, k])) / 2
            s_ei = alpha * s_emo + (1 - alpha) * s_int  # Eq. 18
            assert out[b, k].item() == pytest.approx(beta * p_vl[b, k].item() + (1 - beta) * s_ei, abs=1e-5)


def test_every_loss_term_matches_a_direct_computation(model):
    model.train()  # two different dropout views
    torch.manual_seed(1)
    batch = make_batch()
    s = model.run(batch)
    target, labels = batch["target"].tolist(), batch["label_emotion"].tolist()
    labelled = [i for i in range(B) if labels[i] >= 0]
    tau, k = 0.07, 10
    got = {name: value.item() for name, value in s.losses.items()}
    assert set(got) == {"i2t", "t2i", "emo", "int", "text_emo", "itm", "intra_emo_text", "intra_int_text",
                        "intra_con_text", "intra_emo_vision", "intra_int_vision", "intra_con_vision"}

    pos = [s.image_embed[i, target[i]] for i in range(B)]  # Eq. 2, 3
    assert got["i2t"] == pytest.approx(nce([[cos(pos[i], s.text_embed[j]) / tau for j in range(B)]
                                            for i in range(B)], list(range(B))), abs=1e-5)
    assert got["t2i"] == pytest.approx(nce([[cos(s.text_embed[i], s.image_embed[i, j]) / tau for j in range(k)]
                                            for i in range(B)], target), abs=1e-5)
    text_emo = nce([s.text_emotion_logits[i].double().tolist() for i in labelled], [labels[i] for i in labelled])
    assert got["text_emo"] == pytest.approx(text_emo, abs=1e-5)  # L'_emo, unlabelled rows skipped

    # E_t: E_emo's row of the label (log of a 0.1-smoothed one-hot at initialisation); where
    # there is none, f'_emo's softmax times E_emo.
    table = torch.log(0.9 * torch.eye(C) + 0.1 / C)
    for i in range(B):
        want = table[labels[i]] if labels[i] >= 0 else torch.softmax(s.text_emotion_logits[i], -1) @ table
        torch.testing.assert_close(s.text_emotion[i], want, atol=1e-5, rtol=0)
    emo = sum(kl(s.image_emotion[i, target[i]], s.text_emotion[i]) for i in labelled) / len(labelled)
    assert got["emo"] == pytest.approx(emo, abs=1e-5)  # Eq. 5

    i_v, i_t = s.image_intention, s.intention
    int_i2t = nce([[cos(i_v[i, target[i]], i_t[j]) / tau for j in range(B)] for i in range(B)], list(range(B)))
    int_t2i = nce([[cos(i_t[i], i_v[i, j]) / tau for j in range(k)] for i in range(B)], target)
    assert got["int"] == pytest.approx(int_i2t + int_t2i, abs=1e-5)

    # Eq. 8-9 on the two views of each modality, each through its own projection head. The
    # dialogue's views are two passes through BERT under its dropout, not two dropout masks of
    # one feature vector (which agree wherever neither mask zeroed an element).
    both = (s.text_views[0] != 0) & (s.text_views[1] != 0)
    assert not torch.allclose(s.text_views[0][both], s.text_views[1][both])
    heads = {"text": (model.text_emotion_head, s.text_views), "vision": (model.vision_emotion_head, s.image_views)}
    for modality, (emotion_head, views) in heads.items():
        assert not torch.equal(views[0], views[1])
        n = views.shape[1]
        p1, p2 = (lin(head, view) for head, view in zip(model.view_heads[modality], views))
        e1, e2 = lin(emotion_head, p1.float()), lin(emotion_head, p2.float())
        n1, n2 = lin(model.intention_head, p1.float()), lin(model.intention_head, p2.float())
        sym_e = sum(0.5 * (kl(e1[i], e2[i]) + kl(e2[i], e1[i])) for i in range(n)) / n
        sym_i = sum(0.5 * (kl(n1[i], n2[i]) + kl(n2[i], n1[i])) for i in range(n)) / n
        assert got[f"intra_emo_{modality}"] == pytest.approx(sym_e, abs=1e-5)
        assert got[f"intra_int_{modality}"] == pytest.approx(sym_i, abs=1e-5)
        assert got[f"intra_con_{modality}"] == pytest.approx(two_view_nce(p1, p2, 0.1), abs=1e-5)

    # SAMM at initialisation (α = β = 0.5), then the BCE of Eq. 1 over all B·K pairs.
    bce = 0.0
    for i in range(B):
        for j in range(k):
            s_ei = 0.5 * (1 + cos(s.text_emotion[i], s.image_emotion[i, j])) / 2 \
                + 0.5 * (1 + cos(i_t[i], i_v[i, j])) / 2
            p = 0.5 * s.p_vl[i, j].item() + 0.5 * s_ei
            assert s.p_final[i, j].item() == pytest.approx(p, abs=1e-5)
            bce -= math.log(p) if j == target[i] else math.log(1 - p)
    assert got["itm"] == pytest.approx(bce / (B * k), abs=1e-5)

    weighted = {"emo", "int", "text_emo", "intra_emo_text", "intra_int_text", "intra_emo_vision", "intra_int_vision"}
    total = sum((0.5 if name in weighted else 1.0) * value for name, value in got.items())  # Eq. 20
    assert model.total_loss(s.losses).item() == pytest.approx(total, abs=1e-4)


def test_the_emotion_target_is_peaked_and_trains_only_the_image_side():
    """Eq. 4-5: softmax(E_t) starts at 0.914 on the dialogue's emotion (an identity E_emo gave
    0.31, close to uniform), and L_emo moves f_emo towards it, never the target itself."""
    m = tiny()
    m.train()
    s = m.run(make_batch(emotion=[2, 3, 0, 6]))
    peak = torch.softmax(s.text_emotion, -1).max(-1)
    assert peak.indices.tolist() == [2, 3, 0, 6] and bool((peak.values > 0.9).all())
    s.losses["emo"].backward()
    assert m.emotion_embed.weight.grad is None or not bool(m.emotion_embed.weight.grad.any())
    assert bool(m.vision_emotion_head.weight.grad.any())
    with pytest.raises(ValueError, match="emotion_smoothing must be in"):
        tiny(emotion_smoothing=0.0)


def test_rows_without_emotion_skip_the_emotion_terms(model):
    model.eval()
    s = model.run(make_batch(emotion=[-1, -1, -1, -1]))
    assert s.losses["emo"].item() == 0.0 and s.losses["text_emo"].item() == 0.0
    model.total_loss(s.losses).backward()  # still a graph to backpropagate
    model.zero_grad()


def test_loss_weights_default_to_the_group_weight():
    weights = tiny(w_e=0.25, w_i_vision=1.0).weights
    assert weights["emo"] == weights["text_emo"] == weights["intra_emo_text"] == weights["intra_emo_vision"] == 0.25
    assert weights["int"] == weights["intra_int_text"] == 0.5 and weights["intra_int_vision"] == 1.0


# ---------------------------------------------------------------------------- EIKS, IEGA


def test_eiks_drops_the_relation_with_the_highest_emotion_loss(model):
    torch.manual_seed(2)
    eiks = KnowledgeSelection(4)
    knowledge = torch.randn(2, 3, 4)
    refined, keep = eiks(knowledge, torch.tensor([[0.1, 0.9, 0.3], [2.0, 0.5, 1.0]]))  # Eq. 11
    assert keep.tolist() == [[True, False, True], [False, True, True]]
    for b in range(2):
        kept = knowledge[b][keep[b]]
        delta = lin(eiks.delta[2], F.gelu(lin(eiks.delta[0], kept.mean(0))))
        for r in range(3):
            enhanced = knowledge[b, r].double() + delta  # I_ke = I_t + δ
            w = torch.sigmoid(lin(eiks.gate, torch.cat([knowledge[b, r].double(), enhanced])))  # Eq. 12
            want = w * enhanced + (1 - w) * knowledge[b, r].double()  # Eq. 13
            torch.testing.assert_close(refined[b, r].double(), want, atol=1e-5, rtol=0)

    # In the model: the per-relation loss is f'_emo's cross-entropy against the dialogue's emotion.
    model.eval()
    s = model.run(make_batch())
    labels = make_batch()["label_emotion"]
    for i in range(B):
        e_t = (F.one_hot(labels[i], C).double() if labels[i] >= 0
               else torch.softmax(s.text_emotion_logits[i].double(), -1))
        for r in range(R):
            ce = -(e_t * torch.log_softmax(lin(model.text_emotion_head, s.relations[i, r]), -1)).sum()
            assert s.relation_loss[i, r].item() == pytest.approx(ce.item(), abs=1e-5)
        assert s.kept[i].tolist() == [r != int(s.relation_loss[i].argmax()) for r in range(R)]
        torch.testing.assert_close(s.intention[i], s.refined[i][s.kept[i]].mean(0), atol=1e-6, rtol=0)


def direct_fusion(fusion: GuidedFusion, text, mask, image, knowledge, knowledge_mask, emotion, branch_scale):
    """Eq. 14-16 (or the plain cross-attention) for each dialogue, candidate and head, written out."""
    heads, width = fusion.heads, text.shape[-1]
    d = width // heads
    out = torch.zeros(image.shape[0], image.shape[1], width, dtype=torch.float64)
    for b in range(image.shape[0]):
        q_t = lin(fusion.q_text, text[b])
        if fusion.guided:
            tokens, masks = [], []
            if fusion.intention:
                tokens.append(knowledge[b].double())
                masks.append(knowledge_mask[b])
            if fusion.emotion:
                tokens.append(lin(fusion.emotion_in, emotion[b])[None])
                masks.append(torch.tensor([True]))
            guide, guide_mask = torch.cat(tokens), torch.cat(masks)
            q_ei = lin(fusion.q_guide, guide)
        for k in range(image.shape[1]):
            k_v, v_v = lin(fusion.k_image, image[b, k]), lin(fusion.v_image, image[b, k])
            parts = []
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                if fusion.guided:
                    v_eiv = torch.softmax(q_ei[:, sl] @ k_v[:, sl].t() / math.sqrt(d), -1) @ v_v[:, sl]  # Eq. 14
                    scores = (q_t[:, sl] @ q_ei[:, sl].t() / math.sqrt(d)).masked_fill(~guide_mask, -math.inf)
                    parts.append(torch.softmax(scores, -1) @ v_eiv)  # Eq. 15
                else:
                    parts.append(torch.softmax(q_t[:, sl] @ k_v[:, sl].t() / math.sqrt(d), -1) @ v_v[:, sl])
            x = text[b].double() + branch_scale[b, k] * torch.cat(parts, -1)
            x = F.layer_norm(x, (width,), fusion.norm.weight.double(), fusion.norm.bias.double(), fusion.norm.eps)
            z = lin(fusion.mlp[2], F.gelu(lin(fusion.mlp[0], x)))  # Eq. 16
            out[b, k] = z[mask[b].bool()].mean(0)
    return out


@pytest.mark.parametrize("intention, emotion", [(True, True), (True, False), (False, True), (False, False)])
def test_fusion_matches_the_equations(intention, emotion):
    """Guided by the relations and E_t, by one of them, or neither (plain cross-attention)."""
    torch.manual_seed(4)
    fusion = GuidedFusion(8, heads=2, mlp_ratio=2.0, drop_path=0.5, intention=intention, emotion=emotion,
                          num_emotions=3)
    text, image = torch.randn(2, 3, 8), torch.randn(2, 3, 4, 8)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    knowledge, knowledge_mask = torch.randn(2, 2, 8), torch.tensor([[True, False], [True, True]])
    emotion = torch.randn(2, 3)
    args = (text, mask, image, knowledge, knowledge_mask, emotion)
    fusion.eval()
    torch.testing.assert_close(fusion(*args).double(), direct_fusion(fusion, *args, torch.ones(2, 3)),
                               atol=1e-5, rtol=0)
    # Stochastic depth in training: each pair's fused branch is dropped or scaled by 1/(1 - 0.5).
    fusion.train()
    out = fusion(*args).double()
    dropped, kept = direct_fusion(fusion, *args, torch.zeros(2, 3)), direct_fusion(fusion, *args, 2 * torch.ones(2, 3))
    for b in range(2):
        for k in range(3):
            assert any(torch.allclose(out[b, k], want[b, k], atol=1e-5) for want in (dropped, kept))


# ---------------------------------------------------------------------------- the model


@pytest.mark.parametrize("k", [10, 2])
def test_forward_backward_every_parameter_gets_a_gradient(model, k):
    model.train()
    out = model(make_batch(k=k))
    assert out.scores.shape == (B, k) and out.logits == {}
    assert bool(((out.scores >= 0) & (out.scores <= 1)).all())
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("removed", ["emotion", "intention", "both"])
def test_a_zero_weight_removes_its_module(model, removed):
    """Figure 5: "performance drops when either weight is set to 0 (i.e., the corresponding
    module is removed)". Every weight of the group 0: nothing of it is built or computed."""
    weights = {"emotion": {"w_e": 0.0}, "intention": {"w_i": 0.0}, "both": {"w_e": 0.0, "w_i": 0.0}}[removed]
    m = tiny(**weights)
    m.load_state_dict(model.state_dict(), strict=False)
    names = {n for n, _ in m.named_parameters()}
    emotion_parts = ("text_emotion_head.", "vision_emotion_head.", "emotion_embed.", "eiks.", "fusion.emotion_in.",
                     "samm.alpha_logit")
    intention_parts = ("intention_head.", "eiks.", "samm.alpha_logit")
    gone = {"emotion": emotion_parts, "intention": intention_parts, "both": emotion_parts + intention_parts}[removed]
    assert not [n for n in names if n.startswith(gone)]
    m.eval()
    batch = make_batch()
    with torch.no_grad():
        s = m.run(batch)
    emotion_terms = {"emo", "text_emo", "intra_emo_text", "intra_emo_vision"}
    intention_terms = {"int", "intra_int_text", "intra_int_vision"}
    absent = {"emotion": emotion_terms, "intention": intention_terms, "both": emotion_terms | intention_terms}[removed]
    assert not absent & set(s.losses) and {"i2t", "t2i", "itm", "intra_con_text"} <= set(s.losses)
    if removed == "emotion":  # no EIKS: every relation kept; SAMM on the intention alone
        assert s.text_emotion is None and bool(s.kept.all())
        torch.testing.assert_close(s.intention, s.relations.mean(1))
        beta = torch.sigmoid(m.samm.beta_logit[0])
        s_int = 0.5 * (1 + F.cosine_similarity(s.intention.unsqueeze(1), s.image_intention, dim=-1))
        torch.testing.assert_close(s.p_final, beta * s.p_vl + (1 - beta) * s_int)
    elif removed == "intention":  # the COMET relations are not even encoded
        assert s.relations is None and s.intention is None and s.image_intention is None
        no_knowledge = {k: v for k, v in batch.items() if not k.startswith("knowledge_")}
        with torch.no_grad():
            torch.testing.assert_close(m.run(no_knowledge).p_final, s.p_final)
        beta = torch.sigmoid(m.samm.beta_logit[0])
        s_emo = 0.5 * (1 + F.cosine_similarity(s.text_emotion.unsqueeze(1), s.image_emotion, dim=-1))
        torch.testing.assert_close(s.p_final, beta * s.p_vl + (1 - beta) * s_emo)
    else:
        assert not hasattr(m, "samm") and not m.fusion.guided
        torch.testing.assert_close(s.p_final, s.p_vl)
    m.train()
    m.total_loss(m.run(batch).losses).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_all_parts_off_builds_only_what_is_used():
    m = tiny(**{switch: False for switch in SWITCHES})
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"text", "vision", "text_proj", "vision_proj", "temp", "text_emotion_head", "fusion", "itm_head"}
    out = m(make_batch(k=3))
    assert set(out.losses) == {"i2t", "t2i", "text_emo", "itm"}
    out.loss.backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_changes_the_model(model, switch):
    variant = tiny(**{switch: False})
    variant.load_state_dict(model.state_dict(), strict=False)  # the shared parameters are equal
    model.eval()
    variant.eval()
    batch = make_batch()
    with torch.no_grad():
        full, ablated = model.run(batch), variant.run(batch)
    full_names = {n for n, _ in model.named_parameters()}
    names = {n for n, _ in variant.named_parameters()}
    assert names <= full_names
    if switch == "use_inter":
        assert {"emo", "int"} <= set(full.losses) and not {"emo", "int"} & set(ablated.losses)
        assert model.total_loss(full.losses).item() != pytest.approx(variant.total_loss(ablated.losses).item())
    elif switch == "use_intra":
        assert not [n for n in ablated.losses if n.startswith("intra_")]
        assert model.total_loss(full.losses).item() != pytest.approx(variant.total_loss(ablated.losses).item())
    else:
        prefix = {"use_eiks": ("eiks.",), "use_iega": ("fusion.q_guide.", "fusion.emotion_in."),
                  "use_samm": ("samm.",)}[switch]
        assert {n for n in full_names - names} == {n for n in full_names if n.startswith(prefix)} != set()
        assert not torch.allclose(full.p_final, ablated.p_final)
        if switch == "use_samm":
            torch.testing.assert_close(ablated.p_final, ablated.p_vl)  # p_final = p_vl
        if switch == "use_eiks":
            assert bool(ablated.kept.all())
            torch.testing.assert_close(ablated.intention, ablated.relations.mean(1))


def test_bf16_forward_and_backward():
    m = tiny().to(torch.bfloat16)
    m.train()
    out = m(make_batch(k=3))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.scores.shape == (B, 3) and bool(torch.isfinite(out.scores).all())
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in m.parameters())


# ---------------------------------------------------------------------------- configs


def test_configs_and_full_size_parameter_count():
    tiny_cfg = get_model_config("eigml-tiny")
    full_cfg = get_model_config("eigml")
    for cfg in (tiny_cfg, full_cfg):
        assert cfg["task"] == "select" and cfg["aux_labels"] == {"emotion": 7} and cfg["heads"] == {}
        assert all(cfg[switch] is True for switch in SWITCHES)
        assert cfg["text_inputs"]["knowledge"]["separate"] is True
        assert cfg["text_inputs"]["knowledge"]["columns"] == ["comet_xIntent", "comet_xNeed", "comet_xWant",
                                                              "comet_xEffect"]
    with pytest.raises(ValueError, match="aux_labels"):
        build_from_config({**tiny_cfg, "aux_labels": {}})
    # Full size with random weights on the meta device (no memory, no download).
    with torch.device("meta"):
        full = build_model("eigml", {"text.pretrained": False})
    count = {name: sum(p.numel() for p in child.parameters()) for name, child in full.named_children()}
    assert count["text"] == 101_677_056  # bert-base-chinese without its pooler (the paper's figure)
    assert count["vision"] == 85_697_280 - 768  # ALBEF's ViT-B/16 at 128 px less the patch-embedding bias
    total = sum(count.values())
    assert abs(total / full_cfg["paper_params"]["total"] - 1) < 0.02


def test_albef_vision_weights_reproduce_albefs_vit(tmp_path):
    from timm.models.vision_transformer import VisionTransformer  # ALBEF's ViT is timm's, same names

    torch.manual_seed(5)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                            qkv_bias=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
                            num_classes=0).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.05 * torch.randn_like(p))  # nonzero biases, positions and class token
    checkpoint = {"model": {f"visual_encoder.{k}": v for k, v in vit.state_dict().items()},
                  "config": {"image_res": 256}, "epoch": 29}
    vision_cfg = dict(get_model_config("eigml")["vision"]["vision_cfg"], image_size=32, patch_size=8, width=32,
                      layers=2, head_width=16, mlp_ratio=2.0)
    # As a user turns the downloaded ALBEF.pth into the tower's weights:
    from ray_sticker.cli import main as cli_main

    torch.save(checkpoint, tmp_path / "ALBEF.pth")
    assert cli_main(["-q", "weights", "albef", "--src", str(tmp_path / "ALBEF.pth"), "--out", str(tmp_path / "vit.pt"),
                     "--image-size", "32"]) == 0
    tower = VisionTower({"vision_cfg": vision_cfg, "pretrained": str(tmp_path / "vit.pt")}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, (tokens, pooled) = vit.forward_features(x), tower(x)
    torch.testing.assert_close(pooled, want[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens, want[:, 1:], atol=1e-5, rtol=0)
    # ALBEF pre-trains at 256 px, EIGML fine-tunes at 128: the patch positions are resized.
    assert albef_vision_weights(checkpoint, 16)["positional_embedding"].shape == (1 + 2 * 2, 32)
