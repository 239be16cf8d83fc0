"""Validate an abalone source against a declared schema: file-level rules fail the run, row-level rules quarantine.

The row rules are a pandera schema (``_row_schema``) over the typed columns; this module reads a block
of lines, decides what is a file-level failure, and turns pandera's failure cases into one reason per
row. It works block by block so that a source of any size is checked in bounded memory; the rule that
spans blocks (exact duplicates) is applied where the rows are grouped by hash, in ``staging``.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from abalone_contract.constants import COLUMNS, SEXES

log = logging.getLogger(__name__)

MEASUREMENTS: tuple[str, ...] = COLUMNS[1:-1]
NUMERIC: tuple[str, ...] = COLUMNS[1:]
PARTS: tuple[str, ...] = ("Shucked_weight", "Viscera_weight", "Shell_weight")
# The oldest abalone in the UCI data has 29 rings; 50 leaves room for real outliers and still catches a
# value in the wrong unit (age in years is Rings + 1.5) or a typo.
MAX_RINGS = 50


class SourceRejected(ValueError):
    """The source breaks a file-level rule; the message names the source, the rule and what to do."""


@dataclass(frozen=True)
class ValidationPolicy:
    """How much bad data a run tolerates before it refuses the whole source."""

    # Quarantined rows may be at most this share of the data rows; above it the source is refused.
    max_quarantine_fraction: float = 0.01

    def __post_init__(self) -> None:
        if not 0 <= self.max_quarantine_fraction < 1:
            raise ValueError(f"max_quarantine_fraction must be in [0, 1), got {self.max_quarantine_fraction}")


DEFAULT_POLICY = ValidationPolicy()


@functools.cache
def _row_schema():
    """The row rules, as a pandera schema over the typed columns (built lazily: pandera is heavy)."""
    import numpy as np
    import pandera.pandas as pa

    finite = pa.Check(lambda s: np.isfinite(s), name="finite")
    positive = pa.Check.gt(0)
    measurement = pa.Column(float, checks=[finite, positive], nullable=False)
    return pa.DataFrameSchema(
        {
            "Sex": pa.Column(None, pa.Check.isin(SEXES)),  # categorical or str: the values are what count
            **{name: measurement for name in MEASUREMENTS},
            "Rings": pa.Column(
                float,
                checks=[
                    pa.Check(lambda s: s == np.floor(s), name="whole_number"),
                    pa.Check.in_range(1, MAX_RINGS),
                ],
                nullable=False,
            ),
        },
        strict=True,
        ordered=True,
    )


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


# Header names are compared ignoring case, spaces, "_" and "-" (so the UCI "Whole weight" is Whole_weight);
# the short names of the UCI file's own documentation (abalone.names) are accepted too.
_UCI_SHORT_NAMES = {
    "Diam": "Diameter",
    "Whole": "Whole_weight",
    "Shucked": "Shucked_weight",
    "Viscera": "Viscera_weight",
    "Shell": "Shell_weight",
}
_HEADER_NAMES = {_normalise(name): name for name in COLUMNS} | {
    _normalise(short): name for short, name in _UCI_SHORT_NAMES.items()
}
# Delimiters a source may use instead of the comma, as a refusal names them.
_OTHER_DELIMITERS = {";": "';'", "\t": "tab", "|": "'|'"}
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _other_delimiter(fields: list[str]) -> str | None:
    """The delimiter that a row which does not split into the columns at its commas seems to use instead."""
    if len(fields) == len(COLUMNS):
        return None
    text = ",".join(fields)
    for mark, name in _OTHER_DELIMITERS.items():
        if len(text.split(mark)) == len(COLUMNS):
            return name
    if len(fields) == 1:
        if len(text.split()) == len(COLUMNS):
            return "space"
        mark = max(_OTHER_DELIMITERS, key=text.count)
        if mark in text:
            return _OTHER_DELIMITERS[mark]
    return None


def check_header(fields: list[str], source_uri: str, line: int = 1) -> bool:
    """Whether the first row (at ``line``) is a header.

    The file fails here if the row is split by another delimiter, if it is a header with wrong, renamed or
    reordered columns, or if it is data whose numbers cannot be read (every row would be quarantined).
    """
    delimiter = _other_delimiter(fields)
    if delimiter:
        found = "1 field" if len(fields) == 1 else f"{len(fields)} fields"
        raise SourceRejected(
            f"{source_uri} line {line}: {found} where {len(COLUMNS)} were expected: wrong delimiter? "
            f"(looks like {delimiter}-separated); the source must be comma-separated"
        )
    if any(_is_number(value) or _DECIMAL_COMMA.fullmatch(value) for value in fields[1:]):
        _check_numbers_readable(fields, source_uri, line)
        return False  # data: the original UCI file has no header
    _check_names(fields, source_uri)
    return True


def _check_numbers_readable(fields: list[str], source_uri: str, line: int) -> None:
    """Refuse a headerless file whose first row has decimal commas or no measurement that reads as a number."""
    unreadable = [value for value in fields[1:] if not _is_number(value)]
    decimal_commas = any(_DECIMAL_COMMA.fullmatch(value) for value in unreadable)
    if not decimal_commas and any(_is_number(value) for value in fields[1 : len(COLUMNS) - 1]):
        return
    shown = ", ".join(repr(value) for value in unreadable[:3])
    if len(unreadable) > 3:
        shown += f" and {len(unreadable) - 3} more"
    hint = " (decimal commas? the decimal mark must be '.')" if decimal_commas else ""
    raise SourceRejected(
        f"{source_uri} line {line}: the file has no header (its first row is data) and the row's fields cannot be "
        f"read: {len(fields)} fields found ({len(COLUMNS)} expected); {shown} are not numbers{hint}"
    )


def _check_names(fields: list[str], source_uri: str) -> None:
    """Refuse a header that does not name the columns in their order."""
    names = [_HEADER_NAMES.get(_normalise(value)) for value in fields]
    if names == list(COLUMNS):
        return
    if len(fields) != len(COLUMNS):
        raise SourceRejected(
            f"{source_uri}: the header has {len(fields)} columns ({', '.join(fields)}), "
            f"expected {len(COLUMNS)}: {', '.join(COLUMNS)}"
        )
    out_of_place = [
        value
        for value, name, want in zip(fields, names, COLUMNS, strict=True)
        if name is not None and name != want and names.count(name) == 1
    ]
    if None not in names and sorted(names) == sorted(COLUMNS):
        raise SourceRejected(
            f"{source_uri}: the header's columns are reordered ({', '.join(out_of_place)} out of place): "
            f"{', '.join(fields)}. Columns are read by position: write them in the order {', '.join(COLUMNS)}"
        )
    if all(name in (None, want) for name, want in zip(names, COLUMNS, strict=True)):
        wrong = [
            f"{got!r} where {want!r} was expected"
            for got, name, want in zip(fields, names, COLUMNS, strict=True)
            if name is None
        ]
        raise SourceRejected(f"{source_uri}: unknown or renamed columns: {'; '.join(wrong)}")
    problems = [
        f"{label} {', '.join(values)}"
        for label, values in (
            ("unknown or renamed:", [repr(value) for value, name in zip(fields, names, strict=True) if name is None]),
            ("missing:", [name for name in COLUMNS if name not in names]),
            ("repeated:", sorted({name for name in names if name and names.count(name) > 1})),
            ("out of place:", out_of_place),
        )
        if values
    ]
    raise SourceRejected(
        f"{source_uri}: the header ({', '.join(fields)}) does not name the expected columns: {'; '.join(problems)}. "
        f"Expected {', '.join(COLUMNS)}"
    )


@dataclass
class FileState:
    """What the file-level rules learn across blocks: notes on what was normalised, the first data row."""

    source_uri: str
    notes: list[str] = field(default_factory=list)
    text_seen: bool = False  # a non-blank line was read (and checked for being a header)
    first_row_checked: bool = False

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass
class Block:
    """The outcome of the row rules on one block of lines.

    ``lines`` holds each valid row in canonical form (fields stripped, joined by commas) and ``numbers``
    its physical line in the source; ``columns`` holds the valid rows' numeric columns (one array row
    per column); ``sexes`` counts the valid rows of each Sex.
    """

    lines: Any  # numpy object array of bytes
    numbers: Any  # numpy uint64 array
    columns: Any  # numpy float64 array of shape (numeric columns, rows)
    sexes: dict[str, int]
    quarantine: list[tuple[int, str, str, str]]  # (line, rule, reason, fields as read)
    heavier: int  # valid rows with a part heavier than the whole


def check_encoding(block: bytes, first_line: int, state: FileState) -> bool:
    """Refuse bytes that are not UTF-8 text; return whether the block is plain ASCII."""
    import numpy as np

    ascii_only = not len(block) or int(np.frombuffer(block, np.uint8).max()) < 128
    if not ascii_only:
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = first_line + block.count(b"\n", 0, exc.start)
            raise SourceRejected(f"{state.source_uri} line {line} is not UTF-8 text: {exc.reason}") from exc
    if b"\x00" in block:
        line = first_line + block.count(b"\n", 0, block.index(b"\x00"))
        raise SourceRejected(f"{state.source_uri} line {line} contains NUL bytes: it is not a CSV text file")
    return ascii_only


IRREGULAR = (b"\r", b'"', b" ", b"\t")


def _is_canonical(block: bytes, ascii_only: bool) -> bool:
    """Whether every line of the block is already in canonical form: plain ASCII, nothing to strip.

    Blank lines are not looked for here: pyarrow skips them, and a row count that differs from the
    line count sends the block down the line-by-line path.
    """
    return ascii_only and not any(mark in block for mark in IRREGULAR)


# A quarantined row is recorded as read, up to this many characters (an abalone row has about 50).
MAX_RECORDED_ROW = 1024


def _clip(text: str) -> str:
    return text if len(text) <= MAX_RECORDED_ROW else text[:MAX_RECORDED_ROW] + f"... ({len(text):,} characters)"


def _read_lines(block: bytes, first_line: int, state: FileState):
    """The block's non-blank lines in canonical form with their line numbers, and the malformed ones.

    Each line is read with ``csv`` (quotes allowed; a quoted field cannot span lines); a row whose field
    count is wrong or whose field holds a comma or a quote is malformed.
    """
    import numpy as np

    text = block.decode("utf-8")
    if "\r\n" in text:
        state.note("CRLF line endings were read as LF")
    lines, numbers, malformed = [], [], []
    for offset, raw in enumerate(text.split("\n")[:-1]):
        line = first_line + offset
        try:
            fields = [value.strip() for value in next(csv.reader([raw.removesuffix("\r")]), [])]
        except csv.Error as exc:  # a stray carriage return, a field beyond csv's size limit
            malformed.append((line, "field_format", f"not a CSV row: {exc}", _clip(raw)))
            continue
        if not fields or fields == [""]:
            continue
        if len(fields) != len(COLUMNS):
            reason = f"has {len(fields)} fields, expected {len(COLUMNS)}"
            malformed.append((line, "column_count", reason, _clip(",".join(fields))))
        elif any("," in value or '"' in value for value in fields):
            reason = "a field contains a comma or a quote"
            malformed.append((line, "field_format", reason, _clip(",".join(fields))))
        else:
            lines.append(",".join(fields).encode())
            numbers.append(line)
    return lines, np.array(numbers, dtype=np.uint64), malformed


def _typed(body: bytes):
    """The rows of ``body`` (canonical lines) as a DataFrame with float numeric columns and a categorical
    Sex; a value that is not a number becomes NaN.

    None if a row has the wrong number of fields: the caller reads such a block line by line.
    """
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    wrong_width = []

    def on_invalid(row) -> str:
        wrong_width.append(row)
        return "skip"

    body = io.BytesIO(body)
    read = pacsv.ReadOptions(column_names=list(COLUMNS), block_size=4 << 20)
    parse = pacsv.ParseOptions(invalid_row_handler=on_invalid)
    types = {name: pa.float64() for name in COLUMNS[1:]} | {"Sex": pa.dictionary(pa.int32(), pa.string())}
    try:
        table = pacsv.read_csv(body, read, parse, pacsv.ConvertOptions(column_types=types))
    except pa.ArrowInvalid:  # a value that is not a number: read strings, coerce column by column
        body.seek(0)
        strings = pacsv.ConvertOptions(column_types=dict.fromkeys(NUMERIC, pa.string()) | {"Sex": types["Sex"]})
        table = pacsv.read_csv(body, read, parse, strings)
        frame = table.to_pandas()
        for name in COLUMNS[1:]:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    else:
        frame = table.to_pandas()
    return None if wrong_width else frame


def _check_first_row(lines: list[bytes], numbers, malformed: list, state: FileState) -> None:
    """A file whose first data row has the wrong number of fields is not this dataset: refuse it."""
    if state.first_row_checked or not (lines or malformed):
        return
    state.first_row_checked = True
    first_valid = int(numbers[0]) if len(lines) else None
    if malformed and malformed[0][1] == "column_count" and (first_valid is None or malformed[0][0] < first_valid):
        line, _, reason, _ = malformed[0]
        raise SourceRejected(
            f"{state.source_uri} line {line}: expected {len(COLUMNS)} columns ({', '.join(COLUMNS)}); the row {reason}"
        )


def heavier_than_whole(columns) -> int:
    """How many rows (numeric columns as array rows) have a part heavier than the whole abalone."""
    parts = columns[[NUMERIC.index(name) for name in PARTS]].max(axis=0)
    return int((parts > columns[NUMERIC.index("Whole_weight")]).sum())


def check_rows(block: bytes, first_line: int, state: FileState) -> Block:
    """Apply the row rules to a block of whole lines that starts at line ``first_line`` of the source."""
    import numpy as np
    import pandera.errors

    ascii_only = check_encoding(block, first_line, state)
    frame = None
    quarantine: list[tuple[int, str, str, str]] = []
    if _is_canonical(block, ascii_only):
        lines = block.split(b"\n")
        lines.pop()  # the block ends with a newline
        numbers = first_line + np.arange(len(lines), dtype=np.uint64)
        frame = _typed(block)
        if frame is not None and len(frame) != len(lines):
            frame = None  # blank lines
    if frame is None:
        lines, numbers, quarantine = _read_lines(block, first_line, state)
        frame = _typed(b"\n".join(lines) + b"\n") if lines else None
    _check_first_row(lines, numbers, quarantine, state)
    if frame is None:
        return Block(np.array([], dtype=object), numbers, np.zeros((len(NUMERIC), 0)), {}, quarantine, 0)

    bad: dict[int, list[tuple[str, str]]] = {}
    try:
        _row_schema().validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as errors:
        for case in errors.failure_cases.itertuples(index=False):
            if case.index is None or (isinstance(case.index, float) and np.isnan(case.index)):
                raise SourceRejected(f"{state.source_uri}: {case.check} failed for {case.column}") from errors
            row, column = int(case.index), case.column
            text = lines[row].split(b",")[COLUMNS.index(column)].decode()
            if case.check == "not_nullable":
                rule, message = f"{column}:not_numeric", f"{column} is not a number (found {text!r})"
            else:
                check = str(case.check).split("(")[0]
                rule, message = f"{column}:{check}", f"{column} {_CHECK_TEXT.get(check, check)} (found {text!r})"
            bad.setdefault(row, []).append((rule, message))
    for row, reasons in bad.items():
        # One entry per row; its first broken rule names it in the counts.
        reason = "; ".join(message for _, message in reasons)
        quarantine.append((int(numbers[row]), reasons[0][0], reason, _clip(lines[row].decode())))
    quarantine.sort()

    keep = np.ones(len(lines), dtype=bool)
    keep[list(bad)] = False
    columns = np.stack([frame[name].to_numpy(dtype=np.float64)[keep] for name in NUMERIC])
    heavier = heavier_than_whole(columns)
    objects = np.empty(len(lines), dtype=object)
    objects[:] = lines
    sexes = frame["Sex"][keep].value_counts()
    return Block(objects[keep], numbers[keep], columns, sexes.to_dict(), quarantine, heavier)


def check_fraction(
    quarantined: int, data_rows: int, counts: dict[str, int], first: list, source_uri: str, policy: ValidationPolicy
) -> None:
    """Refuse the source if more than the tolerated share of its rows is quarantined."""
    fraction = quarantined / data_rows if data_rows else 0.0
    if fraction > policy.max_quarantine_fraction:
        rules = ", ".join(f"{rule} ({count})" for rule, count in sorted(counts.items(), key=lambda kv: -kv[1]))
        examples = "; ".join(f"line {line}: {reason}" for line, _, reason, _ in first[:3])
        share, limit = _percentages(fraction, policy.max_quarantine_fraction)
        raise SourceRejected(
            f"{source_uri}: {quarantined} of {data_rows} rows ({share}) break the row rules, more "
            f"than the {limit} allowed: {rules}. First: {examples}"
        )


def _percentages(share: float, limit: float) -> tuple[str, str]:
    """``share`` and ``limit`` as percentages with the same decimals: at least one, enough to show the limit
    as set, and enough that a share above the limit never reads as equal to it (1.03% against 1.00%)."""
    # The limit as it was set (str(0.0125) is "0.0125"), not its binary approximation.
    decimals = min(max(1, -(Decimal(str(limit)) * 100).normalize().as_tuple().exponent), 12)
    while decimals < 15 and f"{share:.{decimals}%}" == f"{limit:.{decimals}%}":
        decimals += 1
    return f"{share:.{decimals}%}", f"{limit:.{decimals}%}"


_CHECK_TEXT = {
    "isin": "must be one of M, F, I",
    "greater_than": "must be positive",
    "finite": "must be finite",
    "whole_number": "must be a whole number",
    "in_range": f"must be between 1 and {MAX_RINGS}",
}
