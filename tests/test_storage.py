"""Tests for ray_sticker.storage: local paths and a real S3 server (weed mini)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ray_sticker import storage
from ray_sticker.storage import S3Options, StorageError


def _make_tree(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01b")
    (root / "sub" / "deep" / "c.json").write_text('{"c": 1}')
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- local


def test_is_s3_and_join() -> None:
    assert storage.is_s3("s3://b/k") and storage.is_s3("S3://b")
    assert not storage.is_s3("/tmp/x") and not storage.is_s3("file:///tmp/x")
    assert storage.join("s3://b/x", "a", "b.txt") == "s3://b/x/a/b.txt"
    assert storage.join("s3://b/x/", "/a/", "b.txt") == "s3://b/x/a/b.txt"
    assert storage.join("s3://b", "k") == "s3://b/k"
    assert storage.join("file:///tmp/x", "y") == "file:///tmp/x/y"
    assert storage.join("rel/dir", "a", "b") == os.path.join("rel/dir", "a", "b")


def test_resolve_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    fs, path = storage.resolve("~/data/x.txt")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "data" / "x.txt")
    assert storage.resolve("file:///tmp/some%20dir/x")[1] == "/tmp/some dir/x"
    assert storage.resolve("rel/y")[1] == str(tmp_path / "rel" / "y")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.resolve("gs://bucket/x")


def test_local_round_trips(tmp_path: Path) -> None:
    uri = str(tmp_path / "new" / "dir" / "x.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00abc")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"\x00abc"

    storage.write_json(f"file://{tmp_path}/meta.json", {"b": [1, 2], "a": "é"})
    assert storage.read_json(str(tmp_path / "meta.json")) == {"a": "é", "b": [1, 2]}
    assert (tmp_path / "meta.json").read_text(encoding="utf-8").startswith('{\n  "a": "')
    storage.write_text(str(tmp_path / "t.txt"), "héllo")
    assert storage.read_text(str(tmp_path / "t.txt")) == "héllo"

    assert storage.listdir(str(tmp_path)) == [str(tmp_path / n) for n in ("meta.json", "new", "t.txt")]
    assert storage.listdir(str(tmp_path / "missing")) == []

    storage.delete(str(tmp_path / "new"))
    storage.delete(str(tmp_path / "t.txt"))
    storage.delete(str(tmp_path / "missing"))
    assert storage.listdir(str(tmp_path)) == [str(tmp_path / "meta.json")]

    with pytest.raises(FileNotFoundError, match="not found: .*nope.bin"):
        storage.read_bytes(str(tmp_path / "nope.bin"))


def test_local_upload_download_dir(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src")
    storage.upload_dir(str(src), str(tmp_path / "copy"))
    assert _files(tmp_path / "copy") == _files(src)
    out = storage.download_dir(str(tmp_path / "copy"), str(tmp_path / "out"))
    assert out == str(tmp_path / "out") and _files(tmp_path / "out") == _files(src)
    assert storage.local_copy(str(src)) == str(src)
    with pytest.raises(FileNotFoundError, match="missing"):
        storage.upload_dir(str(tmp_path / "missing"), str(tmp_path / "x"))
    storage.ensure_bucket(str(tmp_path))  # no-op for local URIs
    storage.upload_dir(str(src), str(tmp_path / "deep" / "er" / "copy"))  # parents are created
    assert _files(tmp_path / "deep" / "er" / "copy") == _files(src)


def test_s3_options_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                 "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    assert S3Options.from_env() == S3Options(None, "us-east-1", None, 5)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_PROFILE", "dev")
    assert S3Options.from_env() == S3Options("http://s3only:2", "eu-west-3", "dev", 5)
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert S3Options.from_env().region == "ap-south-1"


# ---------------------------------------------------------------- S3


@pytest.mark.s3
def test_s3_resolve_and_cache(s3_env, s3_bucket: str) -> None:
    fs, path = storage.resolve(f"{s3_bucket}/a/b.txt")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_bucket[5:]}/a/b.txt"
    assert storage.resolve(f"{s3_bucket}/other")[0] is fs  # cached per options + credentials
    assert s3_env.secret_key not in repr(S3Options.from_env())


@pytest.mark.s3
def test_s3_bytes_json_listdir_delete(s3_env, s3_bucket: str) -> None:
    base = storage.join(s3_bucket, "run1")
    storage.write_bytes(storage.join(base, "w.bin"), b"\x00" * 10 + b"end")
    storage.write_json(storage.join(base, "meta", "info.json"), {"step": 3, "loss": 0.5})
    storage.write_text(storage.join(base, "meta", "note.txt"), "ünïcode")

    assert storage.read_bytes(f"{base}/w.bin").endswith(b"end")
    assert storage.read_json(f"{base}/meta/info.json") == {"loss": 0.5, "step": 3}
    assert storage.read_text(f"{base}/meta/note.txt") == "ünïcode"
    assert storage.exists(base) and storage.exists(f"{base}/w.bin") and not storage.exists(f"{base}/nope")
    assert storage.listdir(base) == [f"{base}/meta", f"{base}/w.bin"]
    assert storage.listdir(s3_bucket) == [base]
    assert storage.listdir(f"{base}/missing") == []

    storage.delete(f"{base}/w.bin")
    assert storage.listdir(base) == [f"{base}/meta"]
    storage.delete(base)
    assert not storage.exists(base) and storage.listdir(s3_bucket) == []
    storage.delete(base)  # missing is fine
    storage.delete("s3://no-such-bucket-for-delete/x")


@pytest.mark.s3
def test_s3_upload_download_and_delete_prefix(s3_env, s3_bucket: str, tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src")
    (src / "empty").mkdir()
    for name in ("ckpt-1", "ckpt-2"):
        storage.upload_dir(str(src), f"{s3_bucket}/ckpts/{name}")
    assert storage.listdir(f"{s3_bucket}/ckpts") == [f"{s3_bucket}/ckpts/ckpt-1", f"{s3_bucket}/ckpts/ckpt-2"]

    out = storage.download_dir(f"{s3_bucket}/ckpts/ckpt-2", str(tmp_path / "out"))
    assert _files(Path(out)) == _files(src)
    storage.download_dir(f"{s3_bucket}/ckpts/ckpt-2/a.txt", str(tmp_path / "single"))
    assert (tmp_path / "single" / "a.txt").read_text() == "a"

    # Deleting a checkpoint prefix leaves no trace, not even empty directories.
    storage.delete(f"{s3_bucket}/ckpts/ckpt-1")
    assert storage.listdir(f"{s3_bucket}/ckpts") == [f"{s3_bucket}/ckpts/ckpt-2"]
    assert not storage.exists(f"{s3_bucket}/ckpts/ckpt-1")
    with pytest.raises(FileNotFoundError, match="ckpt-1"):
        storage.download_dir(f"{s3_bucket}/ckpts/ckpt-1", str(tmp_path / "gone"))


@pytest.mark.s3
def test_s3_local_copy_downloads_once(s3_env, s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    weights = f"{s3_bucket}/models/w.safetensors"
    storage.write_bytes(weights, b"weights")
    storage.upload_dir(str(_make_tree(tmp_path / "src")), f"{s3_bucket}/models/tok")
    cache = str(tmp_path / "cache")

    path = storage.local_copy(weights, cache_dir=cache)
    assert path.startswith(cache) and path.endswith("/w.safetensors")
    assert Path(path).read_bytes() == b"weights"
    directory = storage.local_copy(f"{s3_bucket}/models/tok/", cache_dir=cache)
    assert directory.endswith("/tok") and _files(Path(directory)) == _files(tmp_path / "src")
    mtime = os.stat(path).st_mtime_ns

    def no_download(*args, **kwargs):
        raise AssertionError("local_copy downloaded again")

    with monkeypatch.context() as m:
        m.setattr(pafs, "copy_files", no_download)
        assert storage.local_copy(weights, cache_dir=cache) == path
        assert storage.local_copy(f"{s3_bucket}/models/tok", cache_dir=cache) == directory
    assert os.stat(path).st_mtime_ns == mtime

    # A changed object is fetched again and replaces the stale copy.
    storage.write_bytes(weights, b"new weights")
    new_path = storage.local_copy(weights, cache_dir=cache)
    assert new_path != path and Path(new_path).read_bytes() == b"new weights"
    assert not os.path.exists(path)
    entries = [p for p in Path(cache).rglob("*") if p.name.startswith(".partial")]
    assert entries == []

    with pytest.raises(FileNotFoundError, match="models/nope"):
        storage.local_copy(f"{s3_bucket}/models/nope", cache_dir=cache)

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = Path(storage.local_copy(weights))
    objects = tmp_path / "home" / ".cache" / "ray-sticker" / "objects"
    assert default.parent.parent == objects / hashlib.sha1(weights.encode()).hexdigest()
    assert default.read_bytes() == b"new weights"


@pytest.mark.s3
def test_s3_parquet_through_resolve(s3_env, s3_bucket: str) -> None:
    table = pa.table({"id": list(range(100)), "caption": [f"cat {i}" for i in range(100)]})
    fs, path = storage.resolve(f"{s3_bucket}/shards/part-0.parquet")
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    fs, root = storage.resolve(f"{s3_bucket}/shards")
    assert pq.read_table(root, filesystem=fs).num_rows == 100


@pytest.mark.s3
def test_s3_explicit_options_without_endpoint_env(s3_env, s3_bucket: str, monkeypatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    opts = s3_env.options()
    storage.write_text(f"{s3_bucket}/x.txt", "x", s3=opts)
    assert storage.read_text(f"{s3_bucket}/x.txt", s3=opts) == "x"


@pytest.mark.s3
def test_s3_ensure_bucket_and_boto3_client(s3_env) -> None:
    uri = "s3://ensure-bucket-test/some/key"
    storage.ensure_bucket(uri)
    storage.ensure_bucket(uri)  # idempotent
    names = [b["Name"] for b in storage.boto3_client().list_buckets()["Buckets"]]
    assert "ensure-bucket-test" in names


@pytest.mark.s3
def test_s3_missing_object(s3_env, s3_bucket: str) -> None:
    with pytest.raises(FileNotFoundError, match=f"not found on S3 endpoint {s3_env.endpoint_url}: {s3_bucket}/nope"):
        storage.read_bytes(f"{s3_bucket}/nope")
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-here/k"):
        storage.read_bytes("s3://no-such-bucket-here/k")


@pytest.mark.s3
def test_s3_wrong_credentials(s3_env, s3_bucket: str, monkeypatch) -> None:
    wrong = "WrongSecret" + s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    for call in (lambda: storage.read_bytes(f"{s3_bucket}/k"), lambda: storage.write_bytes(f"{s3_bucket}/k", b"x"),
                 lambda: storage.listdir(s3_bucket), lambda: storage.delete(f"{s3_bucket}/k"),
                 lambda: storage.ensure_bucket(f"{s3_bucket}/k")):
        with pytest.raises(StorageError, match="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") as info:
            call()
        assert s3_bucket in str(info.value) and s3_env.endpoint_url in str(info.value)
        assert wrong not in str(info.value) and s3_env.secret_key not in str(info.value)


@pytest.mark.s3
def test_s3_no_credentials_is_anonymous(s3_env, s3_bucket: str, monkeypatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no AWS credentials were found"):
        storage.read_bytes(f"{s3_bucket}/k")


def test_s3_unknown_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match="profile 'nope' not found"):
        storage.exists("s3://b/k", S3Options(endpoint_url="http://127.0.0.1:1", profile="nope"))


def test_s3_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNREACHABLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unreachable-secret")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the backoff of 5 attempts adds up to 15 s
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    opts = S3Options(endpoint_url=endpoint)
    for call in (lambda: storage.exists("s3://b/k", opts), lambda: storage.ensure_bucket("s3://b/k", opts)):
        with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {endpoint}: ") as info:
            call()
        assert "s3://b" in str(info.value) and "unreachable-secret" not in str(info.value)


def test_s3_max_attempts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    opts = S3Options(endpoint_url=f"http://127.0.0.1:{_closed_port()}")
    assert S3Options.from_env().max_attempts == 5
    assert storage.resolve("s3://b/k", opts)[0].max_attempts == 5
    assert storage.boto3_client(opts).meta.config.retries == {"total_max_attempts": 5, "mode": "standard"}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "8")
    assert S3Options.from_env().max_attempts == 8
    assert storage.resolve("s3://b/k", opts)[0].max_attempts == 8
    assert storage.boto3_client(opts).meta.config.retries["total_max_attempts"] == 8
    assert storage.resolve("s3://b/k", dataclasses.replace(opts, max_attempts=2))[0].max_attempts == 2
    for bad in ("0", "-1", "2.5", "three"):
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", bad)
        with pytest.raises(StorageError, match=f"AWS_MAX_ATTEMPTS must be an integer >= 1 .*got '{bad}'"):
            storage.exists("s3://b/k", opts)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="S3Options.max_attempts must be an int >= 1"):
            S3Options(max_attempts=bad)


def test_s3_connect_timeout_is_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An endpoint that never answers the connection (dropped SYNs) fails after the connect timeout."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDBLACKHOLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "blackhole-secret")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(storage, "CONNECT_TIMEOUT_S", 0.5)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        for _ in range(4):  # fill the accept queue: later connection attempts get no answer
            client = stack.enter_context(socket.socket())
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        endpoint = f"http://127.0.0.1:{port}"
        opts = S3Options(endpoint_url=endpoint)
        for call in (lambda: storage.exists("s3://b/k", opts), lambda: storage.ensure_bucket("s3://b/k", opts)):
            t0 = time.perf_counter()
            with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {endpoint}: .*(?i:timeout|timed out)"):
                call()
            assert time.perf_counter() - t0 < 10
