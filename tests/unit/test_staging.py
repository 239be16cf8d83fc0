from __future__ import annotations

import hashlib
import json

import pytest

from abalone_pipeline.objectstore import LocalStore
from abalone_pipeline.staging import COLUMNS, SplitSpec, StagingError, split_of, split_rows, stage
from abalone_pipeline.validation import ValidationPolicy, validate


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


GOOD = b"F,0.5,0.4,0.1,0.6,0.2,0.1,0.2,9\n"
HEADER = b"Sex,Length,Diameter,Height,Whole weight,Shucked weight,Viscera weight,Shell weight,Rings\n"


def rows_of(count: int) -> bytes:
    """``count`` distinct valid rows (exact duplicates are quarantined)."""
    return b"".join(f"M,0.{i + 100},0.3,0.1,0.5,0.2,0.1,0.15,{1 + i % 20}\n".encode() for i in range(count))


def test_the_real_file_quarantines_its_two_zero_heights(abalone_bytes):
    validated = validate(abalone_bytes, "abalone.data")
    assert validated.data_rows == 4177 and len(validated.rows) == 4175
    assert [(q["line"], q["rule"]) for q in validated.quarantine] == [
        (1258, "Height:greater_than"),
        (3997, "Height:greater_than"),
    ]
    assert validated.warnings == {"part_heavier_than_whole": 4}, "kept, but counted"


def test_a_header_bom_and_crlf_are_read_as_the_plain_file(abalone_bytes):
    plain = validate(abalone_bytes, "x").rows
    variant = b"\xef\xbb\xbf" + (HEADER + abalone_bytes).replace(b"\n", b"\r\n")
    validated = validate(variant, "x")
    assert validated.rows == plain
    assert len(validated.notes) == 3, validated.notes  # BOM, CRLF, header


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "is empty"),
        (b"\n \n", "is empty"),
        (HEADER, "has a header but no data rows"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"M,0.4,0.3\x00,0.1\n", "NUL bytes"),
        (HEADER.replace(b"Rings", b"Age") + GOOD, "renamed columns: 'Age' where 'Rings' was expected"),
        (HEADER.replace(b",Rings", b"") + GOOD, "the header has 8 columns"),
        (b"Length,Sex,Diameter,Height,Whole_weight,Shucked_weight,Viscera_weight,Shell_weight,Rings\n", "reordered"),
        (b"M,0.4,0.3,0.1,0.5,0.2,0.1,0.15\n" + GOOD, "line 1: expected 9 columns"),
    ],
)
def test_file_level_problems_refuse_the_source(payload, message):
    with pytest.raises(StagingError, match=message):
        validate(payload, "src.csv")


@pytest.mark.parametrize(
    ("line", "rule", "reason"),
    [
        (b"M,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7,1", "column_count", "has 10 fields"),
        (b"X,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7", "Sex:isin", "Sex must be one of M, F, I (found 'X')"),
        (b"M,?,0.3,0.1,0.5,0.2,0.1,0.15,7", "Length:not_numeric", "Length is not a number (found '?')"),
        (b"M,0.4,,0.1,0.5,0.2,0.1,0.15,7", "Diameter:not_numeric", "Diameter is not a number (found '')"),
        (b"M,0.4,nan,0.1,0.5,0.2,0.1,0.15,7", "Diameter:not_numeric", "(found 'nan')"),
        (b"M,0.4,0.3,inf,0.5,0.2,0.1,0.15,7", "Height:finite", "Height must be finite (found 'inf')"),
        (b"M,0.4,0.3,0,0.5,0.2,0.1,0.15,7", "Height:greater_than", "Height must be positive (found '0')"),
        (b"M,0.4,0.3,0.1,-0.5,0.2,0.1,0.15,7", "Whole_weight:greater_than", "must be positive"),
        (b"M,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7.5", "Rings:whole_number", "Rings must be a whole number"),
        (b"M,0.4,0.3,0.1,0.5,0.2,0.1,0.15,0", "Rings:in_range", "Rings must be between 1 and 50"),
        (b"F,0.5,0.4,0.1,0.6,0.2,0.1,0.2,9", "duplicate", "exact duplicate of line 1"),
    ],
)
def test_bad_rows_are_quarantined_with_their_line_rule_and_reason(line, rule, reason):
    payload = GOOD + line + b"\n" + rows_of(200)
    validated = validate(payload, "src", ValidationPolicy(max_quarantine_fraction=0.01))
    (entry,) = validated.quarantine
    assert entry["line"] == 2 and entry["rule"] == rule and reason in entry["reason"]
    assert len(validated.rows) == 201 and validated.counts == {rule: 1}


def test_too_many_bad_rows_refuse_the_source_naming_rules_and_counts():
    payload = rows_of(50) + b"X,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7\n" * 2 + b"M,?,0.3,0.1,0.5,0.2,0.1,0.15,7\n"
    with pytest.raises(
        StagingError,
        match=r"src: 3 of 53 rows \(5\.7%\) .* more than the 1\.0% allowed: "
        r"Sex:isin \(2\), Length:not_numeric \(1\)\. First: line 51",
    ):
        validate(payload, "src")
    assert len(validate(payload, "src", ValidationPolicy(0.1)).quarantine) == 3


def test_parts_heavier_than_the_whole_are_kept_with_a_warning():
    heavy = b"M,0.4,0.3,0.1,0.5,0.6,0.1,0.15,7\n"  # shucked 0.6 > whole 0.5
    validated = validate(heavy + rows_of(10), "src")
    assert len(validated.rows) == 11 and validated.warnings == {"part_heavier_than_whole": 1}


def test_split_is_per_row_deterministic_disjoint_and_complete(abalone_bytes):
    rows = validate(abalone_bytes, "x").rows
    first = split_rows(rows, SplitSpec())
    assert first == split_rows(rows, SplitSpec())
    sizes = {name: len(part) for name, part in first.items()}
    assert abs(sizes["test"] - 0.2 * len(rows)) < 60 and abs(sizes["validation"] - 0.1 * len(rows)) < 50
    assert sorted(row for part in first.values() for row in part) == sorted(rows)
    assert split_rows(rows, SplitSpec(seed=7))["test"] != first["test"]
    # A row keeps its split when the data grows or loses other rows.
    grown = split_rows([*rows[:1000], ["M", "0.1", "0.1", "0.1", "0.1", "0.01", "0.01", "0.01", "3"]], SplitSpec())
    for split, part in grown.items():
        assert all(split_of(row, SplitSpec()) == split for row in part)
        assert set(map(tuple, part)) - {("M", "0.1", "0.1", "0.1", "0.1", "0.01", "0.01", "0.01", "3")} <= set(
            map(tuple, first[split])
        )


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
    assert sum(e["rows"] for e in manifest["splits"].values()) == 4175
    assert manifest["validation"]["quarantined_rows"] == 2 and manifest["quarantine"]["rows"] == 2
    quarantine = store.get(manifest["quarantine"]["key"]).decode()
    assert quarantine.splitlines()[0] == "line,rule,reason,fields"
    assert quarantine.splitlines()[1].startswith("1258,Height:greater_than,Height must be positive (found '0')")
    assert hashlib.sha256(quarantine.encode()).hexdigest() == manifest["quarantine"]["sha256"]
    assert staged.to_xcom()["quarantine_uri"] == manifest["quarantine"]["uri"]


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
    bad_row = b"X,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7\n"
    assert stage(abalone_bytes + bad_row, "a", store).dataset_id != base, "the quarantine is part of the dataset"


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
