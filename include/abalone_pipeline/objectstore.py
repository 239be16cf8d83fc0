"""A minimal object store over a local directory or S3, with create-only writes.

Writes never leave a half-written object: a local write goes to a temporary file that is hard-linked into
place, and an S3 PUT is atomic. ``put_if_absent`` never replaces an existing object, so a retry racing
an earlier attempt cannot overwrite what that attempt staged.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import unquote, urlparse


class ObjectStoreError(Exception):
    """An object could not be read or written; the message names it. Possibly transient."""


class PermanentError(ObjectStoreError):
    """Retrying will not help: the task fails at once and says why."""


class MissingObject(PermanentError):
    """The object does not exist or access to it is denied."""


class SourceTooLarge(PermanentError):
    """The source is larger than the configured maximum; it is refused before it is downloaded."""


# HTTP statuses of a source that no retry can fix; others (5xx, 429) are retried.
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404, 410})
HTTP_CHUNK = 1 << 20


# S3 error codes that no retry can fix.
PERMANENT_S3_ERRORS = frozenset({"NoSuchKey", "NoSuchBucket", "404", "403", "AccessDenied"})


def _s3_error(exc: Exception, action: str, uri: str) -> ObjectStoreError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    kind = MissingObject if code in PERMANENT_S3_ERRORS else ObjectStoreError
    return kind(f"cannot {action} {uri}: {exc}")


class ObjectStore(ABC):
    """Keys are ``/``-separated paths below the store's root URI."""

    root_uri: str

    def uri(self, key: str) -> str:
        return f"{self.root_uri}/{key}"

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` unless an object is already there; return whether it wrote."""


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_uri = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ObjectStoreError(f"key {key!r} escapes the store root {self.root}")
        return path

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise MissingObject(f"cannot read {self.uri(key)}: {exc.strerror}") from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot read {self.uri(key)}: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.fchmod(fd, 0o644)  # readable by a trainer container running as another user
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)  # fails if the target exists: create-only, like S3's If-None-Match
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str, client) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.root_uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            raise _s3_error(exc, "read", self.uri(key)) from exc

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception as exc:
            raise _s3_error(exc, "check", self.uri(key)) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _s3_error(exc, "check", self.uri(key)) from exc
        return True

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise _s3_error(exc, "write", self.uri(key)) from exc
        return True


def open_store(uri: str, s3_client_factory=None) -> ObjectStore:
    """The store at ``file:///dir`` or ``s3://bucket/prefix``; ``s3_client_factory`` builds the boto3 client."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if s3_client_factory is None:
            import boto3

            s3_client_factory = lambda: boto3.client("s3")  # ruff: ignore[lambda-assignment]
        return S3Store(parsed.netloc, parsed.path, s3_client_factory())
    raise ObjectStoreError(f"unsupported object store {uri!r}: use s3://bucket/prefix or file:///dir")


def _refuse_if_larger(uri: str, size: int | None, max_bytes: int | None) -> None:
    if max_bytes is not None and size is not None and size > max_bytes:
        raise SourceTooLarge(
            f"source {uri} is {size:,} bytes, more than the maximum {max_bytes:,} (ABALONE_MAX_SOURCE_BYTES)"
        )


def _read_http(uri: str, max_bytes: int | None, timeout: float) -> bytes:
    """GET ``uri``, refusing it by its Content-Length before the body is read, or once the body exceeds it."""
    import requests

    try:
        with requests.get(uri, stream=True, timeout=timeout) as response:
            if response.status_code in PERMANENT_HTTP_STATUSES:
                raise MissingObject(f"source {uri} answered HTTP {response.status_code} {response.reason}")
            if response.status_code >= 400:
                raise ObjectStoreError(f"source {uri} answered HTTP {response.status_code} {response.reason}")
            length = response.headers.get("Content-Length")
            _refuse_if_larger(uri, int(length) if length and length.isdigit() else None, max_bytes)
            body = bytearray()
            for chunk in response.iter_content(HTTP_CHUNK):
                body += chunk
                _refuse_if_larger(uri, len(body), max_bytes)  # a server may omit or understate the length
            return bytes(body)
    except requests.RequestException as exc:
        raise ObjectStoreError(f"cannot read {uri}: {exc}") from exc


def read_source(uri: str, s3_client_factory=None, max_bytes: int | None = None, timeout: float = 60) -> bytes:
    """Bytes of a source named by a local path, ``file://``, ``s3://`` or ``http(s)://`` URI.

    A source larger than ``max_bytes`` is refused, before download where its size is known up front.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme else uri)
        if not path.is_file():
            raise MissingObject(f"source {uri} does not exist or is not a file")
        _refuse_if_larger(uri, path.stat().st_size, max_bytes)
        return path.read_bytes()
    if parsed.scheme == "s3":
        store = open_store(f"s3://{parsed.netloc}", s3_client_factory)
        key = parsed.path.lstrip("/")
        _refuse_if_larger(uri, store.size(key), max_bytes)
        return store.get(key)
    if parsed.scheme in ("http", "https"):
        return _read_http(uri, max_bytes, timeout)
    raise MissingObject(f"unsupported source {uri!r}: use a path, file://, s3:// or https://")
