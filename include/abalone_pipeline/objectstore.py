"""A minimal object store over a local directory or S3, with create-only, verified writes.

Writes never leave a half-written object: a local write goes to a temporary file that is hard-linked into
place; an S3 PUT is atomic and a multipart upload is invisible until it is completed. Writes are
create-only (``If-None-Match: *`` on S3), so a retry racing an earlier attempt cannot overwrite what that
attempt staged, and an existing object with the expected SHA-256 counts as written. Every write is
verified after the fact against the SHA-256 the writer computed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)


class ObjectStoreError(Exception):
    """An object could not be read or written; the message names it. Possibly transient."""


class PermanentError(ObjectStoreError):
    """Retrying will not help: the task fails at once and says why."""


class MissingObject(PermanentError):
    """The object does not exist or access to it is denied."""


class ContentMismatch(PermanentError):
    """An object exists with other content than expected: written by hand, or changed after it was written."""


# Files up to this size go up in one PUT; larger ones in parts of this size, a few at a time.
PART_SIZE = 8 << 20
UPLOAD_THREADS = 4
HASH_CHUNK = 8 << 20


# S3 error codes that no retry can fix.
PERMANENT_S3_ERRORS = frozenset({"NoSuchKey", "NoSuchBucket", "404", "403", "AccessDenied"})


def s3_error(exc: Exception, action: str, uri: str) -> ObjectStoreError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    kind = MissingObject if code in PERMANENT_S3_ERRORS else ObjectStoreError
    return kind(f"cannot {action} {uri}: {exc}")


def _s3_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


# S3's answer to a create-only write when the object exists. (409 ConditionalRequestConflict means a
# concurrent write is in flight and may yet fail: that one is retried, not taken as success.)
EXISTS_CODES = frozenset({"PreconditionFailed"})


class Put(NamedTuple):
    """The outcome of ``put_file``: whether it wrote, and the checksum the store keeps for the object."""

    written: bool
    checksum: str | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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

    @abstractmethod
    def replace(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` whatever is there, atomically: only for small mutable records (fences),
        never for staged data."""

    @abstractmethod
    def put_file(self, key: str, path: Path, sha256: str) -> Put:
        """Write the file at ``path`` (whose SHA-256 is ``sha256``) to ``key`` unless an object is there.

        An object already at ``key`` with the same content counts as success (``written`` False); one
        with other content raises ``ContentMismatch``. The written object is verified.
        """

    @abstractmethod
    def verify(self, key: str, sha256: str, size: int, *, reread: bool = True, checksum: str | None = None) -> None:
        """Raise ``ContentMismatch`` unless the object at ``key`` has ``size`` bytes and this SHA-256.

        ``checksum`` is what ``put_file`` reported the store keeps for it, if anything. With
        ``reread=False`` a store may settle for what it knows without reading the object back (its
        size and the checksum it keeps), when a later reader hashes it anyway.
        """


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

    def _write_then(self, key: str, data: bytes, publish) -> bool:
        """Write ``data`` to a temporary file beside ``key``, then ``publish(tmp, path)`` it."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.fchmod(fd, 0o644)  # readable by a trainer container running as another user
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return publish(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        def link(tmp: str, path: Path) -> bool:
            try:
                os.link(tmp, path)  # fails if the target exists: create-only, like S3's If-None-Match
            except FileExistsError:
                return False
            return True

        return self._write_then(key, data, link)

    def replace(self, key: str, data: bytes) -> None:
        self._write_then(key, data, os.replace)

    def put_file(self, key: str, path: Path, sha256: str) -> Put:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o644)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            if file_sha256(Path(tmp)) != sha256:  # what landed on disk, read back
                raise ObjectStoreError(f"{self.uri(key)}: the copy of {path} does not have sha256 {sha256}")
            try:
                os.link(tmp, target)
            except FileExistsError:
                self.verify(key, sha256, path.stat().st_size)
                return Put(False)
            return Put(True)
        finally:
            os.unlink(tmp)

    def verify(self, key: str, sha256: str, size: int, *, reread: bool = True, checksum: str | None = None) -> None:
        path = self._path(key)
        try:
            actual_size = path.stat().st_size
            actual = file_sha256(path) if actual_size == size else None
        except FileNotFoundError as exc:
            raise MissingObject(f"{self.uri(key)} does not exist") from exc
        if actual != sha256:
            raise ContentMismatch(
                f"{self.uri(key)} has {actual_size} bytes, sha256 {actual or 'not computed'}; "
                f"expected {size} bytes, sha256 {sha256}"
            )


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
            raise s3_error(exc, "read", self.uri(key)) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise s3_error(exc, "check", self.uri(key)) from exc
        except Exception as exc:  # the endpoint unreachable, a timeout: worth a retry
            raise ObjectStoreError(f"cannot check {self.uri(key)}: {exc}") from exc
        return True

    def put_if_absent(self, key: str, data: bytes) -> bool:
        digest = hashlib.sha256(data).digest()
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*", ChecksumSHA256=_b64(digest)
            )
        except Exception as exc:
            if _s3_code(exc) in EXISTS_CODES:
                return False
            raise s3_error(exc, "write", self.uri(key)) from exc
        self.verify(key, digest.hex(), len(data), checksum=_b64(digest))
        return True

    def replace(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise s3_error(exc, "write", self.uri(key)) from exc

    def put_file(self, key: str, path: Path, sha256: str) -> Put:
        size = path.stat().st_size
        if self.exists(key):  # a retry after a crash: compare, rather than upload and be refused
            expected = self._checksum_of(path, size)
            self._verify_existing(key, sha256, size, expected)
            return Put(False, expected)
        try:
            written, checksum = (
                self._put_small(key, path) if size <= PART_SIZE else self._put_multipart(key, path, size)
            )
        except ObjectStoreError:
            raise
        except Exception as exc:
            raise s3_error(exc, "write", self.uri(key)) from exc
        if written:
            self.verify(key, sha256, size, checksum=checksum)
        else:
            self._verify_existing(key, sha256, size, checksum)
        return Put(written, checksum)

    def _verify_existing(self, key: str, sha256: str, size: int, checksum: str) -> None:
        try:
            self.verify(key, sha256, size, checksum=checksum)
        except ContentMismatch:
            raise
        except MissingObject as exc:  # it existed a moment ago: deleted meanwhile, worth a retry
            raise ObjectStoreError(str(exc)) from exc

    def _checksum_of(self, path: Path, size: int) -> str:
        """What S3 keeps for this file uploaded by ``put_file``: its SHA-256, or that of its parts' SHA-256s."""
        if size <= PART_SIZE:
            return _b64(bytes.fromhex(file_sha256(path)))
        parts = []
        with path.open("rb") as handle:
            while chunk := handle.read(PART_SIZE):
                parts.append(hashlib.sha256(chunk).digest())
        return f"{_b64(hashlib.sha256(b''.join(parts)).digest())}-{len(parts)}"

    def _put_small(self, key: str, path: Path) -> tuple[bool, str]:
        body = path.read_bytes()
        checksum = _b64(hashlib.sha256(body).digest())
        try:
            # S3 checks the body against ChecksumSHA256 on receipt and refuses a corrupted one.
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=body, IfNoneMatch="*", ChecksumSHA256=checksum
            )
        except Exception as exc:
            if _s3_code(exc) in EXISTS_CODES:
                return False, checksum
            raise
        return True, checksum

    def _put_multipart(self, key: str, path: Path, size: int) -> tuple[bool, str]:
        """Upload in parts, a few at a time; the object appears only when the upload is completed."""
        s3_key = self._key(key)
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=s3_key, ChecksumAlgorithm="SHA256")[
            "UploadId"
        ]
        count = -(-size // PART_SIZE)

        def upload(number: int) -> tuple[dict[str, object], bytes]:
            with path.open("rb") as handle:  # each worker reads its own part: memory is threads x part size
                handle.seek((number - 1) * PART_SIZE)
                body = handle.read(PART_SIZE)
            digest = hashlib.sha256(body).digest()
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=s3_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=_b64(digest),
            )
            return {"ETag": response["ETag"], "PartNumber": number, "ChecksumSHA256": _b64(digest)}, digest

        try:
            with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as pool:
                results = list(pool.map(upload, range(1, count + 1)))
            log.info("uploaded %s in %d parts", self.uri(key), count)
            composite = f"{_b64(hashlib.sha256(b''.join(digest for _, digest in results)).digest())}-{count}"
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=s3_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [part for part, _ in results]},
                IfNoneMatch="*",
            )
        except BaseException as exc:  # a task killed or timed out mid-upload aborts it too
            self._abort(s3_key, upload_id)
            if isinstance(exc, Exception) and _s3_code(exc) in EXISTS_CODES:
                return False, composite
            raise
        return True, composite

    def _abort(self, s3_key: str, upload_id: str) -> None:
        """Drop an unfinished upload's parts; if S3 cannot be reached, its lifecycle rule will."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3_key, UploadId=upload_id)
        except Exception as exc:
            log.warning("could not abort the multipart upload of s3://%s/%s (%s)", self.bucket, s3_key, exc)

    def _head(self, key: str) -> dict:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
        except Exception as exc:
            raise s3_error(exc, "check", self.uri(key)) from exc

    def verify(self, key: str, sha256: str, size: int, *, reread: bool = True, checksum: str | None = None) -> None:
        head = self._head(key)
        if head["ContentLength"] != size:
            raise ContentMismatch(f"{self.uri(key)} has {head['ContentLength']} bytes, expected {size}")
        reported = head.get("ChecksumSHA256")
        if reported:
            # A multipart object's checksum is the SHA-256 of its parts' SHA-256s, suffixed by the part count.
            known = {_b64(bytes.fromhex(sha256)), *([checksum.split("-")[0]] if checksum else [])}
            if reported.split("-")[0] in known:
                return
            if not reread and (checksum or head.get("ChecksumType") == "FULL_OBJECT"):
                raise ContentMismatch(f"{self.uri(key)}: S3 keeps checksum {reported} for it, expected {checksum}")
        if not reread:
            return
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            for chunk in body.iter_chunks(HASH_CHUNK):
                digest.update(chunk)
        except Exception as exc:
            raise s3_error(exc, "read", self.uri(key)) from exc
        if digest.hexdigest() != sha256:
            raise ContentMismatch(f"{self.uri(key)} has sha256 {digest.hexdigest()}, expected {sha256}")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


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
