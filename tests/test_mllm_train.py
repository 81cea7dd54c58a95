"""The MLLM baseline under Ray Train + DeepSpeed ZeRO-3 (parameters and optimizer states
offloaded) on 2 CPU workers: parameters partitioned, loss going down, generated answers
parsed in every evaluation; each ZeRO-3 checkpoint (partitioned over the 2 ranks) and the
export evaluate to the metrics the run reported for their epoch."""

import pytest

from ray_sticker.config import load_config
from ray_sticker.data.synthetic import make_classify_dataset
from ray_sticker.evaluate import evaluate_export
from ray_sticker.train.trainer import run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_mllm_fine_tunes_under_zero3_with_offload_and_restores_from_its_checkpoint(ray_cluster, tmp_path):
    data = str(tmp_path / "data")
    make_classify_dataset(data, num_rows=400, image_size=32, seed=5)  # 300 train, 50 validation rows
    result = run_training(load_config("mllm-tiny", [
        f"data.uri={data}", "data.synthetic_if_missing=false", f"train.storage_path={tmp_path / 'runs'}",
        "train.epochs=2", "train.log_every_steps=1000", "deepspeed.zero_stage=3",
        "deepspeed.offload_optimizer=true", "deepspeed.offload_param=true"]))  # ZeRO-Offload to CPU memory
    e0, e1 = result.history
    assert e1["zero_stage"] == 3 and e1["world_size"] == 2
    total, per_rank = e1["params_total"], e1["params_per_rank"]
    assert len(per_rank) == 2 and all(n < total for n in per_rank) and sum(per_rank) >= total  # partitioned
    assert e1["train_loss"] < e0["train_loss"] * 0.5, (e0["train_loss"], e1["train_loss"])
    assert e1["val_loss"] < e0["val_loss"]
    assert e1["val_examples"] == 50
    assert 0 <= e1.get("val_unparsed", 0) <= 50  # unreadable answers are counted (wrong), not dropped

    # What the run reports is what its outputs give: the last checkpoint, consolidated from its
    # 2 ZeRO-3 partitions, and the export evaluate to the run's last validation metrics; the
    # first checkpoint restores the model of its epoch, which had learnt less.
    last = evaluate_export(f"{result.run_dir}/epoch-0001", split="validation", batch_size=25)
    assert last == evaluate_export(result.export_uri, split="validation", batch_size=25)
    reported = {k[len("val_"):]: v for k, v in e1.items() if k.startswith("val_")}
    assert last.keys() == reported.keys()
    for key, value in reported.items():
        assert last[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    first = evaluate_export(f"{result.run_dir}/epoch-0000", split="validation", batch_size=25)
    assert first["loss"] == pytest.approx(e0["val_loss"], rel=1e-5)
    assert last["loss"] < first["loss"] and last["examples"] == first["examples"] == 50
