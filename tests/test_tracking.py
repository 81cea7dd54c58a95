"""Tracker: TensorBoard event files (local and S3) read back with read_scalars, and MLflow runs in a file store."""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ray_sticker.train.tracking import Tracker, TrackingConfig, read_image_tags, read_scalars

STEPS = {1: {"loss": 2.5, "lr": 1e-4}, 2: {"loss": 2.25, "lr": 2e-4}, 3: {"loss": 2.0, "lr": 3e-4}}
EPOCH = {"val_r@1": 0.375, "skipped[corrupt image]": 3, "lr[text]": 5e-5, "acc": np.float32(0.5),
         "note": "best so far", "per_class": [0.1, 0.2], "improved": True, "missing": None,
         "nan": math.nan, "inf": math.inf}
EPOCH_LOGGED = {"val_r@1": 0.375, "skipped[corrupt image]": 3.0, "lr[text]": 5e-5, "acc": 0.5}
PARAMS = {"name": "tiny", "train": {"lr": 1e-3, "epochs": 2}, "data": {"uri": "x" * 7000}}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (6, 4), (200, 30, 30, 255)).save(buf, format="PNG")
    return buf.getvalue()


def _log_run(tracker: Tracker) -> None:
    for step, scalars in STEPS.items():
        tracker.log_scalars(scalars, step, prefix="step/")
    tracker.log_scalars(EPOCH, 3, prefix="epoch/")
    tracker.log_image("val/confusion_matrix", _png(), 3)
    tracker.flush()


def _expected() -> dict[str, list[tuple[int, float]]]:
    expected = {f"step/{k}": [(s, v[k]) for s, v in STEPS.items()] for k in ("loss", "lr")}
    expected.update({f"epoch/{k}": [(3, v)] for k, v in EPOCH_LOGGED.items()})
    return expected


def _assert_scalars(got: dict[str, list[tuple[int, float]]], expected: dict[str, list[tuple[int, float]]]) -> None:
    assert set(got) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], abs=1e-6), tag


def test_tensorboard_scalars_and_image_local(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "runs" / "r1")
    with Tracker(TrackingConfig(run_dir, "r1", "exp"), PARAMS) as tracker:
        _log_run(tracker)
        # flush() alone makes the events readable, while the run goes on
        _assert_scalars(read_scalars(os.path.join(run_dir, "tensorboard")), _expected())
    tb = os.path.join(run_dir, "tensorboard")
    _assert_scalars(read_scalars(tb), _expected())  # tags as given: "val_r@1", "skipped[corrupt image]"
    assert read_image_tags(tb) == {"val/confusion_matrix"}


def test_resumed_tracker_adds_an_event_file(tmp_path: Path) -> None:
    config = TrackingConfig(str(tmp_path / "r1"), "r1", "exp")
    for step in (1, 2):
        with Tracker(config) as tracker:
            tracker.log_scalars({"loss": float(step)}, step)
    assert len(os.listdir(tmp_path / "r1" / "tensorboard")) == 2
    assert read_scalars(str(tmp_path / "r1" / "tensorboard")) == {"loss": [(1, 1.0), (2, 2.0)]}


def _mlflow_client(uri: str, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores otherwise
    return MlflowClient(uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_mlflow_file_store_run_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = "file://" + str(tmp_path / "mlruns")
    config = TrackingConfig(str(tmp_path / "runs" / "r1"), "r1", "exp", mlflow_uri=uri)
    with Tracker(config, PARAMS) as tracker:
        _log_run(tracker)
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # allowed for the Tracker's client only

    client = _mlflow_client(uri, monkeypatch)
    experiment = client.get_experiment_by_name("exp")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert run.data.tags["ray_sticker.run_dir"] == config.run_dir
    assert run.data.params["train.lr"] == "0.001" and run.data.params["name"] == "tiny"
    assert run.data.params["data.uri"] == "x" * 6000  # cut to MLflow's limit
    # MLflow names: characters it does not allow become "_"
    assert set(run.data.metrics) == {"step/loss", "step/lr", "epoch/val_r_1", "epoch/skipped_corrupt image_",
                                     "epoch/lr_text_", "epoch/acc"}
    assert _history(client, run.info.run_id, "step/loss") == [(s, v["loss"]) for s, v in STEPS.items()]
    assert _history(client, run.info.run_id, "epoch/val_r_1") == [(3, 0.375)]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "val")] == ["val/confusion_matrix-step3.png"]
    with open(client.download_artifacts(run.info.run_id, "val/confusion_matrix-step3.png", str(tmp_path)), "rb") as f:
        assert f.read() == _png()

    # A resumed training run continues the MLflow run; params keep their first values
    with Tracker(config, {**PARAMS, "train": {"lr": 5e-4, "epochs": 4}}) as tracker:
        tracker.log_scalars({"loss": 1.5}, 4, prefix="step/")
    [resumed] = client.search_runs([experiment.experiment_id])
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.params["train.lr"] == "0.001"
    assert _history(client, run.info.run_id, "step/loss") == [(1, 2.5), (2, 2.25), (3, 2.0), (4, 1.5)]


def test_mlflow_run_fails_with_the_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    uri = "file://" + str(tmp_path / "mlruns")
    tracker = Tracker(TrackingConfig(str(tmp_path / "r1"), "it's", "exp", mlflow_uri=uri))
    with pytest.raises(RuntimeError, match="boom"), tracker:
        raise RuntimeError("boom")
    tracker.close()  # idempotent: the run stays FAILED
    client = _mlflow_client(uri, monkeypatch)
    [run] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.run_name == "it's" and run.info.status == "FAILED"


@pytest.mark.s3
def test_tensorboard_on_s3(s3_env, s3_bucket: str) -> None:
    run_dir = f"{s3_bucket}/runs/r1"
    tb = f"{run_dir}/tensorboard"
    tracker = Tracker(TrackingConfig(run_dir, "r1", "exp"), PARAMS)
    _log_run(tracker)  # ends with flush(): uploaded
    _assert_scalars(read_scalars(tb), _expected())
    tracker.log_scalars({"loss": 1.0}, 4, prefix="step/")
    tracker.close()
    expected = _expected()
    expected["step/loss"].append((4, 1.0))
    _assert_scalars(read_scalars(tb), expected)
    assert read_image_tags(tb) == {"val/confusion_matrix"}


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert TrackingConfig.from_env("/runs/r1", "r1", "exp") == TrackingConfig(
        "/runs/r1", "r1", "exp", mlflow_uri="http://mlflow.example:5000")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert TrackingConfig.from_env("/runs/r1", "r1", "exp").mlflow_uri is None


def test_without_mlflow_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with Tracker(TrackingConfig(str(tmp_path / "r1"), "r1", "exp")) as tracker:  # TensorBoard needs no MLflow
        tracker.log_scalars({"loss": 1.0}, 1)
    assert read_scalars(str(tmp_path / "r1" / "tensorboard")) == {"loss": [(1, 1.0)]}
    with pytest.raises(ImportError, match=r"pip install 'ray-sticker\[tracking\]'"):
        Tracker(TrackingConfig(str(tmp_path / "r2"), "r2", "exp", mlflow_uri="file:///tmp/mlruns"))
