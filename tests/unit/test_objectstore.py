from __future__ import annotations

import threading

import pytest

from abalone_pipeline.objectstore import LocalStore, MissingObject, ObjectStoreError, open_store
from abalone_pipeline.staging.sources import read_source


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
