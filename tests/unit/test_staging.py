from __future__ import annotations

import csv
import hashlib
import io
import json
import random

import pytest

from abalone_pipeline.objectstore import LocalStore
from abalone_pipeline.staging import COLUMNS, SplitSpec, StagingError, row_keys, split_of, stage
from abalone_pipeline.staging import scan as staging_scan
from abalone_pipeline.staging import spool as staging_spool
from abalone_pipeline.staging import workers as staging_workers
from abalone_pipeline.validation import SourceRejected, ValidationPolicy, check_rows


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


GOOD = b"F,0.5,0.4,0.1,0.6,0.2,0.1,0.2,9\n"
HEADER = b"Sex,Length,Diameter,Height,Whole weight,Shucked weight,Viscera weight,Shell weight,Rings\n"


def rows_of(count: int) -> bytes:
    """``count`` distinct valid rows (exact duplicates are quarantined)."""
    return b"".join(f"M,0.{i + 100},0.3,0.1,0.5,0.2,0.1,0.15,{1 + i % 20}\n".encode() for i in range(count))


def manifest_of(store, staged) -> dict:
    return json.loads(store.get(staged.manifest_uri.removeprefix(store.root_uri + "/")))


def quarantined(store, staged) -> list[dict]:
    manifest = manifest_of(store, staged)
    if not manifest["quarantine"]:
        return []
    return list(csv.DictReader(io.StringIO(store.get(manifest["quarantine"]["key"]).decode())))


def split_rows(store, staged) -> dict[str, list[bytes]]:
    """Each split's rows as canonical lines, header dropped."""
    manifest = manifest_of(store, staged)
    return {name: store.get(entry["key"]).splitlines()[1:] for name, entry in manifest["splits"].items()}


def test_the_real_file_quarantines_its_two_zero_heights(store, abalone_bytes):
    staged = stage(abalone_bytes, "abalone.data", store)
    assert staged.validation["data_rows"] == 4177 and staged.validation["valid_rows"] == 4175
    assert [(q["line"], q["rule"]) for q in quarantined(store, staged)] == [
        ("1258", "Height:greater_than"),
        ("3997", "Height:greater_than"),
    ]
    assert staged.validation["warnings"] == {"part_heavier_than_whole": 4}, "kept, but counted"


def test_a_header_bom_and_crlf_are_read_as_the_plain_file(store, abalone_bytes):
    plain = stage(abalone_bytes, "x", store)
    variant = stage(b"\xef\xbb\xbf" + (HEADER + abalone_bytes).replace(b"\n", b"\r\n"), "x", store)
    assert split_rows(store, variant) == split_rows(store, plain)
    assert [q["line"] for q in quarantined(store, variant)] == ["1259", "3998"], "lines as an editor shows them"
    assert len(variant.validation["notes"]) == 3, variant.validation["notes"]  # BOM, CRLF, header


def test_spaces_quotes_and_blank_lines_are_normalised(store):
    plain = stage(rows_of(300), "x", store)
    lines = rows_of(300).splitlines()
    lines[5] = b' M , 0.105,0.3, 0.1,0.5,"0.2",0.1,0.15,6'
    messy = b"\n\n".join(lines) + b"\n"
    assert stage(messy, "x", store).dataset_id == plain.dataset_id


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
def test_file_level_problems_refuse_the_source(store, payload, message):
    with pytest.raises(StagingError, match=message):
        stage(payload, "src.csv", store)
    assert not store.root.exists() or not any(store.root.rglob("*")), "nothing is written"


def resaved(abalone_bytes: bytes, delimiter: str = ",", decimal: str = ".", header: list[str] | None = None) -> bytes:
    """The real file as a spreadsheet saves it with another delimiter or decimal mark (csv quotes as needed)."""
    rows = [[value.replace(".", decimal) for value in line.split(",")] for line in abalone_bytes.decode().splitlines()]
    text = io.StringIO()
    csv.writer(text, delimiter=delimiter, lineterminator="\n").writerows([header, *rows] if header else rows)
    return text.getvalue().encode()


@pytest.mark.parametrize(
    ("delimiter", "decimal", "header", "message"),
    [
        (";", ".", None, r"line 1: 1 field where 9 were expected: wrong delimiter\? \(looks like ';'-separated\)"),
        (";", ".", list(COLUMNS), r"line 1: 1 field where 9 were expected: wrong delimiter\? \(looks like ';'-sep"),
        (";", ",", None, r"line 1: 8 fields where 9 were expected: wrong delimiter\? \(looks like ';'-separated\)"),
        ("\t", ".", None, r"line 1: 1 field where 9 were expected: wrong delimiter\? \(looks like tab-separated\)"),
        (
            ",",
            ",",
            None,
            r"line 1: the file has no header \(its first row is data\) and the row's fields cannot be read: 9 fields "
            r"found \(9 expected\); '0,455', '0,365', '0,095' and 4 more are not numbers \(decimal commas\?",
        ),
    ],
)
def test_the_real_file_resaved_with_another_delimiter_or_decimal_mark_is_refused_for_what_it_is(
    store, abalone_bytes, delimiter, decimal, header, message
):
    with pytest.raises(StagingError, match=message) as refused:
        stage(resaved(abalone_bytes, delimiter, decimal, header), "abalone.csv", store)
    assert "the header" not in str(refused.value) and "renamed" not in str(refused.value), "a data row is no header"


SHORT_NAMES = ["Sex", "Length", "Diam", "Height", "Whole", "Shucked", "Viscera", "Shell", "Rings"]  # abalone.names


def test_the_uci_short_names_are_read_and_a_reordering_of_them_is_named(store, abalone_bytes):
    with_short_names = stage(resaved(abalone_bytes, header=SHORT_NAMES), "x", store)
    assert split_rows(store, with_short_names) == split_rows(store, stage(abalone_bytes, "x", store))
    order = [0, 1, 2, 3, 5, 4, 6, 7, 8]  # Shucked before Whole, in the header and in every row
    reordered = b"".join(b",".join(line.split(b",")[i] for i in order) + b"\n" for line in abalone_bytes.splitlines())
    header = ",".join(SHORT_NAMES[i] for i in order).encode() + b"\n"
    with pytest.raises(
        StagingError,
        match=r"^x: the header's columns are reordered \(Shucked, Whole out of place\): Sex, Length, Diam, Height, "
        r"Shucked, Whole, Viscera, Shell, Rings\. Columns are read by position: write them in the order Sex, Length, "
        r"Diameter, Height, Whole_weight, Shucked_weight, Viscera_weight, Shell_weight, Rings$",
    ):
        stage(header + reordered, "x", store)
    with pytest.raises(
        StagingError, match=r"unknown or renamed: 'Age'; missing: Rings; out of place: Shucked, Whole\. Expected Sex,"
    ):
        stage(header.replace(b"Rings", b"Age") + reordered, "x", store)


def test_a_first_row_with_one_unreadable_number_is_quarantined_not_taken_for_a_header(store):
    staged = stage(b"M,?,0.3,0.1,0.5,0.2,0.1,0.15,7\n" + rows_of(200), "src", store, policy=ValidationPolicy(0.01))
    assert [(q["line"], q["rule"]) for q in quarantined(store, staged)] == [("1", "Length:not_numeric")]


def test_a_refusal_by_validation_reaches_callers_as_a_staging_error_caused_by_it(store):
    with pytest.raises(StagingError, match="line 2 contains NUL bytes") as refused:
        stage(GOOD + b"M,0.4\x00\n", "src", store)
    assert isinstance(refused.value.__cause__, SourceRejected)


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
def test_bad_rows_are_quarantined_with_their_line_rule_and_reason(store, line, rule, reason):
    payload = GOOD + line + b"\n" + rows_of(200)
    staged = stage(payload, "src", store, policy=ValidationPolicy(max_quarantine_fraction=0.01))
    (entry,) = quarantined(store, staged)
    assert entry["line"] == "2" and entry["rule"] == rule and reason in entry["reason"]
    assert staged.validation["valid_rows"] == 201 and staged.validation["quarantined_by_rule"] == {rule: 1}
    assert sum(staged.rows.values()) == 201


def test_too_many_bad_rows_refuse_the_source_naming_rules_and_counts(store):
    payload = rows_of(50) + b"X,0.4,0.3,0.1,0.5,0.2,0.1,0.15,7\n" * 2 + b"M,?,0.3,0.1,0.5,0.2,0.1,0.15,7\n"
    with pytest.raises(
        StagingError,
        match=r"src: 3 of 53 rows \(5\.7%\) .* more than the 1\.0% allowed: "
        r"Sex:isin \(2\), Length:not_numeric \(1\)\. First: line 51",
    ):
        stage(payload, "src", store)
    assert not store.root.exists() or not any(store.root.rglob("*"))
    assert len(quarantined(store, stage(payload, "src", store, policy=ValidationPolicy(0.1)))) == 3


def test_a_share_just_over_the_limit_shows_the_digits_that_tell_it_from_the_limit(store, abalone_bytes):
    lines = abalone_bytes.splitlines()
    for index in range(0, 410, 10):  # 41 rows with an unknown Sex, besides the file's own two zero heights
        lines[index] = b"X" + lines[index][1:]
    with pytest.raises(StagingError, match=r": 43 of 4177 rows \(1\.03%\) break .* more than the 1\.00% allowed"):
        stage(b"\n".join(lines) + b"\n", "abalone.data", store)


def test_duplicates_are_counted_against_the_share_too(store):
    payload = rows_of(50) + rows_of(3)
    with pytest.raises(
        StagingError, match=r"3 of 53 rows .* duplicate \(3\)\. First: line 51: exact duplicate of line 1"
    ):
        stage(payload, "src", store)


def test_parts_heavier_than_the_whole_are_kept_with_a_warning(store):
    heavy = b"M,0.4,0.3,0.1,0.5,0.6,0.1,0.15,7\n"  # shucked 0.6 > whole 0.5
    staged = stage(heavy + rows_of(10), "src", store, SplitSpec(test_fraction=0.3, validation_fraction=0.3))
    assert staged.validation["valid_rows"] == 11
    assert staged.validation["warnings"] == {"part_heavier_than_whole": 1}


def _siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4, written out from the paper, to pin what pandas computes."""
    mask = (1 << 64) - 1

    def rotl(x, b):
        return ((x << b) | (x >> (64 - b))) & mask

    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rounds(n):
        for _ in range(n):
            v[0] = (v[0] + v[1]) & mask
            v[1] = rotl(v[1], 13) ^ v[0]
            v[0] = rotl(v[0], 32)
            v[2] = (v[2] + v[3]) & mask
            v[3] = rotl(v[3], 16) ^ v[2]
            v[0] = (v[0] + v[3]) & mask
            v[3] = rotl(v[3], 21) ^ v[0]
            v[2] = (v[2] + v[1]) & mask
            v[1] = rotl(v[1], 17) ^ v[2]
            v[2] = rotl(v[2], 32)

    tail = len(data) % 8
    for offset in range(0, len(data) - tail, 8):
        m = int.from_bytes(data[offset : offset + 8], "little")
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    m = ((len(data) & 0xFF) << 56) | int.from_bytes(data[len(data) - tail :], "little")
    v[3] ^= m
    rounds(2)
    v[0] ^= m
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def _splitmix_finaliser(x: int) -> int:
    mask = (1 << 64) - 1
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_row_keys_are_the_documented_keyed_siphash():
    spec = SplitSpec()
    rows = [b"M,0.455,0.365,0.095,0.514,0.2245,0.101,0.15,15", b"I,0.43,0.34,0.11,0.428,0.2065,0.086,0.115,8", b""]
    expected = [_splitmix_finaliser(_siphash24(spec.hash_key.encode(), row)) for row in rows]
    assert row_keys(rows, spec).tolist() == expected


def test_split_is_per_row_deterministic_disjoint_and_complete(store, abalone_bytes):
    staged = stage(abalone_bytes, "x", store)
    first = split_rows(store, staged)
    sizes = {name: len(part) for name, part in first.items()}
    assert abs(sizes["test"] - 0.2 * 4175) < 100 and abs(sizes["validation"] - 0.1 * 4175) < 60
    assert sum(sizes.values()) == 4175 and len({row for part in first.values() for row in part}) == 4175
    for split, part in first.items():
        assert all(split_of(row, SplitSpec()) == split for row in part)
        keys = row_keys(part, SplitSpec())
        assert (keys[1:] >= keys[:-1]).all(), "rows are in ascending key order"
    assert split_rows(store, stage(abalone_bytes, "x", store, SplitSpec(seed=7)))["test"] != first["test"]
    # A row keeps its split when the data grows or loses other rows.
    lines = abalone_bytes.splitlines()
    new_row = b"M,0.1,0.1,0.1,0.1,0.01,0.01,0.01,3"
    grown = split_rows(store, stage(b"\n".join([*lines[:1000], new_row]) + b"\n", "x", store))
    for split, part in grown.items():
        assert set(part) - {new_row} <= set(first[split])


def test_the_dataset_does_not_depend_on_row_order_or_block_size(store, abalone_bytes, monkeypatch):
    base = stage(abalone_bytes, "x", store).dataset_id
    lines = abalone_bytes.splitlines()
    random.Random(1).shuffle(lines)
    shuffled = b"\n".join(lines) + b"\n"
    monkeypatch.setattr(staging_scan, "BLOCK_BYTES", 4096)  # many blocks, many partitions
    monkeypatch.setattr(staging_spool, "PARTITION_BYTES", 8192)
    chunks = [shuffled[i : i + 1000] for i in range(0, len(shuffled), 1000)]
    streamed = stage(chunks, "x", store, size=len(shuffled))
    assert streamed.dataset_id != base, "the quarantine names other lines: part of the dataset"
    assert split_rows(store, streamed) == split_rows(store, stage(abalone_bytes, "x", store))


def test_duplicates_are_found_across_blocks_and_partitions(store, monkeypatch):
    monkeypatch.setattr(staging_scan, "BLOCK_BYTES", 2048)
    monkeypatch.setattr(staging_spool, "PARTITION_BYTES", 1024)
    blocks = []
    monkeypatch.setattr(staging_scan, "check_rows", lambda block, *a: blocks.append(block) or check_rows(block, *a))
    payload = rows_of(400) + rows_of(2)
    staged = stage([payload], "x", store, policy=ValidationPolicy(0.01), size=len(payload), workers=1)
    assert len(blocks) > 5 and max(map(len, blocks)) <= 2048, "one big chunk is cut into blocks"
    assert [(q["line"], q["reason"]) for q in quarantined(store, staged)] == [
        ("401", "exact duplicate of line 1"),
        ("402", "exact duplicate of line 2"),
    ]
    assert staged.statistics["rows"] == 400 and sum(staged.rows.values()) == 400


@pytest.mark.parametrize("order", ["as read", "shuffled"])
def test_any_number_of_workers_stages_the_same_bytes(tmp_path, abalone_bytes, monkeypatch, order):
    """Blocks and partitions go to worker processes; the splits, the quarantine, the statistics and the
    manifest are byte for byte those of one process, duplicates across blocks included."""
    monkeypatch.setattr(staging_scan, "BLOCK_BYTES", 16 << 10)  # about 120 blocks
    monkeypatch.setattr(staging_spool, "PARTITION_BYTES", 16 << 10)  # 16 partitions
    lines = abalone_bytes.splitlines()
    if order == "shuffled":
        random.Random(7).shuffle(lines)
    source = HEADER + b"\n".join([*lines, *lines[100:130], b"M,0.5,0.4,0,0.6,0.2,0.1,0.2,9"]) + b"\n"
    outcomes = []
    for workers in (1, 2, 3):
        store = LocalStore(tmp_path / f"store-{workers}")
        staged = stage([source], "x", store, policy=ValidationPolicy(0.02), size=len(source), workers=workers)
        assert staged.workers == workers
        files = sorted((tmp_path / f"store-{workers}").rglob("*.*"))
        objects = {path.name: path.read_bytes().replace(store.root_uri.encode(), b"<store>") for path in files}
        outcomes.append((staged.dataset_id, staged.validation, objects))
    assert outcomes[0][1]["quarantined_by_rule"]["duplicate"] == 30
    assert outcomes[1] == outcomes[0] and outcomes[2] == outcomes[0]


def test_a_refusal_in_a_worker_is_raised_as_in_one_process(store, monkeypatch):
    monkeypatch.setattr(staging_scan, "BLOCK_BYTES", 2048)
    payload = rows_of(300) + b"M,0.5,\x00,0.1\n" + rows_of(10)
    with pytest.raises(StagingError, match="line 301 contains NUL bytes"):
        stage([payload], "nul.csv", store, size=len(payload), workers=2)
    assert not list(store.root.rglob("*.*")), "nothing is written"


def test_a_refusal_in_an_earlier_block_wins_over_an_error_reading_further_ahead(store, monkeypatch):
    monkeypatch.setattr(staging_scan, "BLOCK_BYTES", 2048)
    payload = rows_of(300) + b"M,0.5,\x00,0.1\n" + rows_of(60) + b"M," * 5000
    for workers in (1, 3):
        with pytest.raises(StagingError, match="line 301 contains NUL bytes"):
            stage([payload], "nul.csv", store, size=len(payload), workers=workers)
    # Two refusals in blocks in flight together: the first in the file is the one raised.
    payload = rows_of(300) + b"M,0.5,\x00,0.1\n" + rows_of(80) + b"F,0.5,\x00,0.2\n" + rows_of(300)
    for workers in (1, 3):
        with pytest.raises(StagingError, match="line 301 contains NUL bytes"):
            stage([payload], "nul.csv", store, size=len(payload), workers=workers)


def test_workers_start_in_a_process_marked_daemonic_as_celery_marks_its_pool(store, monkeypatch, abalone_bytes):
    """Celery's prefork pool marks its processes daemonic and Airflow's task process inherits the mark, which
    makes multiprocessing refuse to start children: staging's workers start all the same."""
    import multiprocessing

    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)
    monkeypatch.setattr(staging_scan, "BLOCK_BYTES", 64 << 10)
    staged = stage([abalone_bytes], "x", store, size=len(abalone_bytes), workers=2)
    assert staged.workers == 2 and staged.dataset_id == "7c4075e67892e879"
    assert multiprocessing.current_process()._config["daemon"] is True, "the mark is put back"


def test_workers_are_sized_from_the_cpus_and_the_source(monkeypatch, tmp_path):
    monkeypatch.setattr(staging_workers.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    limit = tmp_path / "cpu.max"
    monkeypatch.setattr(staging_workers, "CGROUP_CPU_MAX", limit)
    assert staging_workers.available_cpus() == 4, "no cgroup file: the affinity"
    limit.write_text("150000 100000\n")
    assert staging_workers.available_cpus() == 2, "a container limited to 1.5 CPUs gets 2 workers"
    limit.write_text("max 100000\n")
    assert staging_workers.available_cpus() == 4
    assert staging_workers.worker_count(None, 200_000, 8 << 20) == 1, "one block: no pool"
    assert staging_workers.worker_count(None, 20 << 20, 8 << 20) == 3
    assert staging_workers.worker_count(None, None, 8 << 20) == 4
    assert staging_workers.worker_count(2, 1 << 30, 8 << 20) == 2, "the setting wins"
    monkeypatch.setattr(staging_workers.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert staging_workers.worker_count(None, 1 << 30, 8 << 20) == 8, "by default at most 8"
    assert staging_workers.worker_count(16, 1 << 30, 8 << 20) == 16


def test_stage_writes_splits_and_a_manifest_that_vouches_for_them(store, abalone_bytes):
    staged = stage(abalone_bytes, "file:///abalone.data", store)
    prefix = f"datasets/abalone/{staged.dataset_id}"
    manifest = json.loads(store.get(f"{prefix}/manifest.json"))
    assert staged.written and staged.manifest_uri == store.uri(f"{prefix}/manifest.json")
    assert manifest["source_sha256"] == hashlib.sha256(abalone_bytes).hexdigest()
    assert manifest["columns"] == list(COLUMNS)
    for split, entry in manifest["splits"].items():
        body = store.get(entry["key"])
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] and len(body) == entry["bytes"]
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
    with pytest.raises(StagingError, match="modified by hand"):
        stage(abalone_bytes, "a", store)
    assert not manifest_path.exists()


def test_a_staged_dataset_changed_afterwards_is_refused(store, abalone_bytes):
    staged = stage(abalone_bytes, "a", store)
    train = store.root / f"datasets/abalone/{staged.dataset_id}/train.csv"
    train.write_bytes(train.read_bytes().replace(b"M,", b"F,", 1))  # same size, other content
    with pytest.raises(StagingError, match="changed after staging"):
        stage(abalone_bytes, "a", store)


def test_lines_csv_cannot_read_are_quarantined_and_a_file_without_line_feeds_is_refused(store, monkeypatch):
    stray_cr = b"M,0.5,0.4,0.1\r,0.6,0.2,0.1,0.2,9\n"
    huge = b"M,0.5,0.4,0.1,0.6,0.2,0.1,0.2," + b"x" * (200 << 10) + b"\n"
    staged = stage(rows_of(300) + stray_cr + huge, "x", store, policy=ValidationPolicy(0.01))
    entries = quarantined(store, staged)
    assert [(q["line"], q["rule"]) for q in entries] == [("301", "field_format"), ("302", "field_format")]
    assert "not a CSV row" in entries[0]["reason"]
    assert len(entries[1]["fields"]) < 1100, "a row is recorded up to 1 KiB"
    monkeypatch.setattr(staging_scan, "BLOCK_BYTES", 4096)
    with pytest.raises(StagingError, match=r"line 1: no line break within 4,096 bytes .*CR-only"):
        stage([rows_of(300).replace(b"\n", b"\r")], "mac.csv", store)
    with pytest.raises(StagingError, match="line 11: no line break"):
        stage(rows_of(10) + b"M," * 5000, "long.csv", store)


def test_duplicates_of_a_heavy_row_warn_once(store):
    heavy = b"M,0.4,0.3,0.1,0.5,0.6,0.1,0.15,7\n"
    staged = stage(heavy * 3 + rows_of(400), "x", store, policy=ValidationPolicy(0.01))
    assert staged.validation["warnings"] == {"part_heavier_than_whole": 1}
    assert staged.validation["quarantined_by_rule"] == {"duplicate": 2}
