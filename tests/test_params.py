"""Parameter counts with random weights (nothing downloaded) and the ``models --params`` table."""

import time

import pytest
import torch
from torch import nn

from ray_sticker import cli
from ray_sticker import architectures
from ray_sticker.models import registry
from ray_sticker.models.params import count, params_table, random_weights
from ray_sticker.models.registry import build_from_config, get_model_config

XLMR_BASE = 278_043_648  # xlm-roberta-base with its pooler
CLIP_B32_VISION = 87_456_000  # open_clip ViT-B-32 visual without the projection
M2SA_HEAD = 2 * 768 * 3 + 3


def test_random_weights_turns_every_tower_spec_off():
    cfg = {
        "arch": "x",
        "text": {"hf_model_name": "bert-base-chinese", "pretrained": True, "hf_config": {"model_type": "bert"}},
        "vision": {"open_clip_model": "ViT-B-16", "pretrained": "openai"},
        "knowledge": {"hf_config": {"model_type": "bert"}},
        "clip": {"hf_model_name": "OFA-Sys/chinese-clip-vit-base-patch16", "pretrained": True,
                 "hf_config": {"model_type": "chinese_clip", "pretrained": "kept: architecture, not a spec"}},
        "towers": [{"vision_cfg": {"width": 32}, "pretrained": "/ckpt.pt"}],
        "image_encoder": {"checkpoint_name": "albef", "pretrained": "s3://b/albef.pt"},
        "other": {"pretrained": True},
    }
    out = random_weights(cfg)
    assert out["text"]["pretrained"] is False and out["vision"]["pretrained"] is None
    assert out["knowledge"]["pretrained"] is False and out["clip"]["pretrained"] is False
    assert out["clip"]["hf_config"]["pretrained"] == "kept: architecture, not a spec"
    assert out["towers"][0]["pretrained"] is None and out["image_encoder"]["pretrained"] is None
    assert out["other"]["pretrained"] is False
    assert cfg["text"]["pretrained"] is True and cfg["vision"]["pretrained"] == "openai"  # a copy


def test_random_weights_needs_the_architecture():
    with pytest.raises(ValueError, match=r"text: random init needs 'hf_config'.*xlm-roberta-base"):
        random_weights({"arch": "x", "text": {"hf_model_name": "xlm-roberta-base", "pretrained": True}})


def test_count_on_meta_equals_a_real_build():
    cfg = get_model_config("m2sa-tiny")
    real = sum(p.numel() for p in build_from_config(cfg).parameters())
    assert count(cfg) == count(cfg, device="cpu") == {"total": real}


def test_full_size_m2sa_counted_without_download_in_seconds():
    t0 = time.perf_counter()
    counts = count(get_model_config("m2sa-xsm-clip"))
    assert time.perf_counter() - t0 < 10
    assert counts == {"total": XLMR_BASE + CLIP_B32_VISION + M2SA_HEAD}


def test_m2sa_text_encoders_of_the_papers_comparison():
    """M2SA compares XLM-R sentiment-multilingual, XLM-R and mBERT (uncased) with CLIP's vision
    tower: the same head on each, the encoders' published sizes."""
    mbert_uncased = 167_356_416  # bert-base-multilingual-uncased with its pooler
    assert count(get_model_config("m2sa-xlmr-clip")) == {"total": XLMR_BASE + CLIP_B32_VISION + M2SA_HEAD}
    assert count(get_model_config("m2sa-mbert-clip")) == {"total": mbert_uncased + CLIP_B32_VISION + M2SA_HEAD}
    assert get_model_config("m2sa-mbert-clip")["text"]["hf_model_name"] == "bert-base-multilingual-uncased"


class _Parts(nn.Module):
    """A model with a breakdown; ``item`` makes it unbuildable on the meta device."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = nn.Linear(4, 8)  # 40
        self.fusion = nn.Linear(8, 2, bias=False)  # 16
        if cfg.get("item"):
            self.scale = float(torch.ones(()).item())

    def param_breakdown(self):
        return {"fusion": sum(p.numel() for p in self.fusion.parameters())}


@pytest.fixture
def parts_arch(monkeypatch):
    monkeypatch.setitem(registry._BUILDERS, "test-parts", _Parts)
    for name, extra in [("parts-a", {"paper_params": {"total": 50, "fusion": 16, "heads": 7}}),
                        ("parts-b", {"item": True})]:
        monkeypatch.setitem(architectures._EXTRA_CONFIGS, name, {"arch": "test-parts", "task": "classify", **extra})


def test_count_breakdown_and_cpu_fallback(parts_arch):
    assert count(get_model_config("parts-a")) == {"total": 56, "fusion": 16}
    assert count(get_model_config("parts-b")) == {"total": 56, "fusion": 16}  # .item() fails on meta


def test_params_table_beside_paper_figures(parts_arch):
    rows = params_table(["parts-a", "parts-b"])
    base = {"name": "parts-a", "arch": "test-parts", "task": "classify", "params": 56}
    assert rows == [
        {**base, "compared": "total", "measured": 56, "paper": 50, "diff": pytest.approx(0.12)},
        {**base, "compared": "fusion", "measured": 16, "paper": 16, "diff": 0.0},
        {**base, "compared": "heads", "measured": None, "paper": 7, "diff": None},
        {"name": "parts-b", "arch": "test-parts", "task": "classify", "params": 56},
    ]


def test_models_params_command(parts_arch, capsys):
    assert cli.main(["-q", "models", "--params", "m2sa-tiny", "parts-a"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "arch", "task", "params", "(M)", "compared", "measured", "(M)", "paper",
                                "(M)", "diff", "%"]
    assert lines[2].split() == ["m2sa-tiny", "m2sa", "classify", f"{count(get_model_config('m2sa-tiny'))['total'] / 1e6:.2f}"]
    assert lines[3].split() == ["parts-a", "test-parts", "classify", "0.00", "total", "0.00", "0.00", "+12.00"]
    assert lines[4].split() == ["parts-a", "test-parts", "classify", "0.00", "fusion", "0.00", "0.00", "+0.00"]
    assert lines[5].split() == ["parts-a", "test-parts", "classify", "0.00", "heads", "0.00"]
    assert len(lines) == 6


def test_models_command_rejects_unknown_names(capsys):
    assert cli.main(["-q", "models", "--params", "no-such-model"]) == 2
    assert "unknown model(s) no-such-model" in capsys.readouterr().err
