"""The spool: valid rows on local disk, grouped by key range, so the assembly reads one range at a time.

The key space is cut into ``count`` partitions. Each scanned block is written as one run: its rows ordered
by partition, with the row and byte offsets of each partition kept (in the task's process) so that a
partition is later read back as one slice of every run. Runs are numbered by block, so a partition's
rows come back in source order whichever process wrote each run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A partition in the assembly holds about this much; sized from the source's size when it is known.
PARTITION_BYTES = 8 << 20
MAX_PARTITIONS = 512

META = [("key", "<u8"), ("line", "<u8")]


def partitions(size: int | None) -> int:
    """How many partitions for a source of ``size`` bytes: a power of two of about ``PARTITION_BYTES`` each."""
    if size is None:
        return MAX_PARTITIONS  # bounded partitions for any size; small sources pay a few empty ones
    wanted = max(1, math.ceil(size / PARTITION_BYTES))
    return min(MAX_PARTITIONS, 1 << (wanted - 1).bit_length())


@dataclass(frozen=True)
class Run:
    """One block's rows on disk: where each partition starts, in rows (``edges``) and in bytes (``offsets``)."""

    number: int
    edges: Any  # numpy int64 array of count + 1
    offsets: Any  # numpy int64 array of count + 1


@dataclass(frozen=True)
class Piece:
    """One partition's slice of one run: what a worker reads back."""

    run: int
    first_row: int
    rows: int
    offset: int
    size: int


def _paths(directory: Path, run: int) -> tuple[Path, Path]:
    return directory / f"run-{run:06d}.rows", directory / f"run-{run:06d}.meta"


def write_run(directory: Path, count: int, number: int, lines, keys, numbers) -> Run | None:
    """Write a block's valid rows (canonical bytes, their keys and line numbers) as run ``number``."""
    import numpy as np

    if not len(keys):
        return None
    # A 16-bit partition number: numpy's stable sort is a radix sort for it.
    shift = np.uint64(64 - int(math.log2(count)))
    parts = (keys >> shift).astype(np.uint16) if count > 1 else np.zeros(len(keys), np.uint16)
    order = np.argsort(parts, kind="stable")
    edges = np.searchsorted(parts[order], np.arange(count + 1))
    meta = np.empty(len(keys), dtype=META)
    meta["key"], meta["line"] = keys[order], numbers[order]
    lines = lines[order]
    sizes = np.zeros(count + 1, dtype=np.int64)
    rows_path, meta_path = _paths(directory, number)
    with rows_path.open("wb") as handle:
        for index in np.flatnonzero(np.diff(edges)):
            data = b"\n".join(lines[edges[index] : edges[index + 1]].tolist()) + b"\n"
            handle.write(data)
            sizes[index + 1] = len(data)
    meta.tofile(meta_path)
    return Run(number, edges, np.cumsum(sizes))


@dataclass
class Spool:
    """The runs written so far, in block order, and how to find a partition in them."""

    directory: Path
    count: int
    runs: list[Run] = field(default_factory=list)

    def add(self, run: Run | None) -> None:
        if run is not None:
            self.runs.append(run)

    def pieces(self, index: int) -> list[Piece]:
        """Partition ``index``'s slice of each run that has rows in it, in run order."""
        return [
            Piece(
                run.number,
                int(run.edges[index]),
                int(run.edges[index + 1] - run.edges[index]),
                int(run.offsets[index]),
                int(run.offsets[index + 1] - run.offsets[index]),
            )
            for run in self.runs
            if run.edges[index] != run.edges[index + 1]
        ]


def load(directory: Path, pieces: list[Piece]):
    """A partition's rows (object array of bytes) with their keys and line numbers, in run order; None if empty."""
    import numpy as np

    if not pieces:
        return None
    lines: list[bytes] = []
    metas = []
    for piece in pieces:
        rows_path, meta_path = _paths(directory, piece.run)
        with rows_path.open("rb") as handle:
            handle.seek(piece.offset)
            lines += handle.read(piece.size).split(b"\n")[:-1]
        metas.append(np.fromfile(meta_path, dtype=META, count=piece.rows, offset=piece.first_row * 16))
    meta = np.concatenate(metas)
    objects = np.empty(len(lines), dtype=object)
    objects[:] = lines
    return objects, meta["key"], meta["line"]
