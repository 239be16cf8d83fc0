"""Summary statistics of a staged dataset, and its drift against the previously staged one.

Drift is advisory: it is logged and recorded with warnings past the thresholds, and never fails a run;
the gate, not the data, decides what is promoted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from abalone_pipeline.validation import COLUMNS, SEXES

NUMERIC: tuple[str, ...] = COLUMNS[1:]
# The gate's age bands: a shift in the label's distribution is what most changes what RMSE means.
RINGS_BANDS: tuple[tuple[str, float, float], ...] = (
    ("rings<=7", -math.inf, 7),
    ("rings=8-11", 7, 11),
    ("rings>=12", 11, math.inf),
)


@dataclass(frozen=True)
class DriftThresholds:
    # A column's mean may move by this many of the previous standard deviations.
    max_mean_shift: float = 0.2
    # The share of a Sex or an age band may move by this much (0.05 = 5 percentage points).
    max_share_shift: float = 0.05


def statistics(rows: list[list[str]]) -> dict[str, Any]:
    """Per-column mean, standard deviation, min and max; the shares of each Sex and age band."""
    count = len(rows)
    columns: dict[str, dict[str, float]] = {}
    for index, name in enumerate(COLUMNS):
        if name not in NUMERIC:
            continue
        values = [float(row[index]) for row in rows]
        mean = math.fsum(values) / count
        variance = math.fsum((value - mean) ** 2 for value in values) / max(count - 1, 1)
        columns[name] = {"mean": mean, "std": math.sqrt(variance), "min": min(values), "max": max(values)}
    rings = [float(row[-1]) for row in rows]
    return {
        "rows": count,
        "columns": columns,
        "sex_shares": {sex: sum(row[0] == sex for row in rows) / count for sex in SEXES},
        "rings_shares": {name: sum(low < r <= high for r in rings) / count for name, low, high in RINGS_BANDS},
    }


def compare(previous: dict[str, Any], current: dict[str, Any], thresholds: DriftThresholds) -> dict[str, Any]:
    """How ``current`` differs from ``previous``, with a warning for each change past ``thresholds``."""
    warnings: list[str] = []
    columns = {}
    for name, now in current["columns"].items():
        before = previous["columns"].get(name)
        if before is None:
            continue
        shift = (now["mean"] - before["mean"]) / before["std"] if before["std"] > 0 else 0.0
        columns[name] = {
            "mean_shift_sd": shift,
            "std_ratio": now["std"] / before["std"] if before["std"] > 0 else None,
        }
        if abs(shift) > thresholds.max_mean_shift:
            warnings.append(
                f"{name} mean moved by {shift:+.2f} sd ({before['mean']:.4g} -> {now['mean']:.4g}), "
                f"more than {thresholds.max_mean_shift}"
            )
    shares = {}
    for kind in ("sex_shares", "rings_shares"):
        for name, now in current[kind].items():
            change = now - previous[kind].get(name, 0.0)
            shares[name] = change
            if abs(change) > thresholds.max_share_shift:
                warnings.append(
                    f"share of {name} moved by {change:+.1%} ({previous[kind].get(name, 0.0):.1%} -> {now:.1%}), "
                    f"more than {thresholds.max_share_shift:.0%}"
                )
    return {
        "rows": {"previous": previous["rows"], "current": current["rows"]},
        "columns": columns,
        "share_changes": shares,
        "warnings": warnings,
    }
