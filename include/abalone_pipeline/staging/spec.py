"""What staging produces and how rows are split: the split spec, the row keys, the staged dataset, the error."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from abalone_pipeline.validation import COLUMNS

MANIFEST = "manifest.json"
DATASET_PREFIX = "datasets/abalone"
MANIFEST_VERSION = 3
HEADER = (",".join(COLUMNS) + "\n").encode()
SPLIT_BY_INDEX = ("test", "validation", "train")


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
    # How many processes scanned and assembled the source (1: the task's own process alone).
    workers: int = 1

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
            "workers": self.workers,
        }


DEFAULT_SPEC = SplitSpec()


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


def split_of(row: bytes | list[str], spec: SplitSpec) -> str:
    """The split of one row, given canonical (``b"M,0.455,..."``) or as fields."""
    line = row if isinstance(row, bytes) else ",".join(row).encode()
    return SPLIT_BY_INDEX[int(split_index(row_keys([line], spec), spec)[0])]
