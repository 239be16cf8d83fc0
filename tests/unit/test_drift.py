"""Dataset statistics and drift against the previous staged dataset."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from abalone_pipeline.config import Settings
from abalone_pipeline.drift import DriftThresholds, Moments, compare
from abalone_pipeline.objectstore import LocalStore
from abalone_pipeline.staging import stage
from abalone_pipeline.tasks import dataset_drift


def statistics(rows: list[list[str]]) -> dict:
    """The statistics of rows given as fields, in one block."""
    moments = Moments()
    moments.add(np.array([row[1:] for row in rows], dtype=np.float64).T, Counter(row[0] for row in rows))
    return moments.result()


def valid_rows(payload: bytes) -> list[list[str]]:
    """The rows of the bundled file that staging keeps (the two Height 0 rows dropped), as fields."""
    rows = [line.split(",") for line in payload.decode().splitlines()]
    return [row for row in rows if float(row[3]) > 0]


def test_streamed_statistics_match_a_direct_computation(tmp_path, abalone_bytes):
    staged = stage(abalone_bytes, "x", LocalStore(tmp_path))
    direct = statistics(valid_rows(abalone_bytes))
    assert staged.statistics["rows"] == direct["rows"] == 4175
    for name, column in direct["columns"].items():
        assert staged.statistics["columns"][name] == pytest.approx(column, rel=1e-9), name
    assert staged.statistics["sex_shares"] == pytest.approx(direct["sex_shares"])
    assert staged.statistics["rings_shares"] == pytest.approx(direct["rings_shares"])
    rings = [float(row[-1]) for row in valid_rows(abalone_bytes)]
    mean = sum(rings) / len(rings)
    assert direct["columns"]["Rings"]["std"] == pytest.approx((sum((r - mean) ** 2 for r in rings) / 4174) ** 0.5)


def test_statistics_of_the_real_file(abalone_bytes):
    stats = statistics(valid_rows(abalone_bytes))
    assert stats["rows"] == 4175
    assert stats["columns"]["Rings"]["mean"] == pytest.approx(9.93, abs=0.01)
    assert stats["columns"]["Height"]["min"] > 0, "the zero heights were quarantined"
    assert sum(stats["sex_shares"].values()) == pytest.approx(1)
    assert sum(stats["rings_shares"].values()) == pytest.approx(1)


def test_drift_warns_past_the_thresholds_only(abalone_bytes):
    rows = valid_rows(abalone_bytes)
    before = statistics(rows)
    assert compare(before, before, DriftThresholds())["warnings"] == []
    old_only = [row for row in rows if int(row[-1]) >= 10]  # a feed that lost its young abalone
    result = compare(before, statistics(old_only), DriftThresholds())
    assert result["columns"]["Rings"]["mean_shift_sd"] > 0.2
    assert any(w.startswith("Rings mean moved by +") for w in result["warnings"])
    assert any("share of rings<=7 moved by -" in w for w in result["warnings"])
    assert compare(before, statistics(old_only), DriftThresholds(10, 1))["warnings"] == []


def test_dataset_drift_reads_both_manifests(tmp_path, abalone_bytes):
    store = LocalStore(tmp_path)
    settings = Settings.from_env({"ABALONE_OBJECT_STORE_URI": tmp_path.as_uri()})
    first = stage(abalone_bytes, "a", store)
    young_removed = b"".join(line + b"\n" for line in abalone_bytes.splitlines() if int(line.split(b",")[-1]) > 7)
    second = stage(young_removed, "b", store)
    result = dataset_drift(settings, second.to_xcom(), first.manifest_uri)
    assert result["against"] == first.dataset_id and result["rows"]["previous"] == 4175
    assert result["warnings"], "dropping every abalone of 7 rings or fewer moves the label's distribution"
    assert json.dumps(result)
    current = first.to_xcom()
    assert dataset_drift(settings, current, None)["reason"] == "no earlier staged dataset"
    assert dataset_drift(settings, current, first.manifest_uri)["against"] is None
    assert "unreadable" in dataset_drift(settings, current, (tmp_path / "gone.json").as_uri())["reason"]
    # A dataset staged again is not rewritten; its statistics come from the manifest already there.
    assert stage(abalone_bytes, "c", store).statistics == first.statistics is not None
