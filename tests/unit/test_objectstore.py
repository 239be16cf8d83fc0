from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from moto.server import ThreadedMotoServer

from abalone_pipeline.objectstore import (
    LocalStore,
    MissingObject,
    ObjectStoreError,
    PermanentError,
    SourceTooLarge,
    open_store,
    read_source,
)


def test_local_put_if_absent_never_replaces(tmp_path):
    store = LocalStore(tmp_path)
    assert store.put_if_absent("a/b.txt", b"first")
    assert not store.put_if_absent("a/b.txt", b"second")
    assert store.get("a/b.txt") == b"first"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"], "no temporary file is left behind"


def test_local_concurrent_writers_leave_exactly_one_winner(tmp_path):
    store = LocalStore(tmp_path)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(store.put_if_absent("k", f"writer {i}".encode())))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert store.get("k").startswith(b"writer ")


def test_local_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(ObjectStoreError, match="escapes"):
        LocalStore(tmp_path / "root").put_if_absent("../outside", b"x")


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(MissingObject, match="does not exist"):
        read_source(str(tmp_path / "missing.csv"))
    with pytest.raises(ObjectStoreError, match="unsupported source"):
        read_source("ftp://host/file")


@pytest.fixture(scope="module")
def s3_client():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="staging")
    yield client
    server.stop()


def test_s3_store_round_trip_and_create_only_writes(s3_client):
    store = open_store("s3://staging/some/prefix", lambda: s3_client)
    assert store.uri("x.csv") == "s3://staging/some/prefix/x.csv"
    assert not store.exists("x.csv")
    assert store.put_if_absent("x.csv", b"one")
    assert not store.put_if_absent("x.csv", b"two")
    assert store.exists("x.csv") and store.get("x.csv") == b"one"
    assert read_source("s3://staging/some/prefix/x.csv", lambda: s3_client) == b"one"
    with pytest.raises(MissingObject, match="cannot read s3://staging/some/prefix/nope"):
        store.get("nope")


def test_transient_s3_errors_are_not_reported_as_missing():
    from botocore.exceptions import ClientError

    class Throttled:
        def get_object(self, **_):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "reduce your request rate"}}, "GetObject")

    with pytest.raises(ObjectStoreError, match="SlowDown") as caught:
        open_store("s3://staging", lambda: Throttled()).get("x")
    assert not isinstance(caught.value, MissingObject)


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
