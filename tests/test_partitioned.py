"""Partitioned construction under ZeRO-3 (models/partitioned.py), on two real ranks (processes,
gloo): towers and MLLMs are partitioned as they are built, pretrained weights land in the
partitions exactly, initialisations that write submodules survive (open_clip's ResNet,
transformers' init, LoRA's), and ``bench load`` shows a rank's peak during construction at
about half the model."""

import json
import math
import os

import pytest
import torch

from ray_sticker import cli

TINY_VIT = {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2}}
TINY_RESNET = {"vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
               "embed_dim": 32}
TINY_BERT = {"pretrained": False, "tokenizer": "builtin:tiny",
             "hf_config": {"model_type": "bert", "vocab_size": 500, "hidden_size": 32, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "intermediate_size": 64}}
STAGE3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}


def _gathered(module) -> dict[str, torch.Tensor]:
    import deepspeed

    params = dict(module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {k: p.detach().clone() for k, p in params.items()}


def _ranks(rank: int, world: int, port: int, weights: str, out_dir: str) -> None:
    from ray_sticker.train.procgroup import process_group
    from ray_sticker.models.encoders import TextTower, VisionTower
    from ray_sticker.models.partitioned import full_shape, is_partitioned, partitioned_construction
    from ray_sticker.models.registry import build_from_config, get_model_config
    from ray_sticker.train.engine import prepare_deepspeed

    prepare_deepspeed(on_gpu=False)
    out = {}
    with process_group(rank, world, port, "gloo"), partitioned_construction(STAGE3):
        torch.manual_seed(1)  # not the seed the weights file was written with
        towers = {"vit": VisionTower({**TINY_VIT, "pretrained": weights}), "resnet": VisionTower(TINY_RESNET),
                  "bert": TextTower(TINY_BERT)}
        for name, tower in towers.items():
            params = list(tower.parameters())
            out[f"{name}_partitioned"] = all(is_partitioned(p) for p in params)
            out[f"{name}_local"] = sum(p.ds_tensor.numel() for p in params if is_partitioned(p))
            out[f"{name}_full"] = sum(math.prod(full_shape(p)) for p in params)
        full = _gathered(towers["vit"].visual)
        expected = torch.load(weights, weights_only=True)
        out["vit_equal"] = sorted(k for k in full if torch.equal(full[k], expected[k]))
        out["vit_keys"] = sorted(full)
        q = _gathered(towers["resnet"].visual)["attnpool.q_proj.weight"]
        out["resnet_q_std"] = float(q.std())
        out["resnet_q_in"] = q.shape[1]
        out["bert_word_std"] = float(_gathered(towers["bert"].encoder)["embeddings.word_embeddings.weight"].std())
        # an MLLM from its directory, partitioned by transformers; LoRA adapters added after it
        mllm = build_from_config(get_model_config("mllm-tiny", {"lora": {"r": 4, "alpha": 8}})).model
        base = [p for n, p in mllm.named_parameters() if "lora_" not in n]
        lora = {n: p for n, p in mllm.named_parameters() if "lora_" in n}
        out["mllm_partitioned"] = all(is_partitioned(p) for p in base) and bool(lora)
        out["lora_b_zero"] = all(float(p.abs().sum()) == 0 for n, p in lora.items() if "lora_B" in n)
        out["lora_a_set"] = all(float(p.abs().sum()) > 0 for n, p in lora.items() if "lora_A" in n)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


def test_towers_built_partitioned_with_their_weights_and_initialisation(tmp_path):
    import torch.multiprocessing as mp

    from ray_sticker.train.procgroup import free_port
    from ray_sticker.models.encoders import VisionTower

    torch.manual_seed(7)
    weights = tmp_path / "vit.pt"
    torch.save(VisionTower(TINY_VIT).visual.state_dict(), weights)
    mp.spawn(_ranks, args=(2, free_port(), str(weights), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for out in ranks:
        for name in ("vit", "resnet", "bert"):
            assert out[f"{name}_partitioned"], name
            # each rank holds about half of every tower (DeepSpeed pads each partition)
            assert abs(out[f"{name}_local"] / out[f"{name}_full"] - 0.5) < 0.05, (name, out)
        assert out["vit_equal"] == out["vit_keys"]  # every tensor of the file, exactly
        # ModifiedResNet's own init of its attention pool (std = in_features ** -0.5), not nn.Linear's default
        assert out["resnet_q_std"] == pytest.approx(out["resnet_q_in"] ** -0.5, rel=0.15)
        assert out["bert_word_std"] == pytest.approx(0.02, rel=0.15)  # transformers' init, gathered
        # LoRA: B starts at zero (the adapted model starts as the base model), A does not
        assert out["mllm_partitioned"] and out["lora_b_zero"] and out["lora_a_set"], out
    assert ranks[0]["vit_equal"] == ranks[1]["vit_equal"]


def test_bench_load_holds_half_the_model_per_rank_at_stage_3(tmp_path):
    """A 156M-parameter MMSAIR (two 2-layer BERT-base towers, a ViT-B/32, 594 MB): at ZeRO-3 no
    rank's memory rises above 0.6 of the model's bytes while it is built, and each holds at
    least 0.4 of it (its partitions are measured). Run from this test process, large after the
    tests before it: the ranks' figures must be their own."""
    path = tmp_path / "load.json"
    layers = ["model.overrides.text.hf_config.num_hidden_layers=2",
              "model.overrides.sticker_text.hf_config.num_hidden_layers=2"]
    assert cli.main(["-q", "bench", "load", *layers, "--stages", "3", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    construction = next(r for r in rows if r["moment"].startswith("construction"))
    assert construction["status"] == "PASS" and 0.4 < construction["ratio"] <= 0.6, rows
