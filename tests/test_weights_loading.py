"""Tower weights and tokenizers from a local directory, a local file and an s3:// URI."""

import pytest
import torch

from ray_sticker import storage
from ray_sticker.data.text import TINY_TOKENIZER, load_tokenizer
from ray_sticker.models.encoders import TextTower, VisionTower

TINY_BERT = {"model_type": "bert", "vocab_size": "tokenizer", "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
TINY_VIT = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def saved_text_tower(tmp_path):
    torch.manual_seed(0)
    tower = TextTower({"tokenizer": TINY_TOKENIZER, "hf_config": TINY_BERT})
    out = tmp_path / "tiny-bert"
    tower.encoder.save_pretrained(out)
    load_tokenizer(TINY_TOKENIZER).save_pretrained(out)
    return tower, out


@pytest.fixture
def saved_vision_weights(tmp_path):
    torch.manual_seed(0)
    tower = VisionTower({"vision_cfg": TINY_VIT, "embed_dim": 32})
    path = tmp_path / "visual.pt"
    torch.save({"state_dict": {f"module.visual.{k}": v for k, v in tower.visual.state_dict().items()}}, path)
    return tower, path


def test_text_tower_and_tokenizer_from_local_directory(saved_text_tower):
    tower, path = saved_text_tower
    loaded = TextTower({"hf_model_name": str(path), "pretrained": True})
    assert _same(tower.encoder, loaded.encoder)
    tok = load_tokenizer(str(path))
    assert tok.tokenize("happy gloomy day") == ["happy", "gloomy", "day"]


def test_vision_tower_from_local_checkpoint_file(saved_vision_weights):
    tower, path = saved_vision_weights
    torch.manual_seed(1)  # different init: equality below proves the weights were loaded
    loaded = VisionTower({"vision_cfg": TINY_VIT, "embed_dim": 32, "pretrained": str(path)})
    assert _same(tower.visual, loaded.visual)


def test_vision_weights_of_another_architecture_are_rejected(saved_vision_weights):
    _, path = saved_vision_weights
    with pytest.raises(ValueError, match="do not match"):
        VisionTower({"vision_cfg": {**TINY_VIT, "width": 64, "head_width": 32}, "embed_dim": 64,
                     "pretrained": str(path)})


@pytest.mark.s3
def test_towers_and_tokenizer_from_s3(s3_env, s3_bucket, saved_text_tower, saved_vision_weights):
    text, text_dir = saved_text_tower
    storage.upload_dir(str(text_dir), f"{s3_bucket}/weights/tiny-bert")
    loaded = TextTower({"hf_model_name": f"{s3_bucket}/weights/tiny-bert", "pretrained": True})
    assert _same(text.encoder, loaded.encoder)
    assert load_tokenizer(f"{s3_bucket}/weights/tiny-bert").tokenize("sad") == ["sad"]

    vision, vision_path = saved_vision_weights
    storage.write_bytes(f"{s3_bucket}/weights/visual.pt", vision_path.read_bytes())
    torch.manual_seed(1)
    loaded = VisionTower({"vision_cfg": TINY_VIT, "embed_dim": 32, "pretrained": f"{s3_bucket}/weights/visual.pt"})
    assert _same(vision.visual, loaded.visual)
