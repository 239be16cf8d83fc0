"""Stage an abalone source: validate it, split it by row hash and write it under a content-addressed prefix.

The source is streamed, so a file far larger than memory is staged in bounded memory:

1. **Scan.** The source is read in blocks of whole lines (``BLOCK_BYTES``); each block is checked
   (``validation.check_rows``), its bad rows appended to a quarantine run, and its valid rows hashed
   (``row_keys``) and spooled to local partition files by hash range. The source's SHA-256 and the
   statistics for the drift summary are computed on the way.
2. **Assemble.** Partition by partition, in hash order, rows are sorted by hash: exact duplicates
   meet and are quarantined, and the rest go to the split their hash falls in. Each split file is thus
   in a canonical order (ascending row hash) that depends only on the rows, not on their order in
   the source or on how many partitions were used.
3. **Write.** The dataset id is derived from the splits' and the quarantine's SHA-256 and the split
   spec. Each file is uploaded create-only and verified; the manifest is written last and is the
   commit marker: a dataset without it is incomplete, and the next attempt completes it.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import heapq
import itertools
import json
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abalone_contract.constants import SPLITS
from abalone_pipeline.drift import Moments
from abalone_pipeline.objectstore import ContentMismatch, ObjectStore, file_sha256
from abalone_pipeline.validation import (
    COLUMNS,
    DEFAULT_POLICY,
    FileState,
    SourceRejected,
    ValidationPolicy,
    check_encoding,
    check_fraction,
    check_header,
    check_rows,
    heavier_than_whole,
)

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "SPLITS", "SplitSpec", "StagedDataset", "StagingError", "row_keys", "split_of", "stage"]

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.csv"
DATASET_PREFIX = "datasets/abalone"
MANIFEST_VERSION = 3
HEADER = (",".join(COLUMNS) + "\n").encode()
QUARANTINE_HEADER = ["line", "rule", "reason", "fields"]

# Memory is bounded by these, not by the source: a block of the source in the scan, a partition in the
# assembly (partitions are sized from the source's size when it is known), parts in flight in the upload.
BLOCK_BYTES = 8 << 20
PARTITION_BYTES = 8 << 20
MAX_PARTITIONS = 512
PROGRESS_BYTES = 128 << 20


class StagingError(ValueError):
    """Staging cannot go on and a retry will not help: the source is refused (a ``SourceRejected`` from
    validation is then its cause), or the store holds objects that staging did not write."""


@dataclass(frozen=True)
class SplitSpec:
    """How rows are assigned to splits; part of the dataset's identity.

    Each row's split follows from a keyed hash of the row's own content (``row_keys``), not from its
    position or the other rows: a row keeps its split as the data grows, so nightly evaluations stay
    comparable.
    """

    seed: int = 42
    test_fraction: float = 0.2
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.test_fraction < 1 and 0 < self.validation_fraction < 1):
            raise StagingError("test_fraction and validation_fraction must each be in (0, 1)")
        if self.test_fraction + self.validation_fraction >= 0.9:
            raise StagingError("test_fraction + validation_fraction must leave at least 10% for training")

    @property
    def hash_key(self) -> str:
        """The 16-byte SipHash key: the first 16 hex digits of sha256("abalone-split:<seed>")."""
        return hashlib.sha256(f"abalone-split:{self.seed}".encode()).hexdigest()[:16]

    def bounds(self) -> tuple[int, int]:
        """Row keys below the first bound are test rows, below the second validation, the rest train."""
        test = int(self.test_fraction * 2**64)
        return test, int((self.test_fraction + self.validation_fraction) * 2**64)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "siphash-2-4 of the canonical row, keyed by sha256('abalone-split:<seed>')[:16], "
            "then the splitmix64 finaliser (pandas.util.hash_array); key / 2**64 against the fractions",
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "validation_fraction": self.validation_fraction,
        }


@dataclass(frozen=True)
class StagedDataset:
    """Where a staged dataset lives; this is what goes through XCom."""

    dataset_id: str
    manifest_uri: str
    rows: dict[str, int]
    written: bool
    # What this run read: the audit trail names the source and the digest of its bytes.
    source_uri: str = ""
    source_sha256: str = ""
    # What validation found in this run's source, and where the quarantined rows are.
    validation: dict[str, Any] = field(default_factory=dict)
    quarantine_uri: str | None = None
    # The manifest's statistics (drift.Moments), to compare with the next dataset without re-reading it.
    statistics: dict[str, Any] | None = None
    # Wall seconds of this run's scan, assembly and writes (what bench/staging_throughput.py reports).
    seconds: dict[str, float] = field(default_factory=dict)

    def to_xcom(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "manifest_uri": self.manifest_uri,
            "rows": self.rows,
            "written": self.written,
            "source_uri": self.source_uri,
            "source_sha256": self.source_sha256,
            "validation": self.validation,
            "quarantine_uri": self.quarantine_uri,
            "statistics": self.statistics,
            "seconds": self.seconds,
        }


def row_keys(lines, spec: SplitSpec):
    """The 64-bit key of each canonical row (bytes): SipHash-2-4 keyed by the seed, vectorised by pandas."""
    import numpy as np
    import pandas as pd

    if not len(lines):
        return np.array([], dtype=np.uint64)
    return pd.util.hash_array(
        np.asarray(lines, dtype=object), encoding="utf8", hash_key=spec.hash_key, categorize=False
    )


def split_index(keys, spec: SplitSpec):
    """0, 1, 2 for test, validation, train, from each key's position in [0, 2**64)."""
    import numpy as np

    return np.searchsorted(np.array(spec.bounds(), dtype=np.uint64), keys, side="right")


_SPLIT_BY_INDEX = ("test", "validation", "train")


def split_of(row: bytes | list[str], spec: SplitSpec) -> str:
    """The split of one row, given canonical (``b"M,0.455,..."``) or as fields."""
    line = row if isinstance(row, bytes) else ",".join(row).encode()
    return _SPLIT_BY_INDEX[int(split_index(row_keys([line], spec), spec)[0])]


# --------------------------------------------------------------------------------------------------
# Scan: blocks of the source -> quarantine run + hash-partitioned spool


class _Hasher:
    """Feeds a digest from a background thread (hashlib releases the GIL), at most a few chunks behind."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self.pending: collections.deque = collections.deque()

    def __enter__(self) -> _Hasher:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="source-sha256")
        return self

    def update(self, chunk: bytes) -> None:
        while len(self.pending) >= 16:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self.digest.update, chunk))

    def __exit__(self, *exc_info: object) -> None:
        self.pool.shutdown(wait=True)
        while self.pending:
            self.pending.popleft().result()


def _blocks(chunks: Iterable[bytes], hasher: _Hasher, state: FileState) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines of about ``BLOCK_BYTES``, each with the line number it starts at.

    Every byte read goes through ``hasher``. A UTF-8 byte order mark is dropped; a last line without
    a newline gets one. A line longer than a block (or a file without line feeds, such as one with
    CR-only line endings) is refused rather than read whole into memory.
    """
    buffer = bytearray()
    line = 1
    first = True

    def too_long() -> StagingError:
        return StagingError(
            f"{state.source_uri} line {line}: no line break within {BLOCK_BYTES:,} bytes (a binary file, "
            "CR-only line endings, or a line far longer than any abalone record)"
        )

    def cut(data: bytearray, end: int) -> Iterator[tuple[bytes, int]]:
        """Whole-line blocks of at most ``BLOCK_BYTES`` from ``data[:end]`` (which ends with a newline)."""
        nonlocal line, first
        start = 0
        while start < end:
            stop = end if end - start <= BLOCK_BYTES else data.rfind(b"\n", start, start + BLOCK_BYTES) + 1
            if stop <= start:
                raise too_long()
            block = bytes(data[start:stop])
            if first:
                block, first = _strip_bom(block, state), False
            yield block, line
            line += block.count(b"\n")
            start = stop

    for chunk in chunks:
        hasher.update(chunk)
        buffer += chunk
        if len(buffer) < BLOCK_BYTES:
            continue
        end = buffer.rfind(b"\n") + 1
        yield from cut(buffer, end)
        del buffer[:end]
        if len(buffer) >= BLOCK_BYTES:
            raise too_long()
    if buffer:
        if not buffer.endswith(b"\n"):
            buffer += b"\n"
        yield from cut(buffer, len(buffer))


def _strip_bom(block: bytes, state: FileState) -> bytes:
    if block.startswith(b"\xef\xbb\xbf"):
        state.note("a UTF-8 byte order mark was removed")
        return block[3:]
    return block


def _take_header(block: bytes, first_line: int, state: FileState) -> tuple[bytes, int, bool]:
    """Find the first non-blank line; if it is a header, check it and cut it off. Returns whether it was found."""
    check_encoding(block, first_line, state)
    offset = 0
    while offset < len(block):
        end = block.index(b"\n", offset)
        raw = block[offset:end].decode("utf-8").strip()
        if raw:
            try:
                fields = [value.strip() for value in next(csv.reader([raw]))]
            except csv.Error as exc:
                raise StagingError(f"{state.source_uri} line {first_line} is not CSV: {exc}") from exc
            if check_header(fields, state.source_uri, first_line):
                state.note("a header row was read and checked")
                return block[end + 1 :], first_line + 1, True
            return block[offset:], first_line, True
        offset, first_line = end + 1, first_line + 1
    return b"", first_line, False


class _QuarantineRun:
    """Quarantined rows as CSV, written in line order; a sorted run to merge at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle, lineterminator="\n")
        self.count = 0

    def write(self, entries: list[tuple[int, str, str, str]]) -> None:
        self.writer.writerows(entries)
        self.count += len(entries)

    def close(self) -> None:
        self.handle.close()


def _read_run(path: Path) -> Iterator[tuple[int, str, str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        for line, rule, reason, fields in csv.reader(handle):
            yield int(line), rule, reason, fields


class _Spool:
    """Valid rows spooled to local files, grouped by key range: ``count`` partitions of the key space.

    Each scanned block is written as one run: its rows ordered by partition, with the offsets of each
    partition kept in memory, so that a partition is later read back as one slice of every run.
    """

    META = [("key", "<u8"), ("line", "<u8")]

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count
        self.shift = 64 - int(math.log2(count))
        self.runs: list[tuple[Any, Any]] = []  # per run: row edges and byte offsets of each partition

    def _paths(self, run: int) -> tuple[Path, Path]:
        return self.directory / f"run-{run:06d}.rows", self.directory / f"run-{run:06d}.meta"

    def add(self, lines, keys, numbers) -> None:
        import numpy as np

        if not len(keys):
            return
        # A 16-bit partition number: numpy's stable sort is a radix sort for it.
        parts = (keys >> np.uint64(self.shift)).astype(np.uint16) if self.count > 1 else np.zeros(len(keys), np.uint16)
        order = np.argsort(parts, kind="stable")
        edges = np.searchsorted(parts[order], np.arange(self.count + 1))
        meta = np.empty(len(keys), dtype=self.META)
        meta["key"], meta["line"] = keys[order], numbers[order]
        lines = lines[order]
        sizes = np.zeros(self.count + 1, dtype=np.int64)
        rows_path, meta_path = self._paths(len(self.runs))
        with rows_path.open("wb") as handle:
            for index in np.flatnonzero(np.diff(edges)):
                data = b"\n".join(lines[edges[index] : edges[index + 1]].tolist()) + b"\n"
                handle.write(data)
                sizes[index + 1] = len(data)
        meta.tofile(meta_path)
        self.runs.append((edges, np.cumsum(sizes)))

    def load(self, index: int):
        """The partition's rows (object array of bytes) and their keys and line numbers, or None."""
        import numpy as np

        lines: list[bytes] = []
        metas = []
        for run, (edges, offsets) in enumerate(self.runs):
            if edges[index] == edges[index + 1]:
                continue
            rows_path, meta_path = self._paths(run)
            with rows_path.open("rb") as handle:
                handle.seek(offsets[index])
                lines += handle.read(offsets[index + 1] - offsets[index]).split(b"\n")[:-1]
            count = int(edges[index + 1] - edges[index])
            metas.append(np.fromfile(meta_path, dtype=self.META, count=count, offset=int(edges[index]) * 16))
        if not metas:
            return None
        meta = np.concatenate(metas)
        objects = np.empty(len(lines), dtype=object)
        objects[:] = lines
        return objects, meta["key"], meta["line"]


def _partitions(size: int | None) -> int:
    if size is None:
        return MAX_PARTITIONS  # bounded partitions for any size; small sources pay a few empty ones
    wanted = max(1, math.ceil(size / PARTITION_BYTES))
    return min(MAX_PARTITIONS, 1 << (wanted - 1).bit_length())


@dataclass
class _Scan:
    source_sha256: str
    data_rows: int
    counts: Counter
    heavier: int
    notes: list[str]


def _without_header(blocks: Iterator[tuple[bytes, int]], state: FileState) -> Iterator[tuple[bytes, int]]:
    """The blocks with the header row, if the file has one, checked and cut off."""
    for block, first_line in blocks:
        if not state.text_seen:
            block, first_line, state.text_seen = _take_header(block, first_line, state)
            if not block:
                continue
        yield block, first_line


def _checked(blocks: Iterator[tuple[bytes, int]], state: FileState) -> Iterator[tuple[Any, int]]:
    """``check_rows`` of each block with its size, one block ahead in a worker thread.

    The next block is parsed and checked (pyarrow, numpy and pandas release the GIL for much of it)
    while the caller hashes and spools the previous one. One worker: blocks are checked in order.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="check-rows") as pool:
        ahead = None
        for block, first_line in blocks:
            future = pool.submit(check_rows, block, first_line, state), len(block)
            if ahead is not None:
                yield ahead[0].result(), ahead[1]
            ahead = future
        if ahead is not None:
            yield ahead[0].result(), ahead[1]


def _scan(chunks, source_uri, spec, spool, rules: _QuarantineRun, moments: Moments) -> _Scan:
    digest = hashlib.sha256()
    state = FileState(source_uri)
    counts: Counter[str] = Counter()
    data_rows = heavier = 0
    started = time.monotonic()
    scanned = reported = 0
    with _Hasher(digest) as hasher:
        for checked, size in _checked(_without_header(_blocks(chunks, hasher, state), state), state):
            rules.write(checked.quarantine)
            counts.update(rule for _, rule, _, _ in checked.quarantine)
            data_rows += len(checked.lines) + len(checked.quarantine)
            heavier += checked.heavier
            moments.add(checked.columns, checked.sexes)
            spool.add(checked.lines, row_keys(checked.lines, spec), checked.numbers)
            scanned += size
            if scanned - reported >= PROGRESS_BYTES:
                reported = scanned
                elapsed = time.monotonic() - started
                log.info(
                    "scanned %d MiB, %d rows (%d quarantined) in %.0f s", scanned >> 20, data_rows, rules.count, elapsed
                )
    if not state.text_seen:
        raise StagingError(f"{source_uri} is empty")
    if not data_rows:
        raise StagingError(f"{source_uri} has a header but no data rows")
    return _Scan(digest.hexdigest(), data_rows, counts, heavier, state.notes)


# --------------------------------------------------------------------------------------------------
# Assemble: partitions in key order -> duplicates quarantined, split files in canonical order


@dataclass
class _SplitFile:
    path: Path
    digest: Any = field(default_factory=hashlib.sha256)
    rows: int = 0

    def __post_init__(self) -> None:
        self.handle = self.path.open("wb")
        self.write(HEADER)

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)

    def entry(self) -> dict[str, Any]:
        self.handle.close()
        return {"rows": self.rows, "sha256": self.digest.hexdigest(), "bytes": self.path.stat().st_size}


def _duplicates(lines, keys, numbers) -> tuple[Any, list[tuple[int, str, str, str]]]:
    """In rows sorted by (key, line): a mask of the rows to keep and a quarantine entry per exact duplicate."""
    import numpy as np

    keep = np.ones(len(keys), dtype=bool)
    entries = []
    group_key = None
    first_of: dict[bytes, int] = {}
    for index in np.flatnonzero(keys[1:] == keys[:-1]) + 1:  # rows whose key equals the previous row's
        if keys[index] != group_key:
            group_key, first_of = keys[index], {lines[index - 1]: index - 1}
        original = first_of.setdefault(lines[index], index)
        if original != index:  # equal key and equal text (equal keys alone would be a hash collision)
            keep[index] = False
            reason = f"exact duplicate of line {int(numbers[original])}"
            entries.append((int(numbers[index]), "duplicate", reason, lines[index].decode()))
    return keep, sorted(entries)


def _values(entries: list[tuple[int, str, str, str]]):
    """The numeric columns and Sex of quarantined duplicates (valid rows, so they parse)."""
    import numpy as np

    rows = [entry[3].split(",") for entry in entries]
    return np.array([row[1:] for row in rows], dtype=np.float64).T, Counter(row[0] for row in rows)


def _assemble(spool: _Spool, spec: SplitSpec, directory: Path, moments: Moments):
    """Write the split files; return their entries, the sorted runs of duplicates, how many duplicates there
    are and how many of them have a part heavier than the whole (counted once already in the scan)."""

    files = {name: _SplitFile(directory / f"{name}.csv") for name in _SPLIT_BY_INDEX}
    try:
        return _fill(files, spool, spec, moments, directory)
    finally:
        for split in files.values():
            split.handle.close()


def _fill(files: dict[str, _SplitFile], spool: _Spool, spec: SplitSpec, moments: Moments, directory: Path):
    import numpy as np

    runs = []
    duplicates = heavier_duplicates = 0
    for index in range(spool.count):
        loaded = spool.load(index)
        if loaded is None:
            continue
        lines, keys, numbers = loaded
        # A partition holds its rows in source order, so a stable sort by key keeps the first of equal rows first.
        order = np.argsort(keys, kind="stable")
        lines, keys, numbers = lines[order], keys[order], numbers[order]
        keep, entries = _duplicates(lines, keys, numbers)
        if entries:
            columns, sexes = _values(entries)
            moments.remove(columns, sexes)
            heavier_duplicates += heavier_than_whole(columns)
            duplicates += len(entries)
            run = _QuarantineRun(directory / f"duplicates-{index:04d}.csv")
            run.write(entries)
            run.close()
            runs.append(run.path)
            lines, keys = lines[keep], keys[keep]
        # Sorted by key, each split is one slice: test below the first bound, validation below the second.
        cuts = [0, *np.searchsorted(keys, np.array(spec.bounds(), dtype=np.uint64)).tolist(), len(keys)]
        for position, name in enumerate(_SPLIT_BY_INDEX):
            chosen = lines[cuts[position] : cuts[position + 1]]
            if len(chosen):
                files[name].write(b"\n".join(chosen.tolist()) + b"\n")
                files[name].rows += len(chosen)
    entries = {name: (files[name].path, files[name].entry()) for name in SPLITS}
    return entries, runs, duplicates, heavier_duplicates


def _write_quarantine(path: Path, runs: list[Path]) -> tuple[dict[str, Any] | None, list]:
    """Merge the sorted runs into one quarantine CSV in line order; None if nothing was quarantined."""
    first: list[tuple[int, str, str, str]] = []
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(QUARANTINE_HEADER)
        for entry in heapq.merge(*(_read_run(run) for run in runs)):
            writer.writerow(entry)
            count += 1
            if len(first) < 3:
                first.append(entry)
    if not count:
        return None, first
    return {"rows": count, "sha256": file_sha256(path), "bytes": path.stat().st_size}, first


# --------------------------------------------------------------------------------------------------
# Write: create-only uploads, verified; the manifest last


def _verify_staged(store: ObjectStore, manifest: dict[str, Any], dataset_id: str) -> None:
    """A dataset staged before is reused only if its objects still are what the manifest says."""
    entries = [*manifest["splits"].values(), *([manifest["quarantine"]] if manifest.get("quarantine") else [])]
    for entry in entries:
        if "bytes" not in entry:
            continue  # staged by an older version: the trainer still checks every split's sha256
        try:
            store.verify(
                entry["key"], entry["sha256"], entry["bytes"], reread=False, checksum=entry.get("store_checksum")
            )
        except ContentMismatch as exc:
            raise StagingError(
                f"dataset {dataset_id} is staged, but {exc}: it changed after staging. Restore it or delete "
                f"the prefix {store.uri(f'{DATASET_PREFIX}/{dataset_id}')} to stage it again"
            ) from exc


def _put(store: ObjectStore, key: str, path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    try:
        written, checksum = store.put_file(key, path, entry["sha256"])
    except ContentMismatch as exc:
        raise StagingError(f"{exc}: the store was modified by hand; delete the object to stage it again") from exc
    log.info(
        "%s %s: %d rows, %d bytes, sha256 %s",
        "staged" if written else "already staged (same sha256)",
        store.uri(key),
        entry["rows"],
        entry["bytes"],
        entry["sha256"],
    )
    # The checksum the store keeps (for S3, of the parts when uploaded in parts): a later stage compares it.
    return {**entry, "uri": store.uri(key), "key": key, **({"store_checksum": checksum} if checksum else {})}


def stage(
    source: bytes | Iterable[bytes],
    source_uri: str,
    store: ObjectStore,
    spec: SplitSpec = SplitSpec(),
    policy: ValidationPolicy = DEFAULT_POLICY,
    *,
    size: int | None = None,
    workdir: str | Path | None = None,
) -> StagedDataset:
    """Validate ``source`` (bytes, or chunks of bytes such as a ``sources.Source``) and stage it.

    ``size`` (or the source's own ``size``) sizes the partitions; ``workdir`` holds the spool, about
    twice the source's size, and is removed afterwards. A dataset already staged is left as it is,
    after checking its objects still match its manifest. Nothing is written if the source is refused.
    """
    try:
        return _stage(source, source_uri, store, spec, policy, size, workdir)
    except SourceRejected as exc:
        raise StagingError(str(exc)) from exc  # callers handle one error for staging as a whole


def _stage(
    source: bytes | Iterable[bytes],
    source_uri: str,
    store: ObjectStore,
    spec: SplitSpec,
    policy: ValidationPolicy,
    size: int | None,
    workdir: str | Path | None,
) -> StagedDataset:
    chunks = [source] if isinstance(source, bytes) else source
    size = len(source) if isinstance(source, bytes) else size if size is not None else getattr(source, "size", None)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="abalone-stage-", dir=workdir) as tmp:
        directory = Path(tmp)
        spool = _Spool(directory, _partitions(size))
        rules = _QuarantineRun(directory / "rules.csv")
        moments = Moments()
        try:
            scan = _scan(chunks, source_uri, spec, spool, rules, moments)
        finally:
            rules.close()
        seconds = {"scan": time.monotonic() - started}
        log.info(
            "scanned %s: %d data rows, %d quarantined, sha256 %s (%.1f s)",
            source_uri,
            scan.data_rows,
            rules.count,
            scan.source_sha256,
            seconds["scan"],
        )
        if rules.count:  # refuse early, before the assembly, when the row rules alone exceed the share
            check_fraction(
                rules.count,
                scan.data_rows,
                scan.counts,
                list(itertools.islice(_read_run(rules.path), 3)),
                source_uri,
                policy,
            )
        splits, runs, duplicates, heavier_duplicates = _assemble(spool, spec, directory, moments)
        heavier = scan.heavier - heavier_duplicates
        quarantine, first = _write_quarantine(directory / QUARANTINE, [rules.path, *runs])
        counts = Counter(scan.counts)
        if duplicates:
            counts["duplicate"] = duplicates
        quarantined = quarantine["rows"] if quarantine else 0
        check_fraction(quarantined, scan.data_rows, counts, first, source_uri, policy)
        empty = [name for name, (_, entry) in splits.items() if not entry["rows"]]
        if empty:
            sizes = ", ".join(f"{name}={entry['rows']}" for name, (_, entry) in splits.items())
            raise StagingError(
                f"{scan.data_rows - quarantined} rows are too few to split into train, validation and test ({sizes})"
            )

        summary = {
            "data_rows": scan.data_rows,
            "valid_rows": scan.data_rows - quarantined,
            "quarantined_rows": quarantined,
            "quarantined_by_rule": dict(sorted(counts.items())),
            "warnings": {"part_heavier_than_whole": heavier} if heavier else {},
            "notes": scan.notes,
        }
        if heavier:
            log.warning("%s: %d rows have a part heavier than the whole abalone (kept)", source_uri, heavier)
        identity = {
            "split": spec.describe(),
            "splits": {name: entry["sha256"] for name, (_, entry) in splits.items()},
            "quarantine": quarantine["sha256"] if quarantine else None,
        }
        dataset_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        prefix = f"{DATASET_PREFIX}/{dataset_id}"
        manifest_key = f"{prefix}/{MANIFEST}"
        seconds["assemble"] = time.monotonic() - started - seconds["scan"]
        log.info("dataset %s assembled in %.1f s", dataset_id, seconds["assemble"])

        def staged(manifest: dict[str, Any], written: bool) -> StagedDataset:
            return StagedDataset(
                dataset_id,
                store.uri(manifest_key),
                {split: entry["rows"] for split, entry in manifest["splits"].items()},
                written,
                source_uri,
                scan.source_sha256,
                validation=summary,
                quarantine_uri=(manifest.get("quarantine") or {}).get("uri"),
                statistics=manifest.get("statistics"),
                seconds={**seconds, "write": time.monotonic() - started - seconds["scan"] - seconds["assemble"]},
            )

        if store.exists(manifest_key):
            manifest = json.loads(store.get(manifest_key))
            _verify_staged(store, manifest, dataset_id)
            log.info("dataset %s is already staged at %s; not rewriting it", dataset_id, store.uri(prefix))
            return staged(manifest, False)

        quarantine_entry = None
        if quarantine:
            quarantine_entry = _put(store, f"{prefix}/{QUARANTINE}", directory / QUARANTINE, quarantine)
            log.warning(
                "quarantined %d of %d rows (%s) in %s",
                quarantined,
                scan.data_rows,
                ", ".join(f"{rule}: {count}" for rule, count in sorted(counts.items())),
                quarantine_entry["uri"],
            )
        entries = {name: _put(store, f"{prefix}/{name}.csv", path, entry) for name, (path, entry) in splits.items()}

    manifest = {
        "schema_version": MANIFEST_VERSION,
        "dataset_id": dataset_id,
        "source_uri": source_uri,
        "source_sha256": scan.source_sha256,
        "rows": summary["valid_rows"],
        "columns": list(COLUMNS),
        "label": "Rings",
        "split": spec.describe(),
        "row_order": "ascending split key within each split",
        "splits": entries,
        "validation": {**summary, "max_quarantine_fraction": policy.max_quarantine_fraction},
        "statistics": moments.result(),
        "quarantine": quarantine_entry,
    }
    written = store.put_if_absent(manifest_key, json.dumps(manifest, indent=2, sort_keys=True).encode())
    if not written:  # a concurrent attempt committed the same dataset first: its manifest is the one
        manifest = json.loads(store.get(manifest_key))
    log.info(
        "manifest %s %s; staged in %.1f s",
        store.uri(manifest_key),
        "written" if written else "was written by a concurrent attempt",
        time.monotonic() - started,
    )
    return staged(manifest, written)
