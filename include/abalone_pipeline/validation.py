"""Validate an abalone source against a declared schema: file-level rules fail the run, row-level rules quarantine.

The row rules are a pandera schema (``ROW_SCHEMA``) over the typed columns; this module only reads the
file, decides what is a file-level failure, and turns pandera's failure cases into one reason per row.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

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
MEASUREMENTS: tuple[str, ...] = COLUMNS[1:-1]
PARTS: tuple[str, ...] = ("Shucked_weight", "Viscera_weight", "Shell_weight")
SEXES: tuple[str, ...] = ("M", "F", "I")
# The oldest abalone in the UCI data has 29 rings; 50 leaves room for real outliers and still catches a
# value in the wrong unit (age in years is Rings + 1.5) or a typo.
MAX_RINGS = 50


class StagingError(ValueError):
    """The source is not usable; the message names the source and the rule it broke."""


@dataclass(frozen=True)
class ValidationPolicy:
    """How much bad data a run tolerates before it refuses the whole source."""

    # Quarantined rows may be at most this share of the data rows; above it the source is refused.
    max_quarantine_fraction: float = 0.01

    def __post_init__(self) -> None:
        if not 0 <= self.max_quarantine_fraction < 1:
            raise ValueError(f"max_quarantine_fraction must be in [0, 1), got {self.max_quarantine_fraction}")


DEFAULT_POLICY = ValidationPolicy()


@dataclass
class Validated:
    """The rows that passed, those quarantined with a reason each, and what was only worth a warning."""

    rows: list[list[str]]
    quarantine: list[dict[str, Any]]
    data_rows: int
    counts: dict[str, int] = field(default_factory=dict)  # quarantined rows per rule
    warnings: dict[str, int] = field(default_factory=dict)  # rows kept, but worth a look
    notes: list[str] = field(default_factory=list)  # what was normalised at file level

    def summary(self) -> dict[str, Any]:
        return {
            "data_rows": self.data_rows,
            "valid_rows": len(self.rows),
            "quarantined_rows": len(self.quarantine),
            "quarantined_by_rule": dict(sorted(self.counts.items())),
            "warnings": dict(sorted(self.warnings.items())),
            "notes": self.notes,
        }


def _row_schema():
    """The row rules, as a pandera schema over the typed columns (built lazily: pandera is heavy)."""
    import numpy as np
    import pandera.pandas as pa

    finite = pa.Check(lambda s: np.isfinite(s), name="finite")
    positive = pa.Check.gt(0)
    measurement = pa.Column(float, checks=[finite, positive], nullable=False)
    return pa.DataFrameSchema(
        {
            "Sex": pa.Column(str, pa.Check.isin(SEXES)),
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


def _read_lines(payload: bytes, source_uri: str, notes: list[str]) -> list[tuple[int, list[str]]]:
    """Decode and split into (line number, stripped fields), blank lines dropped; BOM and CRLF accepted."""
    if payload.startswith(b"\xef\xbb\xbf"):
        notes.append("a UTF-8 byte order mark was removed")
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StagingError(f"{source_uri} is not UTF-8 text (byte {exc.start}): {exc.reason}") from exc
    if "\r\n" in text:
        notes.append("CRLF line endings were read as LF")
    if "\x00" in text:
        raise StagingError(f"{source_uri} contains NUL bytes: it is not a CSV text file")
    lines = []
    reader = csv.reader(io.StringIO(text, newline=""))
    for fields in reader:
        fields = [value.strip() for value in fields]
        if fields and fields != [""]:
            lines.append((reader.line_num, fields))  # the physical line, as an editor shows it
    return lines


def _check_header(fields: list[str], source_uri: str) -> bool:
    """Whether the first row is a header; a header with wrong, renamed or reordered columns fails the file."""
    try:
        float(fields[1] if len(fields) > 1 else "x")
        return False  # a number in the second column: data, the original headerless UCI file
    except ValueError:
        pass
    expected = [_normalise(name) for name in COLUMNS]
    found = [_normalise(name) for name in fields]
    if found == expected:
        return True
    if len(found) != len(expected):
        raise StagingError(
            f"{source_uri}: the header has {len(found)} columns ({', '.join(fields)}), "
            f"expected {len(COLUMNS)}: {', '.join(COLUMNS)}"
        )
    if sorted(found) == sorted(expected):
        raise StagingError(
            f"{source_uri}: the header's columns are reordered ({', '.join(fields)}); expected {COLUMNS}"
        )
    wrong = [
        f"{got!r} where {want!r} was expected"
        for got, want in zip(fields, COLUMNS, strict=True)
        if _normalise(got) != _normalise(want)
    ]
    raise StagingError(f"{source_uri}: unknown or renamed columns: {'; '.join(wrong)}")


def validate(payload: bytes, source_uri: str, policy: ValidationPolicy | None = None) -> Validated:
    """Apply the file and row rules to ``payload``; raise ``StagingError`` if the source must be refused."""
    import numpy as np
    import pandas as pd
    import pandera.errors

    policy = policy or DEFAULT_POLICY
    notes: list[str] = []
    lines = _read_lines(payload, source_uri, notes)
    if not lines:
        raise StagingError(f"{source_uri} is empty")
    if _check_header(lines[0][1], source_uri):
        lines = lines[1:]
        notes.append("a header row was read and checked")
    if not lines:
        raise StagingError(f"{source_uri} has a header but no data rows")
    first_line, first = lines[0]
    if len(first) != len(COLUMNS):
        raise StagingError(
            f"{source_uri} line {first_line}: expected {len(COLUMNS)} columns ({', '.join(COLUMNS)}), "
            f"found {len(first)}"
        )

    quarantine: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()

    def reject(line: int, fields: list[str], rule: str, reason: str) -> None:
        quarantine.append({"line": line, "rule": rule, "reason": reason, "fields": fields})
        counts[rule] += 1

    shaped = []
    for line, fields in lines:
        if len(fields) == len(COLUMNS):
            shaped.append((line, fields))
        else:
            reject(line, fields, "column_count", f"has {len(fields)} fields, expected {len(COLUMNS)}")

    raw = pd.DataFrame([fields for _, fields in shaped], columns=list(COLUMNS), index=[n for n, _ in shaped])
    typed = raw.copy()
    for name in COLUMNS[1:]:
        typed[name] = pd.to_numeric(raw[name], errors="coerce").astype("float64")
    bad_reasons: dict[int, list[tuple[str, str]]] = {}
    try:
        _row_schema().validate(typed, lazy=True)
    except pandera.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        for case in cases.itertuples(index=False):
            if case.index is None or (isinstance(case.index, float) and np.isnan(case.index)):
                raise StagingError(f"{source_uri}: {case.check} failed for {case.column}") from errors
            line = int(case.index)
            column = case.column
            text = raw.at[line, column]
            if case.check == "not_nullable":
                rule, message = f"{column}:not_numeric", f"{column} is not a number (found {text!r})"
            else:
                check = str(case.check).split("(")[0]
                rule = f"{column}:{check}"
                message = f"{column} {_CHECK_TEXT.get(check, check)} (found {text!r})"
            bad_reasons.setdefault(line, []).append((rule, message))
    for line, reasons in bad_reasons.items():
        # One entry per row; its first broken rule names it in the counts.
        reject(line, raw.loc[line].tolist(), reasons[0][0], "; ".join(message for _, message in reasons))

    good = typed.drop(index=list(bad_reasons))
    duplicated = raw.loc[good.index].duplicated(keep="first")
    first_seen: dict[tuple[str, ...], int] = {}
    for line, fields in raw.loc[good.index].iterrows():
        key = tuple(fields)
        if duplicated.at[line]:
            reject(line, list(key), "duplicate", f"exact duplicate of line {first_seen[key]}")
        else:
            first_seen.setdefault(key, line)
    good = good.loc[~duplicated]

    warnings: dict[str, int] = {}
    heavier = int((good[list(PARTS)].max(axis=1) > good["Whole_weight"]).sum())
    if heavier:
        warnings["part_heavier_than_whole"] = heavier
        log.warning("%s: %d rows have a part heavier than the whole abalone (kept)", source_uri, heavier)

    quarantine.sort(key=lambda entry: entry["line"])
    data_rows = len(lines)
    fraction = len(quarantine) / data_rows
    if fraction > policy.max_quarantine_fraction:
        rules = ", ".join(f"{rule} ({count})" for rule, count in counts.most_common())
        examples = "; ".join(f"line {q['line']}: {q['reason']}" for q in quarantine[:3])
        raise StagingError(
            f"{source_uri}: {len(quarantine)} of {data_rows} rows ({fraction:.1%}) break the row rules, more than "
            f"the {policy.max_quarantine_fraction:.1%} allowed: {rules}. First: {examples}"
        )
    rows = raw.loc[good.index].values.tolist()
    return Validated(rows, quarantine, data_rows, dict(counts), warnings, notes)


_CHECK_TEXT = {
    "isin": "must be one of M, F, I",
    "greater_than": "must be positive",
    "finite": "must be finite",
    "whole_number": "must be a whole number",
    "in_range": f"must be between 1 and {MAX_RINGS}",
}
