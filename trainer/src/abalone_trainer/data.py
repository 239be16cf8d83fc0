"""Read the staged splits named by a manifest, verifying each object's sha256 before use."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from abalone_contract.constants import FEATURES, LABEL, NUMERIC_FEATURES, SPLITS

log = logging.getLogger(__name__)


class DataError(Exception):
    """Staged data is missing, unreadable or does not match its manifest."""


@functools.cache
def _s3():
    """One S3 client per process: the fence is read at every epoch."""
    import boto3  # the DLC has it; only S3 sources need it

    return boto3.client("s3")


def read_uri(uri: str) -> bytes:
    """Return the bytes at a ``file://``, ``s3://`` or plain-path URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from botocore.exceptions import ClientError

        try:
            body = _s3().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
            return body.read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchBucket", "404", "403", "AccessDenied"):
                raise DataError(f"cannot read {uri}: {exc}") from exc
            raise  # throttling, timeouts, expired credentials: the task's retry may succeed
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme else uri)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {uri}: {exc}") from exc
    raise DataError(f"unsupported URI scheme {parsed.scheme!r} in {uri}; use file:// or s3://")


@dataclass(frozen=True)
class StagedData:
    """The three splits of one staged dataset, with the manifest that vouches for them."""

    manifest_uri: str
    manifest: dict[str, Any]
    frames: dict[str, pd.DataFrame]

    @property
    def dataset_id(self) -> str:
        return self.manifest["dataset_id"]

    def split_uri(self, split: str) -> str:
        return self.manifest["splits"][split]["uri"]

    def split_sha256(self, split: str) -> str:
        return self.manifest["splits"][split]["sha256"]


def load_manifest(manifest_uri: str) -> dict[str, Any]:
    """Read and sanity-check a staging manifest."""
    try:
        manifest = json.loads(read_uri(manifest_uri))
    except json.JSONDecodeError as exc:
        raise DataError(f"manifest {manifest_uri} is not valid JSON: {exc}") from exc
    missing = [split for split in SPLITS if split not in manifest.get("splits", {})]
    if missing or "dataset_id" not in manifest:
        raise DataError(f"manifest {manifest_uri} lacks dataset_id or splits {missing}; re-run the stage task")
    return manifest


def load_split(manifest: dict[str, Any], split: str) -> pd.DataFrame:
    """Read one split and check it against the manifest's checksum and row count."""
    entry = manifest["splits"][split]
    payload = read_uri(entry["uri"])
    digest = hashlib.sha256(payload).hexdigest()
    if digest != entry["sha256"]:
        raise DataError(
            f"{entry['uri']} has sha256 {digest}, but the manifest says {entry['sha256']}: "
            "the staged object changed after staging; re-stage the data"
        )
    frame = pd.read_csv(io.BytesIO(payload), dtype={"Sex": str})
    expected = [*FEATURES, LABEL]
    if list(frame.columns) != expected:
        raise DataError(f"{entry['uri']} has columns {list(frame.columns)}, expected {expected}")
    if len(frame) != entry["rows"]:
        raise DataError(f"{entry['uri']} has {len(frame)} rows, the manifest says {entry['rows']}")
    return frame


def load_staged(manifest_uri: str, splits: tuple[str, ...] = SPLITS) -> StagedData:
    """Load the named splits of the dataset behind ``manifest_uri``."""
    manifest = load_manifest(manifest_uri)
    frames = {split: load_split(manifest, split) for split in splits}
    log.info(
        "loaded dataset %s: %s",
        manifest["dataset_id"],
        ", ".join(f"{split}={len(frame)} rows" for split, frame in frames.items()),
    )
    return StagedData(manifest_uri=manifest_uri, manifest=manifest, frames=frames)


def to_features(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw feature columns as the model's named inputs, each of shape (n, 1); Sex stays a string."""
    inputs = {name: frame[[name]].to_numpy(dtype="float32") for name in NUMERIC_FEATURES}
    inputs["Sex"] = frame[["Sex"]].to_numpy(dtype=object)
    return inputs


def to_labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(dtype="float32")
