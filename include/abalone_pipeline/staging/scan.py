"""Scan: the source in blocks of whole lines -> checked rows, a quarantine run, and the hash-partitioned spool.

The task's process reads the source, hashes every byte (SHA-256, in a thread) and cuts it into blocks;
each block is checked, keyed and spooled by ``scan_block``, in worker processes when there are several.
The first block with data is checked in the task's process, since it decides the file-level rules
(the header, the first row); the results come back in block order, so the outcome is the same for any
number of workers.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from abalone_pipeline.drift import Moments
from abalone_pipeline.staging.quarantine import Entry, QuarantineRun
from abalone_pipeline.staging.spec import SplitSpec, StagingError, row_keys
from abalone_pipeline.staging.spool import Run, Spool, write_run
from abalone_pipeline.staging.workers import in_order
from abalone_pipeline.validation import FileState, check_encoding, check_header, check_rows

log = logging.getLogger(__name__)

# A block of the source: the unit of work of a scan worker, and what bounds its memory.
BLOCK_BYTES = 8 << 20
PROGRESS_BYTES = 128 << 20


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
            block = bytes(memoryview(data)[start:stop])  # one copy, not two
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


def _without_header(blocks: Iterator[tuple[bytes, int]], state: FileState) -> Iterator[tuple[bytes, int]]:
    """The blocks with the header row, if the file has one, checked and cut off."""
    for block, first_line in blocks:
        if not state.text_seen:
            block, first_line, state.text_seen = _take_header(block, first_line, state)
            if not block:
                continue
        yield block, first_line


@dataclass
class BlockResult:
    """What a block left after ``scan_block``: its rows are in the spool, the rest comes back here."""

    rows: int  # data rows, valid or quarantined by the row rules
    quarantine: list[Entry]
    heavier: int
    moments: Moments
    run: Run | None
    notes: list[str]
    size: int


def scan_block(
    block: bytes, first_line: int, state: FileState, spec: SplitSpec, directory: Path, count: int, number: int
) -> BlockResult:
    """Check one block (``validation.check_rows``), key its valid rows and spool them as run ``number``."""
    checked = check_rows(block, first_line, state)
    moments = Moments()
    moments.add(checked.columns, checked.sexes)
    keys = row_keys(checked.lines, spec)
    run = write_run(directory, count, number, checked.lines, keys, checked.numbers)
    rows = len(checked.lines) + len(checked.quarantine)
    return BlockResult(rows, checked.quarantine, checked.heavier, moments, run, list(state.notes), len(block))


@dataclass
class Scan:
    source_sha256: str
    data_rows: int
    counts: Counter
    heavier: int
    notes: list[str]


def _results(
    blocks: Iterator[tuple[bytes, int]], state: FileState, spec: SplitSpec, spool: Spool, executor: Executor, ahead: int
) -> Iterator[BlockResult]:
    """``scan_block`` of each block, in block order: in this process until the first data row is checked
    (that block decides the file-level rules), then in ``executor`` with what the rules learned so far."""
    number = 0
    for block, first_line in blocks:
        yield scan_block(block, first_line, state, spec, spool.directory, spool.count, number)
        number += 1
        if state.first_row_checked:
            break
    learned = replace(state, notes=[])
    calls = (
        (scan_block, (block, first_line, learned, spec, spool.directory, spool.count, number))
        for number, (block, first_line) in enumerate(blocks, start=number)
    )
    yield from in_order(executor, calls, ahead)


def scan(
    chunks: Iterable[bytes],
    source_uri: str,
    spec: SplitSpec,
    spool: Spool,
    rules: QuarantineRun,
    moments: Moments,
    executor: Executor,
    ahead: int,
) -> Scan:
    """Read ``chunks`` to the end: spool the valid rows, write the row rules' quarantine to ``rules``, and
    add the valid rows to ``moments``."""
    digest = hashlib.sha256()
    state = FileState(source_uri)
    counts: Counter[str] = Counter()
    data_rows = heavier = 0
    started = time.monotonic()
    scanned = reported = 0
    with _Hasher(digest) as hasher:
        blocks = _without_header(_blocks(chunks, hasher, state), state)
        for result in _results(blocks, state, spec, spool, executor, ahead):
            rules.write(result.quarantine)
            counts.update(rule for _, rule, _, _ in result.quarantine)
            data_rows += result.rows
            heavier += result.heavier
            moments.merge(result.moments)
            spool.add(result.run)
            for note in result.notes:
                state.note(note)
            scanned += result.size
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
    return Scan(digest.hexdigest(), data_rows, counts, heavier, state.notes)
