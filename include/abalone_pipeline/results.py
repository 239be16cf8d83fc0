"""Parse and validate the results the trainer container prints, before anything acts on them."""

from __future__ import annotations

import json
import math
from typing import Any

RESULT_MARKER = "ABALONE_RESULT"
ERROR_MARKER = "ABALONE_ERROR"
TEST_METRICS = ("test_rmse", "test_mae", "test_r2", "test_mse")
SLICE_METRICS = ("rmse", "mae", "r2", "mse")


class ResultError(ValueError):
    """The container's output is missing or malformed."""


def extract(lines: list[str] | str | None, marker: str = RESULT_MARKER) -> str | None:
    """The payload of the last line that starts with ``marker``, if any."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    for line in reversed(lines or []):
        if line.startswith(marker + " "):
            return line[len(marker) + 1 :]
    return None


def _number(value: Any, where: str, *, optional: bool = False) -> float | None:
    """A JSON number as float; NaN and infinities become None.

    XCom is JSON without NaN, and the gate must see such a value to reject the candidate with a reason
    rather than have the task fail on it: None is how "not a finite number" travels.
    """
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ResultError(f"{where} must be a number, got {value!r}")
    return float(value) if math.isfinite(value) else None


def _metrics(value: Any, where: str, names: tuple[str, ...] = TEST_METRICS) -> dict[str, float | None]:
    """Named metrics; a missing or non-finite one is None (a reason to reject), a non-number is malformed."""
    if not isinstance(value, dict):
        raise ResultError(f"{where} must be an object of metrics")
    return {name: _number(value.get(name), f"{where}.{name}", optional=True) for name in names}


def _slices(value: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        raise ResultError(f"{where} must be an object of slices")
    return {
        str(name): {**_metrics(metrics, f"{where}.{name}", SLICE_METRICS), "rows": int(metrics.get("rows", 0))}
        for name, metrics in value.items()
    }


def _comparison(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("intervals"), dict):
        raise ResultError(f"{where} must hold rmse_diff, intervals and p_better")
    return {
        "rmse_diff": _number(value.get("rmse_diff"), f"{where}.rmse_diff", optional=True),
        "intervals": {
            str(level): [_number(bound, f"{where}.intervals.{level}", optional=True) for bound in bounds]
            for level, bounds in value["intervals"].items()
        },
        "p_better": _number(value.get("p_better"), f"{where}.p_better", optional=True),
    }


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ResultError(f"{where} must be a non-empty string, got {value!r}")
    return value


def parse_train(payload: str) -> dict[str, Any]:
    """The training result: ``run_id``, ``model_uri``, ``dataset_id``, ``metrics``, ``reused``."""
    data = _load(payload, "train")
    return {
        "run_id": _text(data.get("run_id"), "train.run_id"),
        "model_uri": _text(data.get("model_uri"), "train.model_uri"),
        "dataset_id": _text(data.get("dataset_id"), "train.dataset_id"),
        "metrics": _metrics(data.get("metrics"), "train.metrics"),
        "reused": bool(data.get("reused", False)),
        "code_revision": data.get("code_revision"),
    }


def parse_evaluation(payload: str) -> dict[str, Any]:
    """Candidate, champion, baselines and prior runs scored on one test split.

    ``champion`` is None before the first promotion; when it exists but cannot be scored it carries an
    ``error`` instead of metrics, and ``comparison`` (the paired bootstrap) is None.
    """
    data = _load(payload, "evaluate")
    candidate = data.get("candidate") or {}
    result: dict[str, Any] = {
        "dataset_id": _text(data.get("dataset_id"), "evaluate.dataset_id"),
        "test_rows": int(_number(data.get("test_rows"), "evaluate.test_rows")),
        "bootstrap": dict(data.get("bootstrap") or {}),
        "candidate": {
            "model_uri": _text(candidate.get("model_uri"), "evaluate.candidate.model_uri"),
            "run_id": _text(candidate.get("run_id"), "evaluate.candidate.run_id"),
            "metrics": _metrics(candidate.get("metrics"), "evaluate.candidate.metrics"),
            "slices": _slices(candidate.get("slices", {}), "evaluate.candidate.slices"),
        },
        "champion": None,
        "comparison": None,
        "baselines": {
            str(name): _metrics(metrics, f"evaluate.baselines.{name}")
            for name, metrics in (data.get("baselines") or {}).items()
        },
        "prior_runs": _prior_runs(data.get("prior_runs")),
    }
    champion = data.get("champion")
    if champion is not None:
        parsed = {
            "version": _text(str(champion.get("version") or ""), "evaluate.champion.version"),
            "run_id": champion.get("run_id"),
            "model_uri": _text(champion.get("model_uri"), "evaluate.champion.model_uri"),
        }
        if champion.get("error"):
            parsed["error"] = str(champion["error"])
        else:
            parsed["metrics"] = _metrics(champion.get("metrics"), "evaluate.champion.metrics")
            parsed["slices"] = _slices(champion.get("slices", {}), "evaluate.champion.slices")
        result["champion"] = parsed
    comparison = data.get("comparison")
    if comparison is not None:
        result["comparison"] = {
            "overall": _comparison(comparison.get("overall"), "evaluate.comparison.overall"),
            "slices": {
                str(name): _comparison(value, f"evaluate.comparison.slices.{name}")
                for name, value in (comparison.get("slices") or {}).items()
            },
        }
    return result


def _prior_runs(value: Any) -> dict[str, Any]:
    value = value or {}
    return {
        "basis": str(value.get("basis", "none")),
        "count": int(value.get("count", 0)),
        "median_test_rmse": _number(value.get("median_test_rmse"), "evaluate.prior_runs.median", optional=True),
        "best_test_rmse": _number(value.get("best_test_rmse"), "evaluate.prior_runs.best", optional=True),
    }


def _load(payload: str | None, command: str) -> dict[str, Any]:
    if payload is None:
        raise ResultError(f"the {command} container printed no {RESULT_MARKER} line")
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ResultError(f"the {command} result is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ResultError(f"the {command} result must be a JSON object")
    return data
