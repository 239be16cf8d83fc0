"""Assemble: the spool's partitions in key order -> exact duplicates quarantined, split files in canonical order.

Within a partition, rows are sorted by key (stably, so the first of equal rows in the source stays
first): exact duplicates meet and are quarantined, and the rest go to the split their key falls in.
Each split file is thus in ascending key order, which depends only on the rows, not on their order in
the source, nor on how many partitions or workers there were. Partitions are assembled by
``assemble_partition`` in worker processes; the task's process writes their rows to the split files
in partition order.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abalone_contract.constants import SPLITS
from abalone_pipeline.drift import Moments
from abalone_pipeline.staging.quarantine import Entry, write_run
from abalone_pipeline.staging.spec import HEADER, SPLIT_BY_INDEX, SplitSpec
from abalone_pipeline.staging.spool import Piece, Spool, load
from abalone_pipeline.staging.workers import in_order
from abalone_pipeline.validation import heavier_than_whole

log = logging.getLogger(__name__)

PROGRESS_PARTITIONS = 32


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


def duplicates(lines, keys, numbers) -> tuple[Any, list[Entry]]:
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


def _values(entries: list[Entry]):
    """The numeric columns and Sex of quarantined duplicates (valid rows, so they parse)."""
    import numpy as np

    rows = [entry[3].split(",") for entry in entries]
    return np.array([row[1:] for row in rows], dtype=np.float64).T, Counter(row[0] for row in rows)


@dataclass
class PartitionResult:
    """A partition assembled: its rows for each split (canonical CSV lines), and its duplicates."""

    splits: tuple[bytes, ...]  # in SPLIT_BY_INDEX order
    rows: tuple[int, ...]
    duplicates: int = 0
    duplicates_run: Path | None = None  # their quarantine entries, sorted by line
    removed: Moments | None = None  # the duplicates' statistics, to take out of the scan's
    heavier_duplicates: int = 0  # duplicates with a part heavier than the whole (counted once in the scan)


def assemble_partition(directory: Path, index: int, pieces: list[Piece], bounds: tuple[int, int]) -> PartitionResult:
    """Sort partition ``index`` by key, quarantine its exact duplicates and cut it into the splits."""
    import numpy as np

    lines, keys, numbers = load(directory, pieces)
    # A partition holds its rows in source order, so a stable sort by key keeps the first of equal rows first.
    order = np.argsort(keys, kind="stable")
    lines, keys, numbers = lines[order], keys[order], numbers[order]
    keep, entries = duplicates(lines, keys, numbers)
    result = PartitionResult((), ())
    if entries:
        columns, sexes = _values(entries)
        result.removed = Moments()
        result.removed.add(columns, sexes)
        result.heavier_duplicates = heavier_than_whole(columns)
        result.duplicates = len(entries)
        result.duplicates_run = write_run(directory / f"duplicates-{index:04d}.csv", entries)
        lines, keys = lines[keep], keys[keep]
    # Sorted by key, each split is one slice: test below the first bound, validation below the second.
    cuts = [0, *np.searchsorted(keys, np.array(bounds, dtype=np.uint64)).tolist(), len(keys)]
    chosen = [lines[cuts[position] : cuts[position + 1]] for position in range(len(SPLIT_BY_INDEX))]
    result.splits = tuple(b"\n".join(rows.tolist()) + b"\n" if len(rows) else b"" for rows in chosen)
    result.rows = tuple(len(rows) for rows in chosen)
    return result


@dataclass
class Assembly:
    splits: dict[str, tuple[Path, dict[str, Any]]]  # name -> (file, its entry)
    duplicates_runs: list[Path]
    duplicates: int
    heavier_duplicates: int


def assemble(spool: Spool, spec: SplitSpec, directory: Path, moments: Moments, executor: Executor, ahead: int):
    """Write the split files from the spool; take the duplicates out of ``moments``."""
    files = {name: _SplitFile(directory / f"{name}.csv") for name in SPLIT_BY_INDEX}
    try:
        return _fill(files, spool, spec, moments, executor, ahead)
    finally:
        for split in files.values():
            split.handle.close()


def _fill(
    files: dict[str, _SplitFile], spool: Spool, spec: SplitSpec, moments: Moments, executor: Executor, ahead: int
) -> Assembly:
    started = time.monotonic()
    calls = (
        (assemble_partition, (spool.directory, index, pieces, spec.bounds()))
        for index in range(spool.count)
        if (pieces := spool.pieces(index))
    )
    runs = []
    duplicates_count = heavier_duplicates = 0
    for done, result in enumerate(in_order(executor, calls, ahead), start=1):
        if result.removed is not None:
            moments.merge(result.removed, sign=-1)
            heavier_duplicates += result.heavier_duplicates
            duplicates_count += result.duplicates
            runs.append(result.duplicates_run)
        for name, data, rows in zip(SPLIT_BY_INDEX, result.splits, result.rows, strict=True):
            if rows:
                files[name].write(data)
                files[name].rows += rows
        if done % PROGRESS_PARTITIONS == 0:
            log.info("assembled %d partitions with rows in %.0f s", done, time.monotonic() - started)
    entries = {name: (files[name].path, files[name].entry()) for name in SPLITS}
    return Assembly(entries, runs, duplicates_count, heavier_duplicates)
