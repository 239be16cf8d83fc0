"""Publish: create-only uploads, each verified, and the manifest last as the commit marker.

A dataset without its manifest is incomplete and the next attempt completes it; a dataset already
staged is reused only if its objects still are what its manifest says.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from abalone_pipeline.objectstore import ContentMismatch, ObjectStore
from abalone_pipeline.staging.spec import DATASET_PREFIX, MANIFEST, StagingError

log = logging.getLogger(__name__)


def staged_manifest(store: ObjectStore, dataset_id: str) -> dict[str, Any] | None:
    """The manifest of ``dataset_id`` if it is staged, after checking its objects; None if it is not."""
    key = f"{DATASET_PREFIX}/{dataset_id}/{MANIFEST}"
    if not store.exists(key):
        return None
    manifest = json.loads(store.get(key))
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
    return manifest


def put(store: ObjectStore, key: str, path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Upload ``path`` create-only as ``key`` and verify it; the manifest entry of what was written."""
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


def commit(store: ObjectStore, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Write the manifest, create-only: the dataset is complete. Returns the manifest that is in the store
    (a concurrent attempt's, if it committed the same dataset first) and whether this one wrote it."""
    key = f"{DATASET_PREFIX}/{manifest['dataset_id']}/{MANIFEST}"
    written = store.put_if_absent(key, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return (manifest if written else json.loads(store.get(key))), written
