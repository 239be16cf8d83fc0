from __future__ import annotations

import hashlib
import json

import pytest

from abalone_pipeline.objectstore import LocalStore
from abalone_pipeline.staging import COLUMNS, SplitSpec, StagingError, parse_rows, split_rows, stage


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def test_real_file_parses_to_4177_rows(abalone_bytes):
    rows = parse_rows(abalone_bytes, "abalone.data")
    assert len(rows) == 4177 and all(len(row) == len(COLUMNS) for row in rows)


def test_a_header_row_is_accepted(abalone_bytes):
    with_header = b",".join(c.encode() for c in COLUMNS) + b"\n" + abalone_bytes
    assert parse_rows(with_header, "x") == parse_rows(abalone_bytes, "x")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"M,0.4,0.3,0.1,0.5,0.2,0.1,0.15", "expected 9 columns"),
        (b"M,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7,1", "expected 9 columns"),
        (b"X,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7", "Sex must be one of M, F, I"),
        (b"M,abc,0.3,0.1,0.5,0.2,0.1,0.15,7", "Length must be numeric"),
        (b"M,0.4,nan,0.1,0.5,0.2,0.1,0.15,7", "Diameter must be finite"),
        (b"M,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7.5", "Rings must be a whole number"),
    ],
)
def test_bad_rows_are_named_with_their_line(line, message):
    payload = b"F,0.5,0.4,0.1,0.6,0.2,0.1,0.2,9\n" + line + b"\n"
    with pytest.raises(StagingError, match=rf"src line 2: .*{message}|src line 2: {message}"):
        parse_rows(payload, "src")


def test_empty_and_binary_sources_are_rejected():
    with pytest.raises(StagingError, match="no data rows"):
        parse_rows(b"\n\n", "empty.csv")
    with pytest.raises(StagingError, match="not UTF-8"):
        parse_rows(b"\xff\xfe\x00", "binary.csv")


def test_split_is_deterministic_disjoint_and_complete(abalone_bytes):
    rows = parse_rows(abalone_bytes, "x")
    first, second = split_rows(rows, SplitSpec()), split_rows(rows, SplitSpec())
    assert first == second
    sizes = {name: len(part) for name, part in first.items()}
    assert sizes == {"test": 835, "validation": 418, "train": 2924}
    assert sorted(row for part in first.values() for row in part) == sorted(rows)
    assert split_rows(rows, SplitSpec(seed=7))["test"] != first["test"]


def test_stage_writes_splits_and_a_manifest_that_vouches_for_them(store, abalone_bytes):
    staged = stage(abalone_bytes, "file:///abalone.data", store)
    prefix = f"datasets/abalone/{staged.dataset_id}"
    manifest = json.loads(store.get(f"{prefix}/manifest.json"))
    assert staged.written and staged.manifest_uri == store.uri(f"{prefix}/manifest.json")
    assert manifest["source_sha256"] == hashlib.sha256(abalone_bytes).hexdigest()
    assert manifest["columns"] == list(COLUMNS)
    for split, entry in manifest["splits"].items():
        body = store.get(entry["key"])
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert body.count(b"\n") == entry["rows"] + 1  # the header
        assert entry["uri"] == store.uri(f"{prefix}/{split}.csv")
    assert sum(e["rows"] for e in manifest["splits"].values()) == 4177


def test_same_data_lands_at_the_same_prefix_and_is_not_rewritten(store, abalone_bytes):
    first = stage(abalone_bytes, "file:///a.data", store)
    manifest_path = store.root / f"datasets/abalone/{first.dataset_id}/manifest.json"
    before = manifest_path.stat().st_mtime_ns
    second = stage(abalone_bytes.replace(b"\n", b"\r\n"), "s3://bucket/b.csv", store)
    assert second.dataset_id == first.dataset_id and not second.written
    assert manifest_path.stat().st_mtime_ns == before
    assert json.loads(manifest_path.read_bytes())["source_uri"] == "file:///a.data"


def test_different_data_or_split_gets_a_different_prefix(store, abalone_bytes):
    base = stage(abalone_bytes, "a", store).dataset_id
    assert stage(abalone_bytes, "a", store, SplitSpec(seed=1)).dataset_id != base
    fewer = b"\n".join(abalone_bytes.splitlines()[:-1]) + b"\n"
    assert stage(fewer, "a", store).dataset_id != base


def test_bad_input_writes_nothing(store):
    with pytest.raises(StagingError):
        stage(b"M,1,2\n", "bad.csv", store)
    assert not store.root.exists() or not any(store.root.rglob("*"))


def test_a_split_changed_by_hand_is_detected(store, abalone_bytes):
    staged = stage(abalone_bytes, "a", store)
    manifest_path = store.root / f"datasets/abalone/{staged.dataset_id}/manifest.json"
    manifest_path.unlink()  # as if the first attempt died before committing the manifest
    (store.root / f"datasets/abalone/{staged.dataset_id}/test.csv").write_bytes(b"tampered")
    with pytest.raises(StagingError, match="different content"):
        stage(abalone_bytes, "a", store)
    assert not manifest_path.exists()
