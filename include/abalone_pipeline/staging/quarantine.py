"""Quarantined rows: sorted runs written as they are found, merged into one CSV in line order at the end."""

from __future__ import annotations

import csv
import heapq
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from abalone_pipeline.objectstore import file_sha256

QUARANTINE = "quarantine.csv"
QUARANTINE_HEADER = ["line", "rule", "reason", "fields"]

Entry = tuple[int, str, str, str]  # (line, rule, reason, fields as read)


class QuarantineRun:
    """Quarantined rows as CSV, written in line order; a sorted run to merge at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle, lineterminator="\n")
        self.count = 0

    def write(self, entries: list[Entry]) -> None:
        self.writer.writerows(entries)
        self.count += len(entries)

    def close(self) -> None:
        self.handle.close()


def write_run(path: Path, entries: list[Entry]) -> Path:
    """Write sorted ``entries`` as one run at ``path``."""
    run = QuarantineRun(path)
    try:
        run.write(entries)
    finally:
        run.close()
    return path


def read_run(path: Path) -> Iterator[Entry]:
    with path.open(newline="", encoding="utf-8") as handle:
        for line, rule, reason, fields in csv.reader(handle):
            yield int(line), rule, reason, fields


def merge(path: Path, runs: list[Path]) -> tuple[dict[str, Any] | None, list[Entry]]:
    """Merge the sorted runs into one quarantine CSV in line order: its entry (None if nothing was
    quarantined) and the first three rows, for messages."""
    first: list[Entry] = []
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(QUARANTINE_HEADER)
        for entry in heapq.merge(*(read_run(run) for run in runs)):
            writer.writerow(entry)
            count += 1
            if len(first) < 3:
                first.append(entry)
    if not count:
        return None, first
    return {"rows": count, "sha256": file_sha256(path), "bytes": path.stat().st_size}, first
