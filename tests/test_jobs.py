"""`ray job submit` against a real local head (token auth, free ports), as users run it."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ray_sticker import storage
from ray_sticker.data.synthetic import make_classify_dataset

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Head:
    address: str
    env: dict[str, str]
    home: Path

    def ray(self, command: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``ray job COMMAND --address … ARGS`` (the address before any ``--`` entrypoint)."""
        return subprocess.run([str(BIN / "ray"), "job", command, "--address", self.address, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def logs(self, job_id: str) -> str:
        """A job's logs so far, from the head's REST API (what ``ray job logs`` prints, without
        starting a Python process per poll)."""
        import json

        request = urllib.request.Request(f"{self.address}/api/jobs/{job_id}/logs",
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)["logs"]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    home = tmp_path_factory.mktemp("job-home")
    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_STICKER_HOME": str(home)}
    dashboard = _free_port()
    log = open(home / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={_free_port()}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--num-cpus=2",
         # Every port of its own: the suite's local Ray may already hold the default ones
         # (the job agent's 52365 among them), and the head would then take no jobs.
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # 401 without the token: the server is up
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not start: {(home / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
    head = Head(address=address, env=env, home=home)
    # The job agent registers a little after the dashboard answers: submit a trivial job
    # until one is accepted.
    # --no-wait: acceptance is the question (tailing the probe's logs adds a websocket that a
    # loaded machine may drop).
    while (ready := head.ray("submit", "--no-wait", "--", "true", timeout=120)).returncode != 0:
        if "No available agent" not in ready.stderr + ready.stdout or time.monotonic() > deadline + 180:
            pytest.fail(f"ray head does not take jobs: {ready.stderr[-2000:]}")
        time.sleep(2)
    yield head
    # Every process of the head is in its process group (its own session); `ray start --block`
    # takes more than 5 s to stop them on SIGTERM, and nothing of the head is kept.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)
    log.close()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def job_dataset(ray_head):
    uri = str(ray_head.home / "dataset")
    make_classify_dataset(uri, num_rows=800, image_size=32)
    return uri


def _train_args(dataset: str, runs: Path, name: str, *extra: str) -> list[str]:
    return ["--", "python", "jobs/train.py", "--config", "m2sa-tiny", f"data.uri={dataset}",
            "data.synthetic_if_missing=false", f"train.storage_path={runs}", f"train.run_name={name}", *extra]


def test_submit_training_job_and_fetch_logs(ray_head, job_dataset, tmp_path):
    runs = tmp_path / "runs"
    done = ray_head.ray("submit", "--submission-id", "rs-train", "--working-dir", ".",
                        *_train_args(job_dataset, runs, "job", "train.epochs=1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    history = storage.read_json(str(runs / "job" / "metrics.json"))
    assert [h["epoch"] for h in history] == [0] and history[0]["world_size"] == 2
    assert (runs / "job" / "export" / "model.safetensors").exists()
    logs = ray_head.ray("logs", "rs-train")
    assert logs.returncode == 0
    assert "val acc" in logs.stdout and "m2sa-tiny" in logs.stdout
    # A clean console: the progress line and the table; Ray's, DeepSpeed's and the workers'
    # output is in the log file and Ray's own logs, not here.
    assert "job epoch 1/1 step " in logs.stdout
    for noise in ("RayTrainWorker", "TrainController", "repeated", "FutureWarning", "[WARNING]",
                  "Setting accelerator", "Token authentication", "Checkpoint successfully created"):
        assert noise not in logs.stdout, (noise, logs.stdout[-3000:])


def test_failing_job_makes_submit_fail_with_the_reason(ray_head, job_dataset, tmp_path):
    done = ray_head.ray("submit", "--working-dir", ".",
                        *_train_args(job_dataset, tmp_path, "bad", "deepspeed.zero_stage=5"))
    assert done.returncode != 0
    assert "deepspeed.zero_stage: Input should be 0, 1, 2 or 3 (got 5)" in done.stdout + done.stderr


def test_stop_ends_a_long_job(ray_head, job_dataset, tmp_path):
    started = ray_head.ray("submit", "--no-wait", "--submission-id", "rs-long", "--working-dir", ".",
                           *_train_args(job_dataset, tmp_path, "long", "train.epochs=1000", "train.num_workers=0"))
    assert started.returncode == 0, started.stderr[-2000:]
    deadline = time.monotonic() + 180
    while "run long -> " not in (logs := ray_head.logs("rs-long")):  # its inputs checked, training starting
        assert time.monotonic() < deadline, logs[-2000:]
        time.sleep(1)
    stop = ray_head.ray("stop", "rs-long")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    status = ray_head.ray("status", "rs-long")
    assert "was stopped" in status.stdout + status.stderr


@pytest.mark.s3
def test_submit_sweep_job_with_s3_storage(ray_head, job_dataset, tmp_path, s3_env, s3_bucket):
    """A sweep through `ray job submit -- python jobs/tune.py`, its experiment on S3 (endpoint
    and credentials passed at submit time): the results table and the best config."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    sweep = tmp_path / "job-sweep.yaml"
    sweep.write_text(f"""
name: job-sweep
config: m2sa-tiny
overrides: [train.epochs=1, "data.uri={job_dataset}", data.synthetic_if_missing=false]
metric: val_accuracy
mode: max
points: [{{train.lr: 3.0e-3}}]
resources: {{num_workers: 0}}  # local mode: the trial trains in its own process
storage_path: {s3_bucket}/sweeps
""")
    runtime_env = json.dumps({"env_vars": s3_env.env()})
    done = ray_head.ray("submit", "--working-dir", ".", "--runtime-env-json", runtime_env,
                        "--", "python", "jobs/tune.py", "--sweep", str(sweep))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert s3_env.secret_key not in done.stdout + done.stderr
    exp = f"{s3_bucket}/sweeps/job-sweep"
    rows = pq.read_table(pa.BufferReader(storage.read_bytes(f"{exp}/results.parquet"))).to_pylist()
    assert [(r["status"], r["epochs_completed"]) for r in rows] == [("TERMINATED", 1)]
    assert rows[0]["val_accuracy"] is not None and rows[0]["run_dir"].startswith(f"{exp}/runs/")
    assert "train:" in storage.read_text(f"{exp}/best.yaml")
    assert "epoch-0000" in {u.rsplit("/", 1)[-1] for u in storage.listdir(rows[0]["run_dir"])}  # the trial's run
    assert "best: " in done.stdout


def test_submit_enrichment_job(ray_head, tmp_path):
    """`jobs/enrich.py` on the head: cnsenti's text emotion over a small dataset, published."""
    from ray_sticker.data.schema import read_manifest

    data = str(ray_head.home / "enrich-dataset")
    make_classify_dataset(data, num_rows=120, image_size=32)
    done = ray_head.ray("submit", "--submission-id", "rs-enrich", "--working-dir", ".", "--", "python",
                        "jobs/enrich.py", "--config", "text-emotion", "--dataset", data, "concurrency=1",
                        "batch_size=64")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "published" in done.stdout + done.stderr
    manifest = read_manifest(data)
    assert manifest.extra["enrichment"]["text-emotion"]["rows"] == 120
    assert manifest.label_maps["emotion"][0] == "like"
