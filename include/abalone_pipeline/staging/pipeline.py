"""``stage``: scan, assemble and publish a source, and name the dataset by its content."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from abalone_pipeline.drift import Moments
from abalone_pipeline.objectstore import ObjectStore
from abalone_pipeline.staging import scan as scanning
from abalone_pipeline.staging import workers as pools
from abalone_pipeline.staging.assemble import assemble
from abalone_pipeline.staging.publish import commit, put, staged_manifest
from abalone_pipeline.staging.quarantine import QUARANTINE, QuarantineRun, merge, read_run
from abalone_pipeline.staging.spec import (
    DATASET_PREFIX,
    DEFAULT_SPEC,
    MANIFEST,
    MANIFEST_VERSION,
    SplitSpec,
    StagedDataset,
    StagingError,
)
from abalone_pipeline.staging.spool import Spool, partitions
from abalone_pipeline.validation import (
    COLUMNS,
    DEFAULT_POLICY,
    SourceRejected,
    ValidationPolicy,
    check_fraction,
)

log = logging.getLogger(__name__)


def stage(
    source: bytes | Iterable[bytes],
    source_uri: str,
    store: ObjectStore,
    spec: SplitSpec = DEFAULT_SPEC,
    policy: ValidationPolicy = DEFAULT_POLICY,
    *,
    size: int | None = None,
    workdir: str | Path | None = None,
    workers: int | None = None,
) -> StagedDataset:
    """Validate ``source`` (bytes, or chunks of bytes such as a ``sources.Source``) and stage it.

    ``size`` (or the source's own ``size``) sizes the partitions and caps the workers; ``workdir`` holds
    the spool, about twice the source's size, and is removed afterwards. ``workers`` processes scan and
    assemble (the CPUs available if None; never more than the source has blocks). A dataset already
    staged is left as it is, after checking its objects still match its manifest. Nothing is written if
    the source is refused.
    """
    chunks = [source] if isinstance(source, bytes) else source
    size = len(source) if isinstance(source, bytes) else size if size is not None else getattr(source, "size", None)
    count = pools.worker_count(workers, size, scanning.BLOCK_BYTES)
    try:
        return _stage(chunks, source_uri, store, spec, policy, size, workdir, count)
    except SourceRejected as exc:
        raise StagingError(str(exc)) from exc  # callers handle one error for staging as a whole


def _stage(
    chunks: Iterable[bytes],
    source_uri: str,
    store: ObjectStore,
    spec: SplitSpec,
    policy: ValidationPolicy,
    size: int | None,
    workdir: str | Path | None,
    workers: int,
) -> StagedDataset:
    started = time.monotonic()
    ahead = 2 * workers  # work in flight: a block or a partition each, so memory stays bounded
    with tempfile.TemporaryDirectory(prefix="abalone-stage-", dir=workdir) as tmp:
        directory = Path(tmp)
        spool = Spool(directory, partitions(size))
        rules = QuarantineRun(directory / "rules.csv")
        moments = Moments()
        # The workers end with the assembly (before the uploads), and before the spool is removed.
        with pools.pool(workers) as executor:
            try:
                scan = scanning.scan(chunks, source_uri, spec, spool, rules, moments, executor, ahead)
            finally:
                rules.close()
            seconds = {"scan": time.monotonic() - started}
            log.info(
                "scanned %s with %d worker%s: %d data rows, %d quarantined, sha256 %s (%.1f s)",
                source_uri,
                workers,
                "" if workers == 1 else "s",
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
                    list(itertools.islice(read_run(rules.path), 3)),
                    source_uri,
                    policy,
                )
            assembly = assemble(spool, spec, directory, moments, executor, ahead)
        splits = assembly.splits
        heavier = scan.heavier - assembly.heavier_duplicates
        quarantine, first = merge(directory / QUARANTINE, [rules.path, *assembly.duplicates_runs])
        counts = Counter(scan.counts)
        if assembly.duplicates:
            counts["duplicate"] = assembly.duplicates
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
        seconds["assemble"] = time.monotonic() - started - seconds["scan"]
        log.info("dataset %s assembled in %.1f s", dataset_id, seconds["assemble"])

        def staged(manifest: dict[str, Any], written: bool) -> StagedDataset:
            return StagedDataset(
                dataset_id,
                store.uri(f"{prefix}/{MANIFEST}"),
                {split: entry["rows"] for split, entry in manifest["splits"].items()},
                written,
                source_uri,
                scan.source_sha256,
                validation=summary,
                quarantine_uri=(manifest.get("quarantine") or {}).get("uri"),
                statistics=manifest.get("statistics"),
                seconds={**seconds, "write": time.monotonic() - started - seconds["scan"] - seconds["assemble"]},
                workers=workers,
            )

        existing = staged_manifest(store, dataset_id)
        if existing is not None:
            log.info("dataset %s is already staged at %s; not rewriting it", dataset_id, store.uri(prefix))
            return staged(existing, False)

        quarantine_entry = None
        if quarantine:
            quarantine_entry = put(store, f"{prefix}/{QUARANTINE}", directory / QUARANTINE, quarantine)
            log.warning(
                "quarantined %d of %d rows (%s) in %s",
                quarantined,
                scan.data_rows,
                ", ".join(f"{rule}: {count}" for rule, count in sorted(counts.items())),
                quarantine_entry["uri"],
            )
        entries = {name: put(store, f"{prefix}/{name}.csv", path, entry) for name, (path, entry) in splits.items()}

    manifest, written = commit(
        store,
        {
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
        },
    )
    log.info(
        "manifest %s %s; staged in %.1f s",
        store.uri(f"{prefix}/{MANIFEST}"),
        "written" if written else "was written by a concurrent attempt",
        time.monotonic() - started,
    )
    return staged(manifest, written)
