"""DeepSpeed engine setup pieces that run without an engine: the DeepSpeed config,
precision, parameter groups, freezing, optimizers, schedules and partition counting."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ray_sticker.config import load_config
from ray_sticker.models.registry import build_model
from ray_sticker.train.engine import (
    build_optimizer,
    deepspeed_config,
    freeze_towers,
    lr_lambda,
    param_groups,
    partition_numel,
    resolve_precision,
)


def _cfg(*overrides: str):
    return load_config("m2sa-tiny", list(overrides))


@pytest.fixture(scope="module")
def m2sa():
    return build_model("m2sa-tiny")


# ---------------------------------------------------------------------------- DeepSpeed config


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_per_stage(stage):
    cfg = _cfg(f"deepspeed.zero_stage={stage}", "train.batch_size=7", "deepspeed.gradient_accumulation_steps=3",
               "deepspeed.gradient_clipping=0.5")
    ds = deepspeed_config(cfg, "fp32")
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 7
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert ("contiguous_gradients" in zero) == (stage >= 2)
    if stage >= 2:
        assert zero["contiguous_gradients"] is True and zero["overlap_comm"] is False
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)
    assert ds["zero_allow_untested_optimizer"] is True


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_deepspeed_config_precision_flags(precision):
    ds = deepspeed_config(_cfg(), precision)
    assert ds["bf16"]["enabled"] is (precision == "bf16")
    assert ds["fp16"]["enabled"] is (precision == "fp16")


def test_deepspeed_config_offload_sections():
    ds = deepspeed_config(_cfg("deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true",
                               "deepspeed.offload_param=true"), "fp32")
    zero = ds["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["offload_optimizer"]["pin_memory"] is torch.cuda.is_available()
    ds1 = deepspeed_config(_cfg("deepspeed.zero_stage=1", "deepspeed.offload_optimizer=true"), "fp32")
    assert ds1["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in ds1["zero_optimization"]


# ---------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    "requested, on_gpu, expected",
    [
        ("auto", False, "fp32"),
        ("bf16", False, "fp32"),
        ("fp16", False, "fp32"),
        ("bf16", True, "bf16"),
        ("fp16", True, "fp16"),
        ("fp32", True, "fp32"),
        ("fp32", False, "fp32"),
    ],
)
def test_resolve_precision(requested, on_gpu, expected):
    # Half precision needs train.use_gpu in the config; ``on_gpu`` is what the worker found.
    precision, why = resolve_precision(_cfg(f"deepspeed.precision={requested}", "train.use_gpu=true"), on_gpu=on_gpu)
    assert precision == expected and why


@pytest.mark.parametrize(
    "bf16, capability, expected",
    [
        (True, (8, 0), "bf16"),  # A100, H100, A800: native bf16
        (False, (7, 0), "fp16"),  # V100
        (False, (7, 5), "fp16"),  # T4
        (False, (6, 1), "fp32"),  # P40 and older: no tensor cores
    ],
)
def test_auto_precision_follows_the_gpu(monkeypatch, bf16, capability, expected):
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation) or bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Card")
    precision, why = resolve_precision(_cfg("deepspeed.precision=auto", "train.use_gpu=true"), on_gpu=True)
    assert precision == expected and "Card" in why
    assert asked == [False]  # emulated bf16 (slow on pre-Ampere cards) does not count


def test_fp16_uses_dynamic_loss_scaling():
    fp16 = deepspeed_config(_cfg(), "fp16")["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0 and fp16["initial_scale_power"] == 16


# ---------------------------------------------------------------------------- parameter groups


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_param_groups_per_tower_lr_and_no_decay(m2sa):
    cfg = _cfg("train.lr=0.01", "model.text_lr=0.001", "model.vision_lr=0.002", "train.weight_decay=0.05")
    groups = param_groups(m2sa, cfg)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"text", "text-no-decay", "vision", "vision-no-decay", "head", "head-no-decay"}
    text_ids, vision_ids = _ids(m2sa.text.parameters()), _ids(m2sa.vision.parameters())
    head_ids = _ids(m2sa.heads.parameters())
    for g in groups:
        ids = _ids(g["params"])
        tower = g["name"].removesuffix("-no-decay")
        assert ids <= {"text": text_ids, "vision": vision_ids, "head": head_ids}[tower], g["name"]
        assert g["lr"] == {"text": 0.001, "vision": 0.002, "head": 0.01}[tower]
        if g["name"].endswith("-no-decay"):
            assert g["weight_decay"] == 0.0
            assert all(p.ndim < 2 for p in g["params"])
        else:
            assert g["weight_decay"] == 0.05
            assert all(p.ndim >= 2 for p in g["params"])
    # LayerNorm weights and biases are in the no-decay groups.
    ln = m2sa.text.encoder.embeddings.LayerNorm
    assert id(ln.weight) in _ids(by_name["text-no-decay"]["params"])
    assert id(m2sa.heads["sentiment"].bias) in _ids(by_name["head-no-decay"]["params"])
    assert id(m2sa.heads["sentiment"].weight) in _ids(by_name["head"]["params"])
    # Every parameter appears exactly once.
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(m2sa.parameters()))


def test_param_groups_default_to_base_lr(m2sa):
    groups = param_groups(m2sa, _cfg("train.lr=0.03"))
    assert {g["lr"] for g in groups} == {0.03}


def test_freeze_text_leaves_text_out_of_the_optimizer():
    model = build_model("m2sa-tiny")
    cfg = _cfg("model.freeze_text=true")
    freeze_towers(model, cfg)
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.vision.parameters())
    groups = param_groups(model, cfg)
    assert not any(g["name"].startswith("text") for g in groups)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert not set(grouped) & _ids(model.text.parameters())
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter exactly once
    # freezing both towers keeps the head trainable
    freeze_towers(model, _cfg("model.freeze_vision=true"))
    groups = param_groups(model, cfg)
    assert {g["name"] for g in groups} == {"head", "head-no-decay"}


def test_freeze_a_missing_tower_is_a_no_op():
    model = build_model("image-only-tiny")
    freeze_towers(model, _cfg("model.freeze_text=true"))
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", ["adamw", "adam", "adafactor"])
def test_build_optimizer_kinds(name):
    from transformers.optimization import Adafactor

    model = nn.Linear(4, 2)
    cfg = _cfg(f"train.optimizer={name}", "train.lr=0.02")
    groups = param_groups(model, cfg)
    opt = build_optimizer(groups, cfg)
    expected = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "adafactor": Adafactor}[name]
    assert type(opt) is expected
    assert {g["name"] for g in opt.param_groups} == {"head", "head-no-decay"}
    assert all(g["lr"] == 0.02 for g in opt.param_groups)
    # one step changes the weights
    before = model.weight.detach().clone()
    model(torch.randn(3, 4)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_betas_from_the_config(name):
    cfg = _cfg(f"train.optimizer={name}", "train.adam_beta2=0.98")
    opt = build_optimizer(param_groups(nn.Linear(4, 2), cfg), cfg)
    assert all(g["betas"] == (0.9, 0.98) for g in opt.param_groups)
    assert (load_config("mdse").train.adam_beta1, load_config("mdse").train.adam_beta2) == (0.9, 0.98)  # MDSE's code
    assert load_config("eigml").train.adam_beta2 == 0.999  # torch's default elsewhere
    with pytest.raises(Exception, match="train.adam_beta2"):
        _cfg("train.adam_beta2=1.0")


def test_build_optimizer_with_nothing_to_train():
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer([], _cfg())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert param_groups(frozen, _cfg()) == []


# ---------------------------------------------------------------------------- schedules


def test_lr_lambda_constant_with_warmup():
    f = lr_lambda("constant", total_steps=10, warmup_steps=4)
    assert [f(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert lr_lambda("constant", 10, 0)(0) == 1.0


def test_lr_lambda_linear_with_warmup():
    f = lr_lambda("linear", total_steps=10, warmup_steps=2)
    # warmup: (s + 1) / 2; then 1 - (s - 2) / 8
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 4: 0.75, 6: 0.5, 9: 0.125, 10: 0.0, 12: 0.0}
    for step, value in expected.items():
        assert f(step) == pytest.approx(value), step
    g = lr_lambda("linear", total_steps=4, warmup_steps=0)
    assert [g(s) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_lr_lambda_cosine_with_warmup():
    f = lr_lambda("cosine", total_steps=10, warmup_steps=2)
    assert f(0) == pytest.approx(0.5)
    assert f(2) == pytest.approx(1.0)
    assert f(4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # progress 2/8
    assert f(6) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.0, abs=1e-12)
    assert f(20) == pytest.approx(0.0, abs=1e-12)  # clamped after the end


def test_lr_lambda_drives_a_lambda_lr_scheduler():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("linear", total_steps=5, warmup_steps=1))
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])


# ---------------------------------------------------------------------------- partition counting


def test_partition_numel_plain_module():
    module = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    n = sum(p.numel() for p in module.parameters())
    assert n == 3 * 4 + 4 + 4 + 4
    assert partition_numel(SimpleNamespace(module=module)) == (n, n)


def test_partition_numel_zero3_shards():
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    first = module[0].weight
    first.ds_numel = 12  # a partitioned parameter: full size 12, this rank holds 6
    first.ds_tensor = torch.zeros(6)
    rest = sum(p.numel() for p in module.parameters()) - first.numel()
    assert partition_numel(SimpleNamespace(module=module)) == (6 + rest, 12 + rest)


def test_offloaded_optimizer_steps_with_torch_on_cpu_workers():
    cfg = _cfg("deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true")
    assert deepspeed_config(cfg, "fp32")["zero_force_ds_cpu_optimizer"] is False
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}]
    assert isinstance(build_optimizer(groups, cfg, on_gpu=False), torch.optim.AdamW)


_ENGINE_ON_ONE_RANK = """
import os, sys, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
from ray_sticker.config import load_config
from ray_sticker.train.engine import initialize
cfg = load_config("m2sa-tiny", ["deepspeed.zero_stage=2"])
engine, _ = initialize(torch.nn.Sequential(torch.nn.Linear(4, 2)), cfg, 10, on_gpu=False)
engine.backward(engine(torch.ones(3, 4)).sum())
engine.step()
import deepspeed.comm.comm as ds_comm
print("shm op:", ds_comm.cdb.shm_comm_op)
print("imported:", sorted(m for m in ("mlflow", "torch._inductor.compile_fx") if m in sys.modules))
import mlflow
print("mlflow after:", mlflow.__name__)
"""


def test_cpu_workers_skip_what_deepspeed_would_load_for_nothing():
    """A ZeRO-2 CPU engine starts and steps without DeepSpeed's CPU all-reduce for inference
    (compiled on a fresh machine: 80 s), mlflow (3 s of imports) or torch._inductor.compile_fx (3.5 s);
    mlflow is importable afterwards. A process of its own: all three are per process."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = subprocess.run([sys.executable, "-c", _ENGINE_ON_ONE_RANK], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PORT": port})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "shm op: None" in out.stdout, out.stdout[-2000:]
    assert "imported: []" in out.stdout and "mlflow after: mlflow" in out.stdout, out.stdout[-2000:]


def test_zero3_refuses_a_large_parameter_held_by_the_model_itself():
    """ZeRO-3's pre-backward hook cannot see into ModelOutput: the model's own parameters must
    stay below the persistence threshold (never partitioned); its submodules' may be any size."""
    from torch import nn

    from ray_sticker.train.engine import ZERO3_PERSISTENCE_THRESHOLD, check_root_parameters

    class Model(nn.Module):
        def __init__(self, own: int):
            super().__init__()
            self.tower = nn.Linear(1000, 1000)  # 1M elements in a submodule: fine
            self.temp = nn.Parameter(torch.ones(own))

    for stage in (0, 1, 2, 3):
        check_root_parameters(Model(1), stage)
    check_root_parameters(Model(2 * ZERO3_PERSISTENCE_THRESHOLD), 2)
    with pytest.raises(ValueError, match=r"Model holds parameters \[\('temp', 200000\)\] itself"):
        check_root_parameters(Model(2 * ZERO3_PERSISTENCE_THRESHOLD), 3)
    ds = deepspeed_config(_cfg("deepspeed.zero_stage=3"), "fp32")
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == ZERO3_PERSISTENCE_THRESHOLD
