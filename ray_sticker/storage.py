"""URIs -> filesystems: local paths and S3 (AWS or any S3-compatible store).

A URI is a local path (absolute, relative, ``~/...`` or ``file://...``) or ``s3://bucket/key``.
:func:`resolve` turns it into a ``pyarrow.fs`` filesystem and path; the helpers below work on
both kinds.  S3 settings come from :class:`S3Options` (never secrets), credentials from boto3's
usual chain (environment, ``~/.aws`` profiles, ...).  Problems a user can fix are raised as
:class:`FileNotFoundError` or :class:`StorageError` naming the URI and endpoint, never a secret.

Both clients (pyarrow for data, checkpoints and helpers; boto3 for bucket and bulk-delete calls)
retry throttling, 5xx answers and network errors with AWS's "standard" exponential backoff and
jitter, ``max_attempts`` attempts per request in all (:class:`S3Options`, else ``AWS_MAX_ATTEMPTS``,
else 5); connections time out after 5 s, requests after 30 s without data.  The pyarrow
filesystems keep that retry setting when pickled to Ray workers.  The setting is read when a
filesystem or client is resolved: objects resolved earlier keep theirs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config
from pyarrow import fs as pafs

DEFAULT_REGION = "us-east-1"
DEFAULT_CACHE_DIR = "~/.cache/ray-sticker/objects"
DEFAULT_MAX_ATTEMPTS = 5  # per request, the first included (pyarrow's own default is 3)
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0  # longest wait for data on an open connection before that attempt fails
_LOCAL = pafs.LocalFileSystem()
_BOTO_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


class StorageError(RuntimeError):
    """A storage operation failed for a reason the user can fix (endpoint, credentials)."""


@dataclass(frozen=True)
class S3Options:
    """Non-secret S3 settings; fields left as ``None`` are taken from the environment."""

    endpoint_url: str | None = None  # e.g. "http://127.0.0.1:8333"; None means AWS
    region: str | None = None
    profile: str | None = None
    max_attempts: int | None = None  # attempts per request, the first included

    def __post_init__(self) -> None:
        n = self.max_attempts
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"S3Options.max_attempts must be an int >= 1, got {n!r}")

    @classmethod
    def from_env(cls) -> "S3Options":
        """AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION (else us-east-1), AWS_PROFILE,
        AWS_MAX_ATTEMPTS (else 5; anything but an integer >= 1 raises :class:`StorageError`)."""
        return _effective(cls())


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _env_max_attempts() -> int:
    text = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    if not text:
        return DEFAULT_MAX_ATTEMPTS
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise StorageError(f"AWS_MAX_ATTEMPTS must be an integer >= 1 (attempts per S3 request), got {text!r}")
    return int(text)


def _effective(s3: S3Options | None) -> S3Options:
    s3 = s3 or S3Options()
    return S3Options(endpoint_url=s3.endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
                     region=s3.region or _env("AWS_REGION", "AWS_DEFAULT_REGION") or DEFAULT_REGION,
                     profile=s3.profile or _env("AWS_PROFILE"),
                     max_attempts=s3.max_attempts or _env_max_attempts())


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.lower().startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join parts onto a URI keeping its scheme; plain local paths use ``os.path.join``."""
    if "://" not in uri:
        return os.path.join(uri, *parts)
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])


def _local_path(uri: str) -> str:
    if uri.lower().startswith("file://"):
        uri = unquote(urlparse(uri).path)
    elif "://" in uri:
        raise ValueError(f"unsupported URI scheme (use a local path, file:// or s3://): {uri}")
    return os.path.abspath(os.path.expanduser(uri))


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].strip("/").partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri}")
    return bucket, key


@dataclass(frozen=True)
class _Credentials:
    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)


def _credentials(s3: S3Options) -> _Credentials | None:
    """Current credentials from boto3's chain, or None for anonymous access."""
    try:
        creds = boto3.Session(profile_name=s3.profile).get_credentials()
    except botocore.exceptions.ProfileNotFound as e:
        raise StorageError(f"AWS profile {s3.profile!r} not found: check AWS_PROFILE and ~/.aws/config") from e
    if creds is None:
        return None
    frozen = creds.get_frozen_credentials()
    return _Credentials(frozen.access_key, frozen.secret_key, frozen.token)


class RetryingS3FileSystem(pafs.S3FileSystem):
    """A pyarrow S3FileSystem with AWS standard retries that survive pickling.

    pyarrow's own pickling drops ``retry_strategy`` (the copy falls back to 3 attempts), so
    Ray workers reading data or writing checkpoints would not retry like the driver.
    """

    def __init__(self, max_attempts: int, **kwargs: Any) -> None:
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts), **kwargs)
        self.max_attempts = max_attempts

    def __reduce__(self) -> tuple:
        _, (kwargs,) = super().__reduce__()
        return _rebuild_s3_filesystem, (self.max_attempts, kwargs)


def _rebuild_s3_filesystem(max_attempts: int, kwargs: dict[str, Any]) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(max_attempts, **kwargs)


@functools.lru_cache(maxsize=32)
def _s3_filesystem(s3: S3Options, creds: _Credentials | None) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {"region": s3.region, "connect_timeout": CONNECT_TIMEOUT_S,
                              "request_timeout": READ_TIMEOUT_S}
    if s3.endpoint_url:  # pyarrow ignores AWS_ENDPOINT_URL: always pass it explicitly
        url = urlparse(s3.endpoint_url if "://" in s3.endpoint_url else f"https://{s3.endpoint_url}")
        kwargs.update(endpoint_override=url.netloc, scheme=url.scheme)
    if creds is None:
        kwargs["anonymous"] = True
    else:
        kwargs.update(access_key=creds.access_key, secret_key=creds.secret_key, session_token=creds.token)
    return RetryingS3FileSystem(s3.max_attempts or DEFAULT_MAX_ATTEMPTS, **kwargs)


@functools.lru_cache(maxsize=32)
def _boto3_client(s3: S3Options, creds: _Credentials | None) -> Any:
    # total_max_attempts counts the first request, like AWS_MAX_ATTEMPTS (boto3's max_attempts does not).
    config = Config(retries={"total_max_attempts": s3.max_attempts or DEFAULT_MAX_ATTEMPTS, "mode": "standard"},
                    connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                    signature_version=UNSIGNED if creds is None else None,
                    s3={"addressing_style": "path"} if s3.endpoint_url else None,
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    keys = {} if creds is None else dict(aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                                         aws_session_token=creds.token)
    return boto3.Session().client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region, config=config, **keys)


def resolve(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)``: a local absolute path, or an S3 filesystem and ``"bucket/key"``."""
    if not is_s3(uri):
        return _LOCAL, _local_path(uri)
    bucket, key = _bucket_key(uri)
    opts = _effective(s3)
    return _s3_filesystem(opts, _credentials(opts)), f"{bucket}/{key}".rstrip("/")


def boto3_client(s3: S3Options | None = None) -> Any:
    """A boto3 S3 client with the same endpoint, profile, region and credentials as :func:`resolve`."""
    opts = _effective(s3)
    return _boto3_client(opts, _credentials(opts))


_TRANSIENT_CODES = frozenset({"500", "502", "503", "504", "SlowDown", "ServiceUnavailable", "InternalError",
                              "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                              "TooManyRequests", "RequestThrottled"})


def _kind(exc: BaseException) -> str | None:
    """Classify a pyarrow/boto3 error: "missing", "unreachable", "denied", "transient" or None.

    "unreachable": no connection could be made (refused, unknown host, connect timeout);
    "transient": throttling, 5xx answers and connections lost mid-request.
    """
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")
    if isinstance(exc, FileNotFoundError) or code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
        return "missing"
    text = str(exc).lower().replace("_", "")
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)) or any(
            s in text for s in ("could not connect", "connection refused", "could not resolve", "couldn't resolve",
                                "curlcode: 6,", "curlcode: 7,", "failed to connect", "connection timed out")):
        return "unreachable"
    if any(s in text for s in ("accessdenied", "signaturedoesnotmatch", "invalidaccesskeyid", "forbidden", "(403)")):
        return "denied"
    if "nosuchbucket" in text:
        return "missing"
    if code in _TRANSIENT_CODES or isinstance(exc, botocore.exceptions.HTTPClientError) or any(
            s in text for s in ("networkconnection", "slowdown", "serviceunavailable", "internalfailure",
                                "throttl", "requesttimeout", "(http status 5")):
        return "transient"
    return None


def _attempts(opts: S3Options) -> str:
    n = opts.max_attempts or DEFAULT_MAX_ATTEMPTS
    return f"gave up after {n} attempt{'s' * (n > 1)}, AWS_MAX_ATTEMPTS sets how many"


@contextlib.contextmanager
def _errors(uri: str, s3: S3Options | None = None) -> Iterator[None]:
    """Re-raise filesystem/boto3 errors as FileNotFoundError or StorageError naming ``uri``
    and the endpoint; the messages never contain credentials."""
    try:
        yield
    except (OSError, *_BOTO_ERRORS) as e:
        kind = _kind(e)
        if not is_s3(uri):
            if kind == "missing":
                raise FileNotFoundError(f"not found: {uri}") from e
            raise
        opts = _effective(s3)
        where = f"S3 endpoint {opts.endpoint_url}" if opts.endpoint_url else "AWS S3"
        reason = str(e).split("Details:")[-1].split("AWS Error ")[-1].strip()
        if kind == "missing":
            raise FileNotFoundError(f"not found on {where}: {uri}") from e
        if kind == "unreachable":
            raise StorageError(f"cannot reach {where}: {reason} (while accessing {uri}; {_attempts(opts)})") from e
        if kind == "transient":
            raise StorageError(f"request to {where} failed: {reason} (while accessing {uri}; {_attempts(opts)})") from e
        if kind == "denied" and _credentials(opts) is None:
            raise StorageError(f"access denied to {uri} on {where} and no AWS credentials were found: "
                               "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from e
        if kind == "denied":
            profile = f" ({opts.profile!r})" if opts.profile else ""
            raise StorageError(f"access denied to {uri} on {where}: "
                               f"check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile{profile}") from e
        raise


def _info(uri: str, s3: S3Options | None) -> tuple[pafs.FileSystem, str, pafs.FileInfo]:
    with _errors(uri, s3):
        fs, path = resolve(uri, s3)
        return fs, path, fs.get_file_info(path)


def exists(uri: str, s3: S3Options | None = None) -> bool:
    """True if ``uri`` is an existing file/object or directory/prefix."""
    return _info(uri, s3)[2].type != pafs.FileType.NotFound


def isdir(uri: str, s3: S3Options | None = None) -> bool:
    """True if ``uri`` is a directory (or an S3 prefix holding objects)."""
    return _info(uri, s3)[2].type == pafs.FileType.Directory


def read_bytes(uri: str, s3: S3Options | None = None) -> bytes:
    """The whole content of a file or object."""
    with _errors(uri, s3):
        fs, path = resolve(uri, s3)
        with fs.open_input_stream(path) as f:
            return f.read()


def write_bytes(uri: str, data: bytes, s3: S3Options | None = None) -> None:
    """Write a file or object; locally, parent directories are created and the file replaced atomically."""
    with _errors(uri, s3):
        fs, path = resolve(uri, s3)
        if fs is not _LOCAL:
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(f"{path}.tmp-{os.getpid()}", "wb") as f:
            f.write(data)
        os.replace(f.name, path)


def read_text(uri: str, s3: S3Options | None = None) -> str:
    return read_bytes(uri, s3).decode("utf-8")


def write_text(uri: str, text: str, s3: S3Options | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), s3)


def read_json(uri: str, s3: S3Options | None = None) -> Any:
    return json.loads(read_bytes(uri, s3))


def write_json(uri: str, obj: Any, s3: S3Options | None = None) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n", s3)


def listdir(uri: str, s3: S3Options | None = None) -> list[str]:
    """Sorted full URIs of the direct children of a directory/prefix; ``[]`` if it does not exist."""
    with _errors(uri, s3):
        fs, path = resolve(uri, s3)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(join(uri, posixpath.basename(i.path)) for i in infos)


def delete(uri: str, s3: S3Options | None = None) -> None:
    """Delete a file/object or a whole directory/prefix; a missing one is fine.

    ``s3://bucket`` empties the bucket but keeps it.
    """
    fs, path = resolve(uri, s3)
    if fs is _LOCAL:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    bucket, key = _bucket_key(uri)
    prefix = f"{key}/" if key else ""
    keys = {key, prefix} - {""}
    with _errors(uri, s3):
        client = boto3_client(s3)
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    # Also every implied "dir/" marker: stores that materialise directories
                    # (SeaweedFS) keep them, and list them, until they are deleted explicitly.
                    parts = obj["Key"][len(prefix):].split("/")
                    keys.update(prefix + "/".join(parts[:i]) + ("/" if i < len(parts) else "")
                                for i in range(1, len(parts) + 1))
        except botocore.exceptions.ClientError as e:
            if _kind(e) == "missing":
                return
            raise
        ordered = sorted(keys, reverse=True)  # children before the marker of their directory
        for i in range(0, len(ordered), 1000):
            batch = [{"Key": k} for k in ordered[i:i + 1000]]
            errors = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors")
            if errors:
                raise OSError(f"{errors[0].get('Code')}: cannot delete s3://{bucket}/{errors[0].get('Key')}")


def upload_dir(local_dir: str, uri: str, s3: S3Options | None = None) -> None:
    """Copy the contents of ``local_dir`` recursively into ``uri`` (S3 or local)."""
    src = _local_path(local_dir)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"local directory not found: {local_dir}")
    with _errors(uri, s3):
        fs, path = resolve(uri, s3)
        if not is_s3(uri):
            os.makedirs(path, exist_ok=True)
        pafs.copy_files(src, path, source_filesystem=_LOCAL, destination_filesystem=fs)


def download_dir(uri: str, local_dir: str, s3: S3Options | None = None) -> str:
    """Copy ``uri`` recursively into ``local_dir`` (a single object lands inside it); returns ``local_dir``."""
    dest = _local_path(local_dir)
    fs, path, info = _info(uri, s3)
    with _errors(uri, s3):
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        os.makedirs(dest, exist_ok=True)
        target = os.path.join(dest, info.base_name) if info.type == pafs.FileType.File else dest
        pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=_LOCAL)
    return dest


def local_copy(uri: str, cache_dir: str | None = None, s3: S3Options | None = None) -> str:
    """A local path with the content of ``uri``: local URIs as they are, S3 ones downloaded once.

    The copy is ``<cache_dir>/<sha1 of uri>/<version>/<name>`` (cache dir default
    ``~/.cache/ray-sticker/objects``), where the version hashes the endpoint and the
    objects' keys, sizes and modification times: one listing request per call, and a new
    download only when the content changed (older versions are then removed).  Copies are
    published by an atomic rename, so concurrent callers on one machine are safe.
    """
    if not is_s3(uri):
        return _local_path(uri)
    opts = _effective(s3)
    fs, path, info = _info(uri, opts)
    with _errors(uri, opts):
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        files = [info] if info.type == pafs.FileType.File else [
            i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File]
    version = hashlib.sha1(repr([opts.endpoint_url] + sorted(
        (i.path[len(path):], i.size, i.mtime_ns) for i in files)).encode()).hexdigest()[:16]
    uri_hash = hashlib.sha1(uri.rstrip("/").encode()).hexdigest()
    entry = os.path.join(_local_path(cache_dir or DEFAULT_CACHE_DIR), uri_hash)
    final, name = os.path.join(entry, version), posixpath.basename(path)
    if not os.path.isdir(final):
        os.makedirs(entry, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".partial-", dir=entry)
        try:
            download_dir(uri, tmp if info.type == pafs.FileType.File else os.path.join(tmp, name), opts)
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):  # else another process published the same version first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in set(os.listdir(entry)) - {version}:
            if not old.startswith(".partial-"):
                shutil.rmtree(os.path.join(entry, old), ignore_errors=True)
    return os.path.join(final, name)


def ensure_bucket(uri: str, s3: S3Options | None = None) -> None:
    """Create the bucket of an ``s3://`` URI if it does not exist; no-op for local URIs."""
    if not is_s3(uri):
        return
    bucket, _ = _bucket_key(uri)
    opts = _effective(s3)
    with _errors(f"s3://{bucket}", opts):
        client = boto3_client(opts)
        try:
            client.head_bucket(Bucket=bucket)
            return
        except botocore.exceptions.ClientError as e:
            if _kind(e) != "missing":
                raise
        where = {} if opts.region == DEFAULT_REGION else {
            "CreateBucketConfiguration": {"LocationConstraint": opts.region}}
        try:
            client.create_bucket(Bucket=bucket, **where)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
