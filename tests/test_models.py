"""The model registry, the towers and M2SA / unimodal baselines on CPU."""

import json
from importlib import resources

import pytest
import torch
import torch.nn.functional as F

from ray_sticker.data import synthetic
from ray_sticker.data.pipeline import PreprocessSpec, preprocess_batch
from ray_sticker import architectures
from ray_sticker.models import registry
from ray_sticker.data.text import TINY_TOKENIZER, load_tokenizer, tiny_vocab_size
from ray_sticker.models.encoders import TextTower, VisionTower
from ray_sticker.models.layers import CLIP_MEAN, CLIP_STD, ImageNormalize
from ray_sticker.models.m2sa import PooledFusionClassifier
from ray_sticker.models.output import ModelOutput
from ray_sticker.models.registry import build_from_config, build_model, get_model_config, list_models, merge

TINY = ("m2sa-tiny", "text-only-tiny", "image-only-tiny")
B = 6


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    """A preprocessed batch of synthetic rows at the tiny models' sizes (32 px, 24 tokens)."""
    table = synthetic.classify_rows(B, seed=11, image_size=40)
    np_batch = {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}
    spec = PreprocessSpec(labels=(("sentiment", 3),), tokenizer=TINY_TOKENIZER, max_text_length=24, image_size=32)
    out = preprocess_batch(np_batch, spec)
    assert not out.pop("skip").any()
    return {k: torch.from_numpy(v) for k, v in out.items()}


# ---------------------------------------------------------------------------- registry


def test_list_models_has_every_shipped_json():
    root = resources.files("ray_sticker.models") / "configs"
    shipped = {p.name[:-5] for p in root.iterdir() if p.name.endswith(".json")}
    assert {"m2sa-tiny", "text-only-tiny", "image-only-tiny", "m2sa-xsm-clip", "text-only-xsm",
            "image-only-clip"} <= shipped
    assert shipped <= set(list_models())
    assert list_models() == sorted(list_models())
    assert {"m2sa", "text-only", "image-only"} <= set(registry.list_archs())


def test_get_model_config_reads_json_and_applies_overrides():
    cfg = get_model_config("m2sa-tiny")
    root = resources.files("ray_sticker.models") / "configs"
    assert cfg == json.loads((root / "m2sa-tiny.json").read_text())
    over = get_model_config("m2sa-tiny", {"dropout": 0.3, "text.hf_config.num_hidden_layers": 1})
    assert over["dropout"] == 0.3
    assert over["text"]["hf_config"]["num_hidden_layers"] == 1
    assert over["text"]["hf_config"]["hidden_size"] == 32  # siblings untouched
    assert get_model_config("m2sa-tiny") == cfg  # the shipped config is not modified


def test_unknown_model_lists_registered_names():
    with pytest.raises(KeyError) as err:
        get_model_config("no-such-model")
    msg = str(err.value)
    assert "unknown model 'no-such-model'" in msg
    for name in list_models():
        assert name in msg
    with pytest.raises(KeyError, match="names arch 'nope'; known: .*m2sa"):
        build_from_config({"arch": "nope"})


def test_merge_dotted_and_nested_keys():
    base = {"a": {"b": 1, "c": {"d": 2}}, "x": 1}
    out = merge(base, {"a.b": 10, "a.c": {"e": 3}, "n.m.k": 4, "x": {"y": 1}})
    assert out == {"a": {"b": 10, "c": {"d": 2, "e": 3}}, "x": {"y": 1}, "n": {"m": {"k": 4}}}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "x": 1}  # the base is not modified
    value = [1, 2]
    out = merge({}, {"l": value})
    value.append(3)
    assert out == {"l": [1, 2]}  # values are copied


def test_merge_replaces_label_heads_whole():
    base = {"heads": {"sentiment": 3}, "aux_labels": {"emotion": 7}}
    assert merge(base, {"heads": {"emotion": 7}})["heads"] == {"emotion": 7}
    assert merge(base, {"aux_labels": {}})["aux_labels"] == {}
    assert merge(base, {"heads.intent": 20})["heads"] == {"sentiment": 3, "intent": 20}


def test_add_model_config(tmp_path):
    cfg = get_model_config("text-only-tiny", {"description": "a user config", "dropout": 0.1})
    path = tmp_path / "my-user-model.json"
    path.write_text(json.dumps(cfg))
    try:
        assert registry.add_model_config(path) == "my-user-model"
        assert "my-user-model" in list_models()
        assert get_model_config("my-user-model")["description"] == "a user config"
        assert isinstance(build_model("my-user-model"), PooledFusionClassifier)
    finally:
        architectures._EXTRA_CONFIGS.pop("my-user-model", None)


def test_register_twice_is_an_error():
    with pytest.raises(ValueError, match="architecture 'm2sa' registered twice"):
        registry.register("m2sa")(lambda cfg: None)


# ---------------------------------------------------------------------------- building and forward


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_forward_and_loss_is_cross_entropy(name, batch):
    torch.manual_seed(0)
    model = build_model(name)
    assert isinstance(model, PooledFusionClassifier)
    out = model(batch)
    assert isinstance(out, ModelOutput)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.losses) == {"ce_sentiment"}
    assert set(out.logits) == {"sentiment"}
    logits = out.logits["sentiment"]
    assert logits.shape == (B, 3)
    expected = F.cross_entropy(logits.float(), batch["label_sentiment"])
    torch.testing.assert_close(out.loss, expected)
    # golden: -mean(log softmax at the label), computed by hand
    logp = logits.detach().double().log_softmax(-1)
    by_hand = -logp[torch.arange(B), batch["label_sentiment"]].mean()
    assert out.loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
    out.loss.backward()
    assert model.heads["sentiment"].weight.grad is not None
    assert model.uses_text == (name != "image-only-tiny")
    assert model.uses_image == (name != "text-only-tiny")


def test_head_input_width_is_the_sum_of_tower_widths():
    m2sa, text, image = (build_model(n) for n in TINY)
    assert m2sa.heads["sentiment"].in_features == m2sa.text.width + m2sa.vision.width == 64
    assert text.heads["sentiment"].in_features == 32 and text.vision is None
    assert image.heads["sentiment"].in_features == 32 and image.text is None


def test_text_only_ignores_pixels_and_image_only_ignores_tokens(batch):
    torch.manual_seed(0)
    text = build_model("text-only-tiny").eval()
    no_pixels = {k: v for k, v in batch.items() if k != "pixel_values"}
    a = text(no_pixels).logits["sentiment"]
    b = text({**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).logits["sentiment"]
    torch.testing.assert_close(a, b)

    image = build_model("image-only-tiny").eval()
    no_tokens = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    a = image(no_tokens).logits["sentiment"]
    b = image(batch).logits["sentiment"]
    torch.testing.assert_close(a, b)

    # ... while the fused model reads both.
    m2sa = build_model("m2sa-tiny").eval()
    with pytest.raises(KeyError):
        m2sa(no_pixels)
    with pytest.raises(KeyError):
        m2sa(no_tokens)


def test_forward_without_labels_has_zero_loss_and_loss_weights_scale(batch):
    torch.manual_seed(0)
    model = build_model("m2sa-tiny").eval()  # eval: no dropout inside the text tower
    unlabelled = {k: v for k, v in batch.items() if not k.startswith("label_")}
    out = model(unlabelled)
    assert out.losses == {} and out.loss.item() == 0.0
    assert out.logits["sentiment"].shape == (B, 3)
    torch.manual_seed(0)
    weighted = build_model("m2sa-tiny", {"loss_weights": {"sentiment": 2.5}}).eval()
    ref, scaled = model(batch), weighted(batch)
    torch.testing.assert_close(scaled.losses["ce_sentiment"], ref.losses["ce_sentiment"])
    torch.testing.assert_close(scaled.loss, 2.5 * ref.loss)


def test_extra_head_adds_a_named_loss(batch):
    model = build_model("m2sa-tiny", {"heads.intent": 4})  # adds a head; a "heads" mapping would replace them
    assert set(model.heads) == {"sentiment", "intent"}
    labelled = {**batch, "label_intent": torch.tensor([0, 1, 2, 3, 0, 1])}
    out = model(labelled)
    assert set(out.losses) == {"ce_sentiment", "ce_intent"}
    assert out.logits["intent"].shape == (B, 4)
    torch.testing.assert_close(out.loss, out.losses["ce_sentiment"] + out.losses["ce_intent"])


def test_golden_loss_is_deterministic_under_a_fixed_seed(batch):
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("m2sa-tiny")
        with torch.no_grad():
            losses.append(model(batch).loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert 0.5 < losses[0] < 3.0  # near ln(3) for a random 3-class head
    torch.manual_seed(1)
    with torch.no_grad():
        other = build_model("m2sa-tiny")(batch).loss.item()
    assert other != pytest.approx(losses[0], abs=1e-6)  # the seed matters: weights are random-init


def test_builder_errors():
    cfg = get_model_config("m2sa-tiny")
    with pytest.raises(ValueError, match="m2sa needs both 'text' and 'vision'"):
        build_from_config({**cfg, "vision": None})
    with pytest.raises(ValueError, match="m2sa needs both"):
        build_from_config({k: v for k, v in cfg.items() if k != "text"})
    with pytest.raises(ValueError, match="text-only needs a 'text' tower"):
        build_from_config({**get_model_config("image-only-tiny"), "arch": "text-only"})
    with pytest.raises(ValueError, match="image-only needs a 'vision' tower"):
        build_from_config({**get_model_config("text-only-tiny"), "arch": "image-only"})
    with pytest.raises(ValueError, match="needs a text tower, a vision tower or both"):
        PooledFusionClassifier({"heads": {"sentiment": 3}})


# ---------------------------------------------------------------------------- normalisation and towers


def test_image_normalize():
    norm = ImageNormalize()
    pixels = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = norm(pixels, torch.float32)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 0, 0], (1 - mean) / std)
    assert out.dtype == torch.float32 and out.shape == pixels.shape
    zeros = norm(torch.zeros((1, 3, 2, 2), dtype=torch.uint8), torch.float32)
    torch.testing.assert_close(zeros[0, :, 1, 1], -mean / std)
    # Float input is taken as already in [0, 1]; the output dtype follows the request.
    half = norm(torch.ones((1, 3, 2, 2)), torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half[0, :, 0, 0].float(), (1 - mean) / std, atol=1e-2, rtol=1e-2)
    custom = ImageNormalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.testing.assert_close(custom(pixels, torch.float32), torch.ones(2, 3, 4, 4))


def test_towers_return_tokens_and_pooled_at_tower_width(batch):
    cfg = get_model_config("m2sa-tiny")
    text = TextTower(cfg["text"])
    tokens, pooled = text(batch["input_ids"], batch["attention_mask"])
    assert tokens.shape == (B, 24, text.width) and pooled.shape == (B, text.width) and text.width == 32
    vision = VisionTower(cfg["vision"])
    pixels = ImageNormalize()(batch["pixel_values"], torch.float32)
    tokens, pooled = vision(pixels)
    assert vision.width == 32 and vision.image_size == 32
    assert tokens.shape == (B, (32 // 8) ** 2, vision.width) and pooled.shape == (B, vision.width)
    assert "output_tokens" not in cfg["vision"]["vision_cfg"]  # the spec is not modified


def test_text_tower_sizes_embedding_to_tokenizer():
    spec = {
        "tokenizer": TINY_TOKENIZER,
        "hf_config": {"model_type": "bert", "vocab_size": "tokenizer", "hidden_size": 16, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32},
    }
    tower = TextTower(spec)
    n = len(load_tokenizer(TINY_TOKENIZER))
    assert n == tiny_vocab_size()
    assert tower.encoder.get_input_embeddings().num_embeddings == n
    assert tower.encoder.config.vocab_size == n
    assert tower.width == 16
    assert spec["hf_config"]["vocab_size"] == "tokenizer" and "model_type" in spec["hf_config"]
    fixed = TextTower({**spec, "hf_config": {**spec["hf_config"], "vocab_size": 50}})
    assert fixed.encoder.get_input_embeddings().num_embeddings == 50


def test_tower_spec_errors():
    with pytest.raises(ValueError, match="random init needs 'hf_config'"):
        TextTower({"tokenizer": TINY_TOKENIZER})
    with pytest.raises(ValueError, match="pretrained=true needs 'hf_model_name'"):
        TextTower({"pretrained": True})
    with pytest.raises(ValueError, match="give 'open_clip_model' or 'vision_cfg'"):
        VisionTower({})
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope'"):
        VisionTower({"open_clip_model": "ViT-Nope"})


def test_vit_b32_tower_from_open_clip_name_without_weights(monkeypatch):
    import open_clip

    def no_download(*args, **kwargs):
        raise AssertionError("a random-init tower must not fetch pretrained weights")

    monkeypatch.setattr(open_clip, "create_model", no_download)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_download)
    torch.manual_seed(0)
    tower = VisionTower({"open_clip_model": "ViT-B-32"})
    assert tower.width == 768 and tower.image_size == 224
    assert tower.visual.proj is None
    assert 80e6 < sum(p.numel() for p in tower.parameters()) < 95e6
    with torch.no_grad():
        tokens, pooled = tower(torch.randn(1, 3, 224, 224))
    assert pooled.shape == (1, 768)
    assert tokens.shape == (1, 49, 768)  # 7x7 patches of 32 px


TINY_DINOV2 = {"pretrained": False, "image_size": 32, "image_mean": [0.485, 0.456, 0.406],
               "image_std": [0.229, 0.224, 0.225],
               "hf_config": {"model_type": "dinov2", "image_size": 64, "patch_size": 8, "hidden_size": 32,
                             "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2}}


def test_dinov2_vision_tower_random_and_from_a_directory(tmp_path):
    """A Hugging Face vision encoder as the vision tower (M2SA's DINOv2): tokens and the pooled
    CLS, fed at its input size (32) below its architecture's (64: positions interpolated), and
    the same weights back from a saved directory."""
    from ray_sticker.models.encoders import vision_image_size
    from ray_sticker.train.engine import tower_of_parameters

    torch.manual_seed(0)
    tower = VisionTower(TINY_DINOV2)
    assert (tower.width, tower.image_size, vision_image_size(TINY_DINOV2)) == (32, 32, 32)
    tokens, pooled = tower(torch.rand(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 16, 32) and pooled.shape == (2, 32)
    tower.encoder.save_pretrained(tmp_path / "dinov2")
    loaded = VisionTower({**TINY_DINOV2, "pretrained": True, "hf_model_name": str(tmp_path / "dinov2")})
    for key, value in tower.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    cfg = get_model_config("m2sa-tiny")
    model = build_from_config({**cfg, "vision": TINY_DINOV2})
    assert set(tower_of_parameters(model).values()) == {"text", "vision", "head"}  # freeze_vision reaches it
    batch = {"input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long),
             "pixel_values": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
             "label_sentiment": torch.tensor([0, 2])}
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    no_grad = [n for n, p in model.vision.named_parameters() if p.grad is None]
    assert no_grad == ["encoder.embeddings.mask_token"], no_grad  # used only for masked-image pretraining


def test_m2sa_dinov2_config_counts_dinov2_base():
    """m2sa-xsm-dinov2 on meta: XLM-R 278.04M + DINOv2-base as released (86.58M: its 518 px
    position table) + the 1536 -> 3 head."""
    from ray_sticker.models.params import count

    assert count(get_model_config("m2sa-xsm-dinov2"))["total"] == 278_043_648 + 86_580_480 + 1536 * 3 + 3
