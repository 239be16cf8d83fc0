"""Staging against a real S3 endpoint (moto's server over HTTP): interrupted uploads, racing stagers."""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from abalone_pipeline import objectstore
from abalone_pipeline.objectstore import ContentMismatch, ObjectStoreError, open_store
from abalone_pipeline.staging import StagingError, stage

BUCKET = "staging"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Endpoint:
    """A moto S3 server on a fixed port that can be stopped and started again (its data survives)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        # One attempt and short timeouts: the test, not botocore, decides when to try again.
        config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=10)
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
            config=config,
        )


@pytest.fixture
def endpoint():
    endpoint = Endpoint()
    endpoint.start()
    client = endpoint.client()
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def big_source() -> bytes:
    """About 24 MB of distinct abalone-like rows: a train split of several upload parts."""
    rng = random.Random(0)
    rows = []
    for index in range(480_000):
        length = 0.1 + 0.7 * index / 480_000  # distinct in the first column: no duplicates
        rows.append(
            f"{'MFI'[rng.randrange(3)]},{length:.7f},{length * 0.8:.4f},{length * 0.3:.4f},{length**3:.5f},"
            f"{length**3 * 0.4:.5f},{length**3 * 0.2:.5f},{length**3 * 0.3:.5f},{1 + index % 29}\n"
        )
    return "".join(rows).encode()


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(objectstore, "PART_SIZE", 5 << 20)  # S3's smallest part: several parts per split


def keys(client, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_an_endpoint_stopping_mid_upload_leaves_no_dataset_and_the_retry_completes_it(endpoint, big_source):
    client = endpoint.client()
    store = open_store(f"s3://{BUCKET}/nightly", lambda: client)
    parts_sent = []

    def stop_on_third_part(request, **_):
        parts_sent.append(request.url)
        if len(parts_sent) == 3:
            endpoint.stop()  # the endpoint goes away while the train split is half uploaded

    client.meta.events.register("before-send.s3.UploadPart", stop_on_third_part)
    with pytest.raises(ObjectStoreError) as failure:
        stage(big_source, "s3://feeds/abalone.csv", store)
    assert not isinstance(failure.value, objectstore.PermanentError), "a dead endpoint is worth a retry"

    endpoint.start()
    client.meta.events.unregister("before-send.s3.UploadPart", stop_on_third_part)
    written = keys(client)
    assert not [key for key in written if key.endswith("manifest.json")], "no dataset is visible"
    assert not [key for key in written if key.endswith("train.csv")], "the interrupted upload left no object"

    staged = stage(big_source, "s3://feeds/abalone.csv", store)  # the task's retry
    prefix = f"nightly/datasets/abalone/{staged.dataset_id}/"
    assert staged.written
    assert keys(client, prefix) == [
        f"{prefix}{name}" for name in ("manifest.json", "test.csv", "train.csv", "validation.csv")
    ]
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}manifest.json")["Body"].read())
    for entry in manifest["splits"].values():
        body = client.get_object(Bucket=BUCKET, Key=f"nightly/{entry['key']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] and len(body) == entry["bytes"]
    assert manifest["splits"]["train"]["bytes"] > 3 * objectstore.PART_SIZE, "the train split went up in parts"
    assert sum(entry["rows"] for entry in manifest["splits"].values()) == 480_000


def test_two_stagers_racing_on_the_same_data_end_with_one_identical_dataset(endpoint, big_source):
    results: list[object] = [None, None]

    def run(index: int) -> None:
        client = endpoint.client()
        try:
            results[index] = stage(
                big_source, f"s3://feeds/copy-{index}.csv", open_store(f"s3://{BUCKET}/race", lambda: client)
            )
        except Exception as exc:  # reported below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = results
    assert not isinstance(first, Exception) and not isinstance(second, Exception), results
    assert first.dataset_id == second.dataset_id and first.manifest_uri == second.manifest_uri
    client = endpoint.client()
    prefix = f"race/datasets/abalone/{first.dataset_id}/"
    assert len(keys(client, "race/datasets/abalone/")) == 4 == len(keys(client, prefix))
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}manifest.json")["Body"].read())
    for entry in manifest["splits"].values():
        open_store(f"s3://{BUCKET}/race", lambda: client).verify(entry["key"], entry["sha256"], entry["bytes"])


def test_a_staged_object_changed_afterwards_is_refused_and_a_wrong_one_is_never_taken(endpoint):
    client = endpoint.client()
    store = open_store(f"s3://{BUCKET}/altered", lambda: client)
    payload = b"".join(f"M,0.{i + 100},0.3,0.1,0.5,0.2,0.1,0.15,{1 + i % 20}\n".encode() for i in range(400))
    staged = stage(payload, "src.csv", store)
    key = f"altered/datasets/abalone/{staged.dataset_id}/test.csv"
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=body.replace(b"M,", b"F,", 1))  # same size
    with pytest.raises(ContentMismatch):
        store.verify(f"datasets/abalone/{staged.dataset_id}/test.csv", hashlib.sha256(body).hexdigest(), len(body))
    client.put_object(Bucket=BUCKET, Key=key, Body=body + b"F,0.5,0.4,0.1,0.6,0.2,0.1,0.2,9\n")
    with pytest.raises(StagingError, match="changed after staging"):
        stage(payload, "src.csv", store)


def test_verification_after_upload_catches_what_the_store_reports_wrongly(endpoint, tmp_path, monkeypatch):
    client = endpoint.client()
    store = open_store(f"s3://{BUCKET}/verify", lambda: client)
    path = tmp_path / "object"
    path.write_bytes(b"x" * (11 << 20))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    first = store.put_file("big", path, digest)
    assert first.written and first.checksum.endswith("-3"), "three 5 MiB parts"
    again = store.put_file("big", path, digest)
    assert not again.written and again.checksum == first.checksum, "the same content already there: success"
    other = tmp_path / "other"
    other.write_bytes(b"y" * (11 << 20))
    with pytest.raises(ContentMismatch):
        store.put_file("big", other, hashlib.sha256(other.read_bytes()).hexdigest())
    # A store that keeps something else than was sent is caught by the check after the upload.
    real_head = client.head_object
    monkeypatch.setattr(client, "head_object", lambda **kw: {**real_head(**kw), "ContentLength": 1})
    with pytest.raises(ContentMismatch, match="has 1 bytes"):
        store.put_file("fresh", path, digest)


def test_a_reused_dataset_is_checked_against_the_checksum_the_store_keeps(endpoint, big_source, monkeypatch):
    client = endpoint.client()
    store = open_store(f"s3://{BUCKET}/kept", lambda: client)
    staged = stage(big_source, "src.csv", store)
    manifest = json.loads(
        client.get_object(Bucket=BUCKET, Key=f"kept/datasets/abalone/{staged.dataset_id}/manifest.json")["Body"].read()
    )
    assert re.fullmatch(r".+-[2-9]", manifest["splits"]["train"]["store_checksum"]), "recorded at upload"
    assert stage(big_source, "src.csv", store).dataset_id == staged.dataset_id, "unchanged: reused"
    # Same size, other bytes: S3 would report another checksum for the object.
    real_head = client.head_object
    monkeypatch.setattr(client, "head_object", lambda **kw: {**real_head(**kw), "ChecksumSHA256": "AAAA-4"})
    with pytest.raises(StagingError, match="changed after staging"):
        stage(big_source, "src.csv", store)


class _FakeS3:
    """A boundary fake for the answers moto does not give: 409 on completion, a task killed mid-upload."""

    def __init__(self, fail_with: BaseException) -> None:
        self.fail_with = fail_with
        self.aborted = []

    def head_object(self, **kwargs):
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "404"}}, "HeadObject")

    def create_multipart_upload(self, **kwargs):
        return {"UploadId": "u1"}

    def upload_part(self, **kwargs):
        if kwargs["PartNumber"] == 2:
            raise self.fail_with
        return {"ETag": "e"}

    def complete_multipart_upload(self, **kwargs):
        raise AssertionError("not reached")

    def abort_multipart_upload(self, **kwargs):
        self.aborted.append(kwargs["UploadId"])

    def put_object(self, **kwargs):
        raise self.fail_with


class _Killed(BaseException):
    """What Airflow raises in a task it terminates or times out (not an Exception)."""


def test_a_killed_upload_is_aborted_and_a_conflicting_write_is_retried_not_taken(tmp_path):
    from botocore.exceptions import ClientError

    path = tmp_path / "object"
    path.write_bytes(b"x" * (11 << 20))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    fake = _FakeS3(_Killed())
    with pytest.raises(_Killed):
        objectstore.S3Store(BUCKET, "", fake).put_file("big", path, digest)
    assert fake.aborted == ["u1"], "the parts of a killed upload are dropped"

    conflict = ClientError({"Error": {"Code": "ConditionalRequestConflict"}}, "PutObject")
    store = objectstore.S3Store(BUCKET, "", _FakeS3(conflict))
    with pytest.raises(ObjectStoreError) as raised:
        store.put_if_absent("manifest.json", b"{}")
    assert not isinstance(raised.value, objectstore.PermanentError), "409: a concurrent write in flight, retry"
