"""Object-storage faults against a real S3 server (weed mini): transient errors are retried
with backoff, an unreachable endpoint or wrong keys give one clear line naming the bucket
and the endpoint, never a secret."""

from __future__ import annotations

import http.client
import logging
import pickle
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_sticker import storage
from ray_sticker.storage import StorageError

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message><RequestId>flaky</RequestId></Error>')


class FlakyProxy:
    """An HTTP proxy in front of an S3 endpoint: queued failures answer the next requests
    ("slowdown": 503 SlowDown; "close": the connection is closed unanswered), every other
    request is forwarded verbatim (Host included, so SigV4 signatures stay valid)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlparse(upstream).netloc
        self.failed = 0
        self.forwarded = 0
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, *modes: str) -> None:
        with self._lock:
            self._queue.extend(modes)

    def _take(self) -> str | None:
        with self._lock:
            mode = self._queue.pop(0) if self._queue else None
            self.failed += mode is not None
            self.forwarded += mode is None
            return mode

    def _forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes):
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(body or None)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    raw = b""
                    while True:  # forward the chunked framing as it came
                        line = self.rfile.readline()
                        raw += line
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while (trailer := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                                raw += trailer
                            return raw + b"\r\n"
                        raw += self.rfile.read(size + 2)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self) -> None:
                body = self._body()
                mode = proxy._take()
                if mode == "close":
                    self.close_connection = True
                    return
                if mode == "slowdown":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOWDOWN)
                    return
                status, reason, headers, data = proxy._forward(self.command, self.path, self.headers.items(), body)
                self.wfile.write(f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1"))
                for name, value in headers:
                    if name.lower() not in ("transfer-encoding", "connection"):
                        self.wfile.write(f"{name}: {value}\r\n".encode("latin-1"))
                if any(n.lower() == "transfer-encoding" for n, _ in headers):
                    self.wfile.write(f"Content-Length: {len(data)}\r\n".encode())
                self.wfile.write(b"\r\n" + data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        return Handler

    @contextmanager
    def running(self) -> Iterator["FlakyProxy"]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(5)


@pytest.fixture
def flaky(s3_env, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    """A FlakyProxy in front of the test server; the AWS environment points at the proxy."""
    with FlakyProxy(s3_env.endpoint_url).running() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
        yield proxy


def _survives(proxy: FlakyProxy, call: Callable[[], object], *modes: str) -> object:
    """Run ``call`` with ``modes`` queued; it must succeed after meeting every one of them."""
    before = proxy.failed
    proxy.fail_next(*modes)
    out = call()
    assert proxy.failed - before == len(modes), "the queued failures were not all met"
    return out


# ---------------------------------------------------------------- transient errors


@pytest.mark.s3
def test_transient_faults_are_retried(flaky: FlakyProxy, s3_bucket: str) -> None:
    base = f"{s3_bucket}/flaky"
    _survives(flaky, lambda: storage.write_bytes(f"{base}/a.bin", b"abc"), "slowdown", "close")
    assert _survives(flaky, lambda: storage.read_bytes(f"{base}/a.bin"), "slowdown") == b"abc"
    assert _survives(flaky, lambda: storage.listdir(base), "close", "slowdown") == [f"{base}/a.bin"]

    # The path Ray Data reads: a pyarrow filesystem from storage.resolve.
    table = pa.table({"id": list(range(50)), "caption": [f"cat {i}" for i in range(50)]})
    fs, path = storage.resolve(f"{base}/shards")
    pq.write_table(table, f"{path}/part-0.parquet", filesystem=fs)
    assert _survives(flaky, lambda: pq.read_table(path, filesystem=fs), "slowdown", "slowdown").equals(table)

    # boto3 (bucket and bulk-delete calls) retries too, 5 attempts by default.
    _survives(flaky, lambda: storage.ensure_bucket(base), "slowdown", "close")
    _survives(flaky, lambda: storage.ensure_bucket(base), "close", "close", "close", "close")
    _survives(flaky, lambda: storage.delete(base), "close")
    assert storage.listdir(base) == [] and flaky.forwarded > 0


@pytest.mark.s3
def test_max_attempts_bounds_the_retries(flaky: FlakyProxy, s3_bucket: str, monkeypatch) -> None:
    base = f"{s3_bucket}/bounded"
    storage.write_bytes(f"{base}/a.bin", b"abc")
    fs, path = storage.resolve(f"{base}/shards")
    pq.write_table(pa.table({"id": [1, 2]}), f"{path}/part-0.parquet", filesystem=fs)
    calls = {"write_bytes": (lambda: storage.write_bytes(f"{base}/b.bin", b"b"), "slowdown"),
             "read_bytes": (lambda: storage.read_bytes(f"{base}/a.bin"), "slowdown"),
             "listdir": (lambda: storage.listdir(base), "slowdown"),
             "delete (boto3)": (lambda: storage.delete(f"{base}/a.bin"), "slowdown"),
             "ensure_bucket (boto3)": (lambda: storage.ensure_bucket(base), "close")}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for name, (call, mode) in calls.items():
        flaky.fail_next(mode)
        with pytest.raises(StorageError, match="request to S3 endpoint .* failed: .*gave up after 1 attempt,") as info:
            call()
        message = str(info.value)
        assert flaky.url in message and s3_bucket in message, name
        assert "AWS_MAX_ATTEMPTS" in message and not flaky._queue, name
    # Direct pyarrow reads (Ray Data's path) raise pyarrow's own error, naming bucket and key.
    flaky.fail_next("slowdown")
    with pytest.raises(OSError, match=f"in bucket '{s3_bucket[5:]}'.*HTTP status 503"):
        pq.read_table(path, filesystem=storage.resolve(base)[0])
    assert not flaky._queue

    # AWS_MAX_ATTEMPTS counts the first request, for pyarrow and boto3 alike.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    for call in (lambda: storage.read_bytes(f"{base}/a.bin"), lambda: storage.ensure_bucket(base)):
        before = flaky.failed
        flaky.fail_next("slowdown", "slowdown", "slowdown")
        with pytest.raises(StorageError, match="gave up after 2 attempts"):
            call()
        assert flaky.failed - before == 2
        flaky._queue.clear()
        _survives(flaky, call, "slowdown")


@pytest.mark.s3
def test_retry_setting_survives_pickling(flaky: FlakyProxy, s3_bucket: str, monkeypatch) -> None:
    """Ray ships the filesystem to its workers by pickling it: they must retry like the driver."""
    storage.write_bytes(f"{s3_bucket}/a.bin", b"abc")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    fs, path = storage.resolve(f"{s3_bucket}/a.bin")
    copy = pickle.loads(pickle.dumps(fs))
    assert copy.max_attempts == 1 and copy.equals(fs)
    flaky.fail_next("slowdown")
    with pytest.raises(OSError, match="503"):
        copy.get_file_info(path)  # pyarrow's own pickling would fall back to 3 attempts
    assert not flaky._queue


# ---------------------------------------------------------------- the CLI: server stopped, wrong keys


def _train(bucket: str, capsys, caplog, monkeypatch) -> tuple[int, str, float]:
    """``ray-sticker train`` on ``s3://bucket/ds``; it must fail before any Ray work starts."""
    import ray

    from ray_sticker import cli
    from ray_sticker.train import trainer

    def no_fit(*args, **kwargs):
        raise AssertionError("training started although the input check should have failed")

    monkeypatch.setattr(trainer, "fit", no_fit)
    ray_was_up = ray.is_initialized()
    caplog.set_level(logging.INFO)
    t0 = time.perf_counter()
    rc = cli.main(["train", "--config", "m2sa-tiny", f"data.uri=s3://{bucket}/ds",
                   f"train.storage_path=s3://{bucket}/runs"])
    elapsed = time.perf_counter() - t0
    if not ray_was_up:  # (a session-wide Ray may already run when the whole suite does)
        assert not ray.is_initialized()
    out, err = capsys.readouterr()
    return rc, "\n".join([out, err, caplog.text]), elapsed


@pytest.mark.s3
def test_cli_with_server_stopped(own_s3_server, s3_env, monkeypatch, capsys, caplog) -> None:
    from ray_sticker.data.synthetic import make_classify_dataset

    server = own_s3_server
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    bucket = f"stopped-{uuid.uuid4().hex[:12]}"
    make_classify_dataset(f"s3://{bucket}/ds", num_rows=32, image_size=32)
    assert storage.exists(f"s3://{bucket}/ds/manifest.json")
    server.stop()

    rc, output, elapsed = _train(bucket, capsys, caplog, monkeypatch)
    assert rc == 2
    assert f"error: cannot reach S3 endpoint {server.endpoint_url}: " in output
    assert f"s3://{bucket}/ds" in output and "gave up after 5 attempts" in output
    assert server.secret_key not in output and server.access_key not in output
    assert elapsed < 45, f"an unreachable endpoint took {elapsed:.1f}s to report"  # backoff: 15 s at most


@pytest.mark.s3
def test_cli_with_wrong_keys(s3_env, s3_bucket: str, monkeypatch, capsys, caplog) -> None:
    wrong = "Wrong" + s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    bucket = s3_bucket[len("s3://"):]
    rc, output, _ = _train(bucket, capsys, caplog, monkeypatch)
    assert rc == 2
    assert f"error: access denied to s3://{bucket}/ds/" in output
    assert f"on S3 endpoint {s3_env.endpoint_url}: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in output
    for secret in (wrong, s3_env.secret_key, s3_env.access_key):
        assert secret not in output
