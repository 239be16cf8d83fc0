from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

from abalone_trainer.data import DataError, load_manifest, load_staged, read_uri, to_features


def test_load_staged_reads_every_split(small_manifest_uri):
    data = load_staged(small_manifest_uri)
    sizes = {split: len(frame) for split, frame in data.frames.items()}
    assert sizes == {split: entry["rows"] for split, entry in data.manifest["splits"].items()}
    assert sum(sizes.values()) == 400 and sizes["test"] > sizes["validation"] > 0
    features = to_features(data.frames["test"])
    assert features["Sex"].dtype == object and features["Length"].shape == (sizes["test"], 1)


def test_a_changed_split_is_refused(small_manifest_uri, tmp_path):
    manifest = load_manifest(small_manifest_uri)
    copy = tmp_path / "test.csv"
    copy.write_bytes(read_uri(manifest["splits"]["test"]["uri"]).replace(b"M,", b"F,", 1))
    manifest["splits"]["test"]["uri"] = copy.as_uri()
    tampered = tmp_path / "manifest.json"
    tampered.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="changed after staging"):
        load_staged(tampered.as_uri(), splits=("test",))


def test_missing_or_malformed_manifests_are_named(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        load_manifest((tmp_path / "nope.json").as_uri())
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest((tmp_path / "bad.json").as_uri())
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(DataError, match="re-run the stage task"):
        load_manifest((tmp_path / "empty.json").as_uri())
    with pytest.raises(DataError, match="unsupported URI scheme"):
        read_uri("gs://bucket/x")


def test_plain_paths_work_too(small_manifest_uri):
    assert load_manifest(str(Path(urlparse(small_manifest_uri).path)))["dataset_id"]
