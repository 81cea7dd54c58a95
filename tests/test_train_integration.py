"""End to end on the real components: Ray Data, Ray Train workers with DeepSpeed ZeRO,
a real S3 server (SeaweedFS) for the dataset and the run storage."""

import logging
import math
import os
import re

import numpy as np
import pytest
import torch

from ray_sticker import storage
from ray_sticker.cli import main as cli_main
from ray_sticker.config import load_config
from ray_sticker.data.synthetic import make_classify_dataset
from ray_sticker.evaluate import evaluate_export
from ray_sticker.models.registry import build_model
from ray_sticker.train.export import load_model
from ray_sticker.train.tracking import read_image_tags, read_scalars
from ray_sticker.train.trainer import run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _tiny(name: str, *overrides: str):
    return load_config(name, ["data.synthetic_if_missing=false", *overrides])


@pytest.mark.s3
def test_zero2_from_s3_checkpoints_in_bucket_and_resume(ray_cluster, s3_env, s3_bucket):
    data = f"{s3_bucket}/datasets/synthetic"
    assert cli_main(["-q", "prepare", "synthetic", "--out", data, "--image-size", "32"]) == 0
    runs = f"{s3_bucket}/runs"
    common = [f"data.uri={data}", f"train.storage_path={runs}", "train.run_name=e2e", "deepspeed.zero_stage=2",
              "train.scheduler=constant"]

    first = run_training(_tiny("m2sa-tiny", *common, "train.epochs=2"))
    assert [h["epoch"] for h in first.history] == [0, 1]
    final = first.final
    assert final["world_size"] == 2 and final["zero_stage"] == 2
    assert final["val_examples"] == 300  # the whole validation split, gathered over both ranks
    assert final["val_accuracy"] > 0.5, final  # chance 1/3
    # data.eval_by=language: the metrics per language, over both ranks' rows
    assert sum(final[f"val_examples_{lang}"] for lang in ("en", "es", "de")) == 300
    assert all(0 < final[f"val_macro_f1_{lang}"] <= 1 for lang in ("en", "es", "de")), final
    assert final["samples_per_s"] > 0 and 0 <= final["data_wait_fraction"] <= 1

    run_dir = f"{runs}/e2e"
    names = {u.rsplit("/", 1)[-1] for u in storage.listdir(run_dir)}
    assert {"epoch-0000", "epoch-0001", "export", "metrics.json", "metrics.csv"} <= names
    state = {u.rsplit("/", 1)[-1] for u in storage.listdir(f"{run_dir}/epoch-0001/state")}
    assert any(n.startswith("zero_pp_rank_0_") for n in state) and any(n.startswith("zero_pp_rank_1_") for n in state)
    assert storage.read_json(f"{run_dir}/metrics.json")[-1]["epoch"] == 1

    # Same name, more epochs: resumes instead of starting over. The newest checkpoint was
    # corrupted in the bucket (one byte of rank 1's ZeRO partition): it is skipped, the run
    # resumes after epoch 0 and, seeded per (seed, epoch, rank), trains epoch 1 again identically.
    victim = next(u for u in storage.listdir(f"{run_dir}/epoch-0001/state") if "zero_pp_rank_1_" in u)
    data = bytearray(storage.read_bytes(victim))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(victim, bytes(data))
    second = run_training(_tiny("m2sa-tiny", *common, "train.epochs=3"))
    assert [h["epoch"] for h in second.history] == [0, 1, 2]
    assert (first.start_epoch, second.start_epoch) == (0, 1)  # epoch 0 restored, not trained again
    assert second.history[0] == first.history[0]
    for key in ("global_step", "train_loss", "val_loss", "val_accuracy"):
        assert second.history[1][key] == pytest.approx(first.history[1][key], rel=1e-5), key
    steps_per_epoch = math.ceil(1800 // 2 / load_config("m2sa-tiny").train.batch_size)
    assert second.history[2]["global_step"] == first.history[1]["global_step"] + steps_per_epoch
    assert second.final["val_accuracy"] > 0.8, second.final  # best unimodal: 5/9

    # TensorBoard events in the bucket: every epoch once, the resumed run's in a file of its own.
    scalars = read_scalars(f"{run_dir}/tensorboard")
    assert [s for s, _ in scalars["epoch/train_loss"]] == [0, 1, 1, 2]
    assert scalars["epoch/val_accuracy"][-1][1] == pytest.approx(second.final["val_accuracy"])
    assert "confusion_sentiment" in read_image_tags(f"{run_dir}/tensorboard")

    # The consolidated export, read back from S3, evaluates on the test split.
    metrics = evaluate_export(second.export_uri, split="test")
    assert metrics["examples"] == 300
    assert metrics["sentiment_accuracy"] > 0.7, metrics
    assert metrics["examples_de"] == 100 and metrics["sentiment_macro_f1_de"] > 0.5, metrics


def test_zero3_partitions_parameters_and_skips_corrupt_rows(ray_cluster, tmp_path, monkeypatch):
    """ZeRO-3 with towers built partitioned and their weights loaded into the partitions (see
    models/partitioned.py): a frozen text tower from a directory, a vision tower from a file
    with its own learning rate and gradient accumulation; its
    metrics tracked in TensorBoard and an MLflow file store; both splits streamed to the
    workers, not cached (the other runs cache them)."""
    mlruns = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{mlruns}")
    data = str(tmp_path / "corrupt")
    make_classify_dataset(data, num_rows=800, image_size=32, corrupt_fraction=0.05, seed=3)
    text_weights, vision_weights = tmp_path / "text-tower", tmp_path / "vision-tower.pt"
    start = build_model("m2sa-tiny")
    start.text.encoder.save_pretrained(text_weights)
    torch.save(start.vision.visual.state_dict(), vision_weights)
    cfg = _tiny("m2sa-tiny", f"data.uri={data}", f"train.storage_path={tmp_path / 'runs'}",
                "model.overrides.text.pretrained=true", f"model.overrides.text.hf_model_name={text_weights}",
                f"model.overrides.vision.pretrained={vision_weights}",
                "train.epochs=1", "deepspeed.zero_stage=3", "data.max_corrupt_fraction=0.2",
                "model.freeze_text=true", "model.vision_lr=1e-2", "deepspeed.gradient_accumulation_steps=2",
                "train.log_every_steps=5", "data.cache_train=false", "data.cache_eval=false")
    result = run_training(cfg)
    final = result.final
    _check_tracking(result, mlruns, cfg.name)
    micro_batches = math.ceil(300 / cfg.train.batch_size)  # 600 train rows over 2 ranks
    assert final["global_step"] == math.ceil(micro_batches / 2)
    # Per-tower learning rates survive ZeRO-3's optimizer wrapping; no group for the frozen tower.
    assert final["lr[vision]"] == pytest.approx(1e-2) and final["lr[head]"] == pytest.approx(cfg.train.lr)
    assert not any(k.startswith("lr[text") for k in final)
    total, per_rank = final["params_total"], final["params_per_rank"]
    assert len(per_rank) == 2 and sum(per_rank) >= total
    for n in per_rank:  # each rank holds about half (DeepSpeed pads partitions)
        assert abs(n / total - 0.5) < 0.05, (per_rank, total)
    assert final["train_skipped[corrupt image]"] > 0
    assert final["train_rows_seen"] == 600 - 600 % 2
    assert final["train_samples"] == final["train_rows_seen"] - final["train_rows_skipped"]
    assert final["val_rows_seen"] == 100  # streamed with equal=False: no row of the split dropped

    # The export holds the full (gathered) parameters, not rank 0's shard; the frozen text
    # tower holds the weights it was loaded with, the vision tower moved from its own.
    model, _, label_maps = load_model(result.export_uri)
    assert sum(p.numel() for p in model.parameters()) == total
    assert label_maps["sentiment"] == ["neutral", "positive", "negative"]
    initial, trained = start.state_dict(), model.state_dict()
    for key in initial:
        if key.startswith("text."):
            assert torch.equal(initial[key], trained[key]), key
    assert any(not torch.equal(initial[k], trained[k]) for k in initial if k.startswith("vision."))

    # A ZeRO-3 checkpoint (partitioned over 2 ranks) evaluates like the export.
    from_export = evaluate_export(result.export_uri, split="validation")
    from_checkpoint = evaluate_export(f"{result.run_dir}/epoch-0000", split="validation")
    assert from_checkpoint == from_export



def _check_tracking(result, mlruns, experiment: str) -> None:
    """The run's TensorBoard events hold its metrics per epoch and per step, and its plots; the
    MLflow run of its name holds the same per-epoch figures."""
    from mlflow.tracking import MlflowClient

    scalars = read_scalars(f"{result.run_dir}/tensorboard")
    for key in ("train_loss", "val_accuracy", "samples_per_s", "train_skipped[corrupt image]"):
        assert scalars[f"epoch/{key}"] == [(0, pytest.approx(result.final[key]))], key
    assert [s for s, _ in scalars["step/loss"]] and "confusion_sentiment" in read_image_tags(f"{result.run_dir}/tensorboard")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 opens file stores only when asked
    try:
        client = MlflowClient(f"file://{mlruns}")
        (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]
    assert run.info.run_name == result.name and run.info.status == "FINISHED"
    assert run.data.metrics["epoch/val_accuracy"] == pytest.approx(result.final["val_accuracy"])
    assert run.data.params["train.epochs"] == "1"
    assert "confusion_sentiment-step0.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_demo_multimodal_beats_both_unimodal_baselines(ray_cluster, capsys):
    """`ray-sticker train` with no config: the embedded default, a progress line per epoch and
    run, and its results table (in local mode: the models are the subject here)."""
    assert cli_main(["train", "train.epochs=1", "train.num_workers=0"]) == 0  # one epoch shows the gap (two: the README's figures)
    out = capsys.readouterr().out
    for name in ("m2sa-tiny", "text-only-tiny", "image-only-tiny"):
        assert re.search(rf"^{name}-\S+ epoch 1/1 step \d+ \| loss [\d.]+ \| val_accuracy [\d.]+ \| \d+ samples/s "
                         rf"\| data wait \d+% \| [\d.]+ s \| ETA 0 s$", out, re.M), out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("m2sa-tiny", "text-only-tiny", "image-only-tiny")}
    acc = {name: float(cols[1]) for name, cols in rows.items()}
    assert set(acc) == {"m2sa-tiny", "text-only-tiny", "image-only-tiny"}, out
    assert acc["m2sa-tiny"] >= max(acc["text-only-tiny"], acc["image-only-tiny"]) + 0.10, acc
    assert np.isclose(acc["text-only-tiny"], 5 / 9, atol=0.12) and np.isclose(acc["image-only-tiny"], 5 / 9, atol=0.12)


def test_early_stopping_exports_the_best_epochs_model(ray_cluster, tmp_path):
    """``train.early_stopping_patience``: the run stops once that many epochs did not beat the
    best, and its export is the best epoch's model. The epoch number as the metric (min) makes
    epoch 0 the best whatever the run learns, so it stops after epoch 1 of 4."""
    data = str(tmp_path / "data")
    make_classify_dataset(data, num_rows=400, image_size=32, seed=2)
    result = run_training(_tiny("m2sa-tiny", f"data.uri={data}", f"train.storage_path={tmp_path / 'runs'}",
                                "train.epochs=4", "train.early_stopping_patience=1", "train.select_metric=epoch",
                                "train.num_workers=0"))
    assert [h["epoch"] for h in result.history] == [0, 1] and result.best_epoch == 0
    exported = evaluate_export(result.export_uri, split="validation")
    assert exported["loss"] == pytest.approx(result.history[0]["val_loss"], rel=1e-5)
    assert exported["loss"] != pytest.approx(result.history[1]["val_loss"], rel=1e-5)  # not the last epoch's


def test_local_mode_runs_the_loop_in_this_process_as_one_worker_would(ray_cluster, tmp_path, caplog):
    """``train.num_workers=0`` (local mode): the same loop in this process gives the metrics of
    one Ray Train worker; the loop keeps the checkpoints itself (pruned to
    ``train.checkpoints_to_keep``), resumes from them, and reports each epoch to the callbacks."""
    data = str(tmp_path / "data")
    make_classify_dataset(data, num_rows=400, image_size=32, seed=4)
    common = [f"data.uri={data}", f"train.storage_path={tmp_path / 'runs'}", "train.checkpoints_to_keep=1"]
    worker = run_training(_tiny("m2sa-tiny", *common, "train.epochs=1", "train.num_workers=1", "train.run_name=w"))
    with caplog.at_level(logging.INFO, logger="ray_sticker.progress"):
        local = run_training(_tiny("m2sa-tiny", *common, "train.epochs=1", "train.num_workers=0", "train.run_name=l"))
    for key in ("global_step", "train_loss", "val_loss", "val_accuracy", "train_samples"):
        assert local.final[key] == pytest.approx(worker.final[key], rel=1e-5), key
    assert local.final["world_size"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "ray_sticker.progress"]
    assert any(re.match(r"l epoch 1/1 step \d+ \| loss", line) for line in lines), lines

    resumed = run_training(_tiny("m2sa-tiny", *common, "train.epochs=2", "train.num_workers=0", "train.run_name=l"))
    assert resumed.start_epoch == 1 and resumed.history[0] == local.history[0]
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    names = {u.rsplit("/", 1)[-1] for u in storage.listdir(resumed.run_dir)}
    assert {"epoch-0001", "export", "metrics.json"} <= names and "epoch-0000" not in names
