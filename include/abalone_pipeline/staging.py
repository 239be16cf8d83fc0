"""Validate the abalone source, split it deterministically and stage it under a content-addressed prefix."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from abalone_pipeline.objectstore import ObjectStore

log = logging.getLogger(__name__)

# The staged files' header; abalone_trainer.defaults names the same columns and checks them on read.
COLUMNS: tuple[str, ...] = (
    "Sex",
    "Length",
    "Diameter",
    "Height",
    "Whole_weight",
    "Shucked_weight",
    "Viscera_weight",
    "Shell_weight",
    "Rings",
)
SEXES = frozenset({"M", "F", "I"})
SPLITS: tuple[str, ...] = ("train", "validation", "test")
MANIFEST = "manifest.json"
DATASET_PREFIX = "datasets/abalone"


class StagingError(ValueError):
    """The source is not usable; the message names the source, the row and the rule it broke."""


@dataclass(frozen=True)
class SplitSpec:
    """How rows are assigned to splits; part of the dataset's identity."""

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

    def to_xcom(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "manifest_uri": self.manifest_uri,
            "rows": self.rows,
            "written": self.written,
            "source_uri": self.source_uri,
            "source_sha256": self.source_sha256,
        }


def parse_rows(payload: bytes, source_uri: str) -> list[list[str]]:
    """Parse and check the source: 9 columns, Sex in M/F/I, numeric measurements, integer Rings."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StagingError(f"{source_uri} is not UTF-8 text: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    rows: list[list[str]] = []
    for line_number, fields in enumerate(reader, start=1):
        fields = [field.strip() for field in fields]
        if not fields or fields == [""]:
            continue
        if line_number == 1 and fields[0].lower() == "sex":
            continue  # a header row; the columns are positional either way
        if len(fields) != len(COLUMNS):
            raise StagingError(
                f"{source_uri} line {line_number}: expected {len(COLUMNS)} columns "
                f"({', '.join(COLUMNS)}), found {len(fields)}"
            )
        if fields[0] not in SEXES:
            raise StagingError(f"{source_uri} line {line_number}: Sex must be one of M, F, I, found {fields[0]!r}")
        for name, value in zip(COLUMNS[1:], fields[1:], strict=True):
            try:
                number = float(value)
            except ValueError:
                raise StagingError(
                    f"{source_uri} line {line_number}: {name} must be numeric, found {value!r}"
                ) from None
            if not math.isfinite(number):
                raise StagingError(f"{source_uri} line {line_number}: {name} must be finite, found {value!r}")
        if not fields[-1].isdigit():
            raise StagingError(f"{source_uri} line {line_number}: Rings must be a whole number, found {fields[-1]!r}")
        rows.append(fields)
    if not rows:
        raise StagingError(f"{source_uri} has no data rows")
    return rows


def split_rows(rows: list[list[str]], spec: SplitSpec) -> dict[str, list[list[str]]]:
    """Assign rows to train / validation / test with a seeded shuffle (stable across Python versions)."""
    order = list(range(len(rows)))
    random.Random(spec.seed).shuffle(order)
    n_test = round(len(rows) * spec.test_fraction)
    n_validation = round(len(rows) * spec.validation_fraction)
    if len(rows) - n_test - n_validation < 1 or n_test < 1 or n_validation < 1:
        raise StagingError(f"{len(rows)} rows are too few to split into train, validation and test")
    picks = {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_validation],
        "train": order[n_test + n_validation :],
    }
    return {split: [rows[i] for i in sorted(indices)] for split, indices in picks.items()}


def to_csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stage(payload: bytes, source_uri: str, store: ObjectStore, spec: SplitSpec = SplitSpec()) -> StagedDataset:
    """Validate ``payload`` and stage its splits plus a manifest; a dataset already staged is left as it is.

    The prefix is derived from the parsed rows and the split spec, so the same data lands at the same
    prefix whatever its source. The manifest is written last and only if absent: its presence means the
    splits it lists are complete.
    """
    rows = parse_rows(payload, source_uri)
    canonical = to_csv(rows)
    split_json = json.dumps(
        {"seed": spec.seed, "test_fraction": spec.test_fraction, "validation_fraction": spec.validation_fraction},
        sort_keys=True,
    )
    dataset_id = sha256(canonical + b"\0" + split_json.encode())[:16]
    prefix = f"{DATASET_PREFIX}/{dataset_id}"
    manifest_key = f"{prefix}/{MANIFEST}"

    if store.exists(manifest_key):
        manifest = json.loads(store.get(manifest_key))
        log.info("dataset %s is already staged at %s; not rewriting it", dataset_id, store.uri(prefix))
        rows_by_split = {split: entry["rows"] for split, entry in manifest["splits"].items()}
        return StagedDataset(dataset_id, store.uri(manifest_key), rows_by_split, False, source_uri, sha256(payload))

    splits = split_rows(rows, spec)
    entries = {}
    for split in SPLITS:
        body = to_csv(splits[split])
        key = f"{prefix}/{split}.csv"
        if not store.put_if_absent(key, body) and sha256(store.get(key)) != sha256(body):
            raise StagingError(f"{store.uri(key)} exists with different content; the store was modified by hand")
        entries[split] = {"uri": store.uri(key), "key": key, "rows": len(splits[split]), "sha256": sha256(body)}
        log.info("staged %s: %d rows, sha256 %s", store.uri(key), len(splits[split]), entries[split]["sha256"])

    manifest = {
        "schema_version": 1,
        "dataset_id": dataset_id,
        "source_uri": source_uri,
        "source_sha256": sha256(payload),
        "rows": len(rows),
        "columns": list(COLUMNS),
        "label": "Rings",
        "split": json.loads(split_json),
        "splits": entries,
    }
    written = store.put_if_absent(manifest_key, json.dumps(manifest, indent=2, sort_keys=True).encode())
    log.info("manifest %s %s", store.uri(manifest_key), "written" if written else "was written by a concurrent attempt")
    rows_by_split = {split: entry["rows"] for split, entry in entries.items()}
    return StagedDataset(dataset_id, store.uri(manifest_key), rows_by_split, written, source_uri, sha256(payload))
