"""Sources: where a run's data is read from (a path, ``file://``, ``s3://`` or ``http(s)://``), streamed.

A source larger than the configured maximum is refused before its body is read where the size is known up
front, and otherwise as soon as it exceeds it. A failure no retry can fix is a ``PermanentError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from abalone_pipeline.objectstore import MissingObject, ObjectStoreError, PermanentError, open_store, s3_error

# HTTP statuses of a source that no retry can fix; others (5xx, 429) are retried.
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404, 410})
HTTP_CHUNK = 1 << 20


class SourceTooLarge(PermanentError):
    """The source is larger than the configured maximum; it is refused before it is downloaded."""


def _refuse_if_larger(uri: str, size: int | None, max_bytes: int | None) -> None:
    if max_bytes is not None and size is not None and size > max_bytes:
        raise SourceTooLarge(
            f"source {uri} is {size:,} bytes, more than the maximum {max_bytes:,} (ABALONE_MAX_SOURCE_BYTES)"
        )


class Source:
    """An open source: its size when known up front, and its bytes as an iterator of chunks."""

    def __init__(self, uri: str, size: int | None, chunks: Iterator[bytes], max_bytes: int | None) -> None:
        self.uri = uri
        self.size = size
        self._chunks = chunks
        self._max_bytes = max_bytes
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.bytes_read += len(chunk)
            _refuse_if_larger(self.uri, self.bytes_read, self._max_bytes)  # a server may understate the size
            yield chunk


def _guarded(chunks: Iterator[bytes], uri: str, errors: tuple[type[BaseException], ...]) -> Iterator[bytes]:
    """Chunks of a network stream; a broken connection mid-read is a (retryable) ObjectStoreError."""
    try:
        yield from chunks
    except errors as exc:
        raise ObjectStoreError(f"reading {uri} failed: {exc}") from exc


@contextlib.contextmanager
def open_source(
    uri: str, s3_client_factory=None, max_bytes: int | None = None, timeout: float = 60
) -> Generator[Source]:
    """Open a source named by a local path, ``file://``, ``s3://`` or ``http(s)://`` URI, to stream it.

    A source larger than ``max_bytes`` is refused before its body is read where the size is known up
    front (a file's size, S3's ContentLength, an HTTP Content-Length), and otherwise once it exceeds it.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme else uri)
        if not path.is_file():
            raise MissingObject(f"source {uri} does not exist or is not a file")
        size = path.stat().st_size
        _refuse_if_larger(uri, size, max_bytes)
        with path.open("rb") as handle:
            yield Source(uri, size, iter(lambda: handle.read(HTTP_CHUNK), b""), max_bytes)
        return
    if parsed.scheme == "s3":
        from botocore.exceptions import BotoCoreError

        client = open_store(f"s3://{parsed.netloc}", s3_client_factory).client
        try:
            response = client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        except Exception as exc:
            raise s3_error(exc, "read", uri) from exc
        size = int(response["ContentLength"])
        body = response["Body"]
        try:
            _refuse_if_larger(uri, size, max_bytes)
            yield Source(uri, size, _guarded(body.iter_chunks(HTTP_CHUNK), uri, (BotoCoreError, OSError)), max_bytes)
        finally:
            body.close()
        return
    if parsed.scheme in ("http", "https"):
        import requests

        try:
            # Redirects are not followed: the allowlist (ABALONE_ALLOWED_SOURCES) vouches for this URL only.
            response = requests.get(uri, stream=True, timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise ObjectStoreError(f"cannot read {uri}: {exc}") from exc
        with response:
            if response.is_redirect:
                raise MissingObject(
                    f"source {uri} redirects (HTTP {response.status_code}) to {response.headers.get('Location')}; "
                    "redirects are not followed: use the final URL"
                )
            if response.status_code in PERMANENT_HTTP_STATUSES:
                raise MissingObject(f"source {uri} answered HTTP {response.status_code} {response.reason}")
            if response.status_code >= 400:
                raise ObjectStoreError(f"source {uri} answered HTTP {response.status_code} {response.reason}")
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
            _refuse_if_larger(uri, size, max_bytes)
            chunks = _guarded(response.iter_content(HTTP_CHUNK), uri, (requests.RequestException,))
            yield Source(uri, size, chunks, max_bytes)
        return
    raise MissingObject(f"unsupported source {uri!r}: use a path, file://, s3:// or https://")


def read_source(uri: str, s3_client_factory=None, max_bytes: int | None = None, timeout: float = 60) -> bytes:
    """All bytes of a (small) source; see ``open_source``."""
    with open_source(uri, s3_client_factory, max_bytes, timeout) as source:
        return b"".join(source)
