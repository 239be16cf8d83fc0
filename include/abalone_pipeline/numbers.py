"""How a number reads in logs, reports and pages: four decimals, and "n/a" for what is not a finite number."""

from __future__ import annotations

import math
from typing import Any


def finite(*values: Any) -> bool:
    """Whether every value is a finite number (None, NaN, infinities, booleans and text are not)."""
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def metric(value: Any, *, signed: bool = False) -> str:
    """``2.0150`` (``+0.0150`` when ``signed``, for differences); ``n/a`` for anything else.

    Never the value's own text: pages put the result into HTML unescaped, and a report read back from
    MLflow is not trusted to hold numbers where it should.
    """
    if finite(value):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return "n/a"
