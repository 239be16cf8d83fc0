"""Validate the abalone source, split it deterministically and stage it under a content-addressed prefix."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from abalone_pipeline.drift import statistics
from abalone_pipeline.objectstore import ObjectStore
from abalone_pipeline.validation import COLUMNS, DEFAULT_POLICY, StagingError, Validated, ValidationPolicy, validate

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "SPLITS", "SplitSpec", "StagedDataset", "StagingError", "split_rows", "stage"]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.csv"
DATASET_PREFIX = "datasets/abalone"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SplitSpec:
    """How rows are assigned to splits; part of the dataset's identity.

    Each row's split follows from a hash of the seed and the row's own content, not from its position
    or the other rows: a row keeps its split as the data grows, so nightly evaluations stay comparable.
    """

    seed: int = 42
    test_fraction: float = 0.2
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.test_fraction < 1 and 0 < self.validation_fraction < 1):
            raise StagingError("test_fraction and validation_fraction must each be in (0, 1)")
        if self.test_fraction + self.validation_fraction >= 0.9:
            raise StagingError("test_fraction + validation_fraction must leave at least 10% for training")


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
    # The manifest's statistics (drift.statistics), to compare with the next dataset without re-reading it.
    statistics: dict[str, Any] | None = None

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
        }


def split_of(row: list[str], spec: SplitSpec) -> str:
    """The split of one row: a uniform number from sha256(seed, row) against the split fractions."""
    digest = hashlib.sha256(f"{spec.seed}\0{','.join(row)}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < spec.test_fraction:
        return "test"
    if position < spec.test_fraction + spec.validation_fraction:
        return "validation"
    return "train"


def split_rows(rows: list[list[str]], spec: SplitSpec) -> dict[str, list[list[str]]]:
    """Assign each row to train / validation / test by ``split_of``, keeping the source order within a split."""
    splits: dict[str, list[list[str]]] = {split: [] for split in SPLITS}
    for row in rows:
        splits[split_of(row, spec)].append(row)
    if any(not part for part in splits.values()):
        sizes = ", ".join(f"{split}={len(part)}" for split, part in splits.items())
        raise StagingError(f"{len(rows)} rows are too few to split into train, validation and test ({sizes})")
    return splits


def to_csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def quarantine_csv(validated: Validated) -> bytes:
    """The rows that broke a rule: their line in the source, the rule, the reason and the fields as read."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["line", "rule", "reason", "fields"])
    for entry in validated.quarantine:
        writer.writerow([entry["line"], entry["rule"], entry["reason"], ",".join(entry["fields"])])
    return buffer.getvalue().encode("utf-8")


def _put(store: ObjectStore, key: str, body: bytes) -> dict[str, Any]:
    """Create ``key`` with ``body``; an existing object with the same content counts as success."""
    if not store.put_if_absent(key, body) and sha256(store.get(key)) != sha256(body):
        raise StagingError(f"{store.uri(key)} exists with different content; the store was modified by hand")
    return {"uri": store.uri(key), "key": key, "sha256": sha256(body)}


def stage(
    payload: bytes,
    source_uri: str,
    store: ObjectStore,
    spec: SplitSpec = SplitSpec(),
    policy: ValidationPolicy = DEFAULT_POLICY,
) -> StagedDataset:
    """Validate ``payload`` and stage its splits, its quarantine and a manifest; a staged dataset is left as it is.

    The prefix is derived from the valid rows, the quarantined rows and the split spec, so the same data
    lands at the same prefix whatever its source. The manifest is written last and only if absent: its
    presence means the objects it lists are complete.
    """
    validated = validate(payload, source_uri, policy)
    canonical = to_csv(validated.rows)
    quarantine = quarantine_csv(validated) if validated.quarantine else b""
    split_json = json.dumps(
        {
            "method": "sha256 of seed and row",
            "seed": spec.seed,
            "test_fraction": spec.test_fraction,
            "validation_fraction": spec.validation_fraction,
        },
        sort_keys=True,
    )
    dataset_id = sha256(canonical + b"\0" + quarantine + b"\0" + split_json.encode())[:16]
    prefix = f"{DATASET_PREFIX}/{dataset_id}"
    manifest_key = f"{prefix}/{MANIFEST}"
    summary = validated.summary()

    def staged(manifest: dict[str, Any], written: bool) -> StagedDataset:
        return StagedDataset(
            dataset_id,
            store.uri(manifest_key),
            {split: entry["rows"] for split, entry in manifest["splits"].items()},
            written,
            source_uri,
            sha256(payload),
            validation=summary,
            quarantine_uri=(manifest.get("quarantine") or {}).get("uri"),
            statistics=manifest.get("statistics"),
        )

    if store.exists(manifest_key):
        manifest = json.loads(store.get(manifest_key))
        log.info("dataset %s is already staged at %s; not rewriting it", dataset_id, store.uri(prefix))
        return staged(manifest, False)

    splits = split_rows(validated.rows, spec)
    entries = {}
    for split in SPLITS:
        entries[split] = {**_put(store, f"{prefix}/{split}.csv", to_csv(splits[split])), "rows": len(splits[split])}
        log.info(
            "staged %s: %d rows, sha256 %s", entries[split]["uri"], entries[split]["rows"], entries[split]["sha256"]
        )
    quarantine_entry = None
    if quarantine:
        quarantine_entry = {**_put(store, f"{prefix}/{QUARANTINE}", quarantine), "rows": len(validated.quarantine)}
        log.warning(
            "quarantined %d of %d rows (%s) in %s",
            len(validated.quarantine),
            validated.data_rows,
            ", ".join(f"{rule}: {count}" for rule, count in sorted(validated.counts.items())),
            quarantine_entry["uri"],
        )

    manifest = {
        "schema_version": 2,
        "dataset_id": dataset_id,
        "source_uri": source_uri,
        "source_sha256": sha256(payload),
        "rows": len(validated.rows),
        "columns": list(COLUMNS),
        "label": "Rings",
        "split": json.loads(split_json),
        "splits": entries,
        "validation": {**summary, "max_quarantine_fraction": policy.max_quarantine_fraction},
        "statistics": statistics(validated.rows),
        "quarantine": quarantine_entry,
    }
    written = store.put_if_absent(manifest_key, json.dumps(manifest, indent=2, sort_keys=True).encode())
    log.info("manifest %s %s", store.uri(manifest_key), "written" if written else "was written by a concurrent attempt")
    return staged(manifest, written)
