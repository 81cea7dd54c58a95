"""The MLLM baseline under Ray Train + DeepSpeed ZeRO-3 (parameters and optimizer states
offloaded) on 2 CPU workers: parameters partitioned, loss going down, restore from the
checkpoint; then zero-shot evaluation."""

import pytest

from ray_sticker.config import load_config
from ray_sticker.data.synthetic import make_classify_dataset
from ray_sticker.train.trainer import run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_mllm_fine_tunes_under_zero3_restores_and_evaluates_zero_shot(ray_cluster, tmp_path):
    data = str(tmp_path / "data")
    make_classify_dataset(data, num_rows=400, image_size=32, seed=5)  # 300 train, 50 validation rows
    common = [f"data.uri={data}", "data.synthetic_if_missing=false", f"train.storage_path={tmp_path / 'runs'}",
              "train.run_name=mllm", "deepspeed.zero_stage=3", "train.log_every_steps=1000",
              "deepspeed.offload_optimizer=true", "deepspeed.offload_param=true"]  # ZeRO-Offload to CPU memory
    first = run_training(load_config("mllm-tiny", [*common, "train.epochs=2"]))
    e0, e1 = first.history
    assert e1["zero_stage"] == 3 and e1["world_size"] == 2
    total, per_rank = e1["params_total"], e1["params_per_rank"]
    assert len(per_rank) == 2 and all(n < total for n in per_rank) and sum(per_rank) >= total  # partitioned
    assert e1["train_loss"] < e0["train_loss"] * 0.5, (e0["train_loss"], e1["train_loss"])
    assert e1["val_loss"] < e0["val_loss"]
    assert e1["val_examples"] == 50
    assert 0 <= e1.get("val_unparsed", 0) <= 50  # unreadable answers are counted (wrong), not dropped

    # Restore: the run continues from its epoch-1 checkpoint instead of starting over.
    second = run_training(load_config("mllm-tiny", [*common, "train.epochs=3"]))
    assert second.start_epoch == 2 and len(second.history) == 3
    assert second.history[-1]["global_step"] > e1["global_step"]
    assert second.history[-1]["train_loss"] <= e1["train_loss"] * 1.5

    # Zero-shot: evaluation only, generated answers parsed; unreadable ones counted, not dropped.
    zero = run_training(load_config("mllm-tiny", [f"data.uri={data}", "data.synthetic_if_missing=false",
                                                  f"train.storage_path={tmp_path / 'runs'}", "train.epochs=0",
                                                  "train.export=false", "deepspeed.zero_stage=3"]))
    final = zero.final
    assert final["val_examples"] == 50 and final["epoch"] == -1
    assert 0 <= final.get("val_unparsed", 0) <= 50
    assert 0.0 <= final["val_accuracy"] <= 1.0 and "val_intent_macro_f1" in final
