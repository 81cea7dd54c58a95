"""Every registered architecture config against the model contract (models/output.py)."""

import pytest

from ray_sticker.models.params import count
from ray_sticker.models.registry import build_from_config, get_model_config, list_models
from ray_sticker.train.engine import check_parameters

TINY = [n for n in list_models() if n.endswith("-tiny")]


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_build_with_deepspeed_compatible_parameters(name):
    cfg = get_model_config(name)
    cfg["label_names"] = {"sentiment": ["neutral", "positive", "negative"], "intent": ["a", "b", "c", "d"],
                          "emotion": [str(i) for i in range(7)]}
    model = build_from_config(cfg)
    check_parameters(model)  # no 0-dim parameters
    assert dict(getattr(model, "heads_spec", {})).keys() <= dict(cfg.get("heads", {})).keys()


@pytest.mark.parametrize("name", [n for n in list_models() if not n.endswith("-tiny")
                                  and get_model_config(n)["arch"] != "mllm"])  # VLM architectures ship with weights
def test_full_size_configs_count_without_download(name):
    assert count(get_model_config(name))["total"] > 50_000_000
