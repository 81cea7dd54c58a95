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
    first = run_training(load_config("mllm-tiny", [*common, "train.epochs=1"]))
    (e0,) = first.history
    assert e0["zero_stage"] == 3 and e0["world_size"] == 2
    total, per_rank = e0["params_total"], e0["params_per_rank"]
    assert len(per_rank) == 2 and all(n < total for n in per_rank) and sum(per_rank) >= total  # partitioned
    assert e0["val_examples"] == 50
    assert 0 <= e0.get("val_unparsed", 0) <= 50  # unreadable answers are counted (wrong), not dropped

    # Restore: the run continues from its epoch-0 checkpoint (trained weights, optimizer state)
    # instead of starting over, and the loss keeps going down.
    second = run_training(load_config("mllm-tiny", [*common, "train.epochs=2"]))
    assert second.start_epoch == 1 and len(second.history) == 2
    e1 = second.history[-1]
    assert e1["global_step"] == 2 * e0["global_step"]
    assert e1["train_loss"] < e0["train_loss"] * 0.5, (e0["train_loss"], e1["train_loss"])
    assert e1["val_loss"] < e0["val_loss"]

    # Zero-shot: evaluation only, generated answers parsed; unreadable ones counted, not dropped.
    zero = run_training(load_config("mllm-tiny", [f"data.uri={data}", "data.synthetic_if_missing=false",
                                                  f"train.storage_path={tmp_path / 'runs'}", "train.epochs=0",
                                                  "train.export=false", "deepspeed.zero_stage=3"]))
    final = zero.final
    assert final["val_examples"] == 50 and final["epoch"] == -1
    assert 0 <= final.get("val_unparsed", 0) <= 50
    assert 0.0 <= final["val_accuracy"] <= 1.0 and "val_intent_macro_f1" in final
