from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from abalone_pipeline.objectstore import MissingObject, ObjectStoreError, PermanentError
from abalone_pipeline.staging.sources import SourceTooLarge, read_source


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(MissingObject, match="does not exist"):
        read_source(str(tmp_path / "missing.csv"))
    with pytest.raises(ObjectStoreError, match="unsupported source"):
        read_source("ftp://host/file")


class _Source(BaseHTTPRequestHandler):
    """A web server with a few sources: sized, unsized (chunked), missing and failing."""

    BODY = b"M,0.455,0.365,0.095,0.514,0.2245,0.101,0.15,15\n" * 100

    def do_GET(self):
        if self.path == "/abalone.data":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.BODY)))
            self.end_headers()
            self.wfile.write(self.BODY)
        elif self.path == "/unsized.data":  # no Content-Length: the size is known only while reading
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(self.BODY), 1000):
                chunk = self.BODY[start : start + 1000]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_error(404 if self.path == "/missing.data" else 503)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Source)
    server.protocol_version = "HTTP/1.1"
    _Source.protocol_version = "HTTP/1.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_sources_are_read_and_classified(web):
    assert read_source(f"{web}/abalone.data") == _Source.BODY
    assert read_source(f"{web}/unsized.data") == _Source.BODY
    with pytest.raises(MissingObject, match="HTTP 404"):
        read_source(f"{web}/missing.data")
    with pytest.raises(ObjectStoreError, match="HTTP 503") as caught:
        read_source(f"{web}/flaky.data")
    assert not isinstance(caught.value, PermanentError), "a 5xx is retried"


def test_oversized_sources_are_refused_before_or_while_reading(web, tmp_path, s3_client):
    limit = len(_Source.BODY) - 1
    with pytest.raises(SourceTooLarge, match=f"more than the maximum {limit:,}"):
        read_source(f"{web}/abalone.data", max_bytes=limit)
    with pytest.raises(SourceTooLarge):
        read_source(f"{web}/unsized.data", max_bytes=limit)
    local = tmp_path / "abalone.data"
    local.write_bytes(_Source.BODY)
    with pytest.raises(SourceTooLarge, match="ABALONE_MAX_SOURCE_BYTES"):
        read_source(str(local), max_bytes=limit)
    s3_client.put_object(Bucket="staging", Key="big.data", Body=_Source.BODY)
    with pytest.raises(SourceTooLarge):
        read_source("s3://staging/big.data", lambda: s3_client, max_bytes=limit)
    assert read_source(str(local), max_bytes=len(_Source.BODY)) == _Source.BODY
