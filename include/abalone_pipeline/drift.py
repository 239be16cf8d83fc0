"""Summary statistics of a staged dataset, and its drift against the previously staged one.

Drift is advisory: it is logged and recorded with warnings past the thresholds, and never fails a run;
the gate, not the data, decides what is promoted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from abalone_pipeline.validation import NUMERIC, SEXES

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


class Moments:
    """Running per-column count, sum, sum of squares, min and max, and Sex / age-band counts.

    Fed block by block; rows can be taken out again (exact duplicates found later, ``merge`` with sign -1),
    since a duplicate leaves min and max unchanged and only the sums and counts need correcting.
    """

    def __init__(self) -> None:
        import numpy as np

        width = len(NUMERIC)
        self.count = 0
        self.sums = np.zeros(width)
        self.squares = np.zeros(width)
        self.low = np.full(width, math.inf)
        self.high = np.full(width, -math.inf)
        self.sexes = dict.fromkeys(SEXES, 0)
        self.bands = {name: 0 for name, _, _ in RINGS_BANDS}

    def _counts(self, columns, sexes: dict[str, int], sign: int) -> None:
        rings = columns[-1]
        for name in SEXES:
            self.sexes[name] += sign * int(sexes.get(name, 0))
        for name, low, high in RINGS_BANDS:
            self.bands[name] += sign * int(((rings > low) & (rings <= high)).sum())

    def add(self, columns, sexes: dict[str, int]) -> None:
        """Take in rows: ``columns`` holds one row per numeric column, ``sexes`` counts the rows of each Sex."""
        import numpy as np

        if not columns.shape[1]:
            return
        self.count += columns.shape[1]
        self.sums += columns.sum(axis=1)
        self.squares += np.einsum("ij,ij->i", columns, columns)
        self.low = self.low.clip(max=columns.min(axis=1))
        self.high = self.high.clip(min=columns.max(axis=1))
        self._counts(columns, sexes, 1)

    def merge(self, other: Moments, sign: int = 1) -> None:
        """Take in (``sign`` 1) or take out (-1) the rows ``other`` took in: a block's or a partition's,
        summed in a worker. Sums are added as ``add`` adds a block's, so the result does not depend on
        which process summed what."""
        self.count += sign * other.count
        self.sums += sign * other.sums
        self.squares += sign * other.squares
        if sign > 0:
            self.low = self.low.clip(max=other.low)
            self.high = self.high.clip(min=other.high)
        for name in SEXES:
            self.sexes[name] += sign * other.sexes[name]
        for name in self.bands:
            self.bands[name] += sign * other.bands[name]

    def result(self) -> dict[str, Any]:
        """Per-column mean, standard deviation, min and max; the shares of each Sex and age band."""
        count = self.count
        columns = {}
        for index, name in enumerate(NUMERIC):
            mean = self.sums[index] / count
            variance = max(self.squares[index] - count * mean * mean, 0.0) / max(count - 1, 1)
            columns[name] = {
                "mean": float(mean),
                "std": math.sqrt(variance),
                "min": float(self.low[index]),
                "max": float(self.high[index]),
            }
        return {
            "rows": count,
            "columns": columns,
            "sex_shares": {name: n / count for name, n in self.sexes.items()},
            "rings_shares": {name: n / count for name, n in self.bands.items()},
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
