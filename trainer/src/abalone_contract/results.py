"""The results the trainer prints and the pipeline acts on: their shapes, how they are written and read.

The trainer writes a result with ``result_line`` (which checks it against the same parser the Airflow
side uses, so a malformed result fails in the container that made it), and the pipeline reads it back
with ``extract`` and ``parse_train`` / ``parse_evaluation``. A metric that is not a finite number
travels as None: XCom is JSON without NaN, and the gate must see such a value to reject the candidate
with a reason rather than have the task fail on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypedDict

from abalone_contract.constants import ERROR_MARKER, RESULT_MARKER, SLICE_METRICS, TEST_METRICS

Metrics = dict[str, float | None]


class ResultError(ValueError):
    """The container's output is missing or malformed."""


class TrainResult(TypedDict):
    run_id: str
    model_uri: str
    dataset_id: str
    metrics: Metrics
    reused: bool  # a retry found the finished run an earlier try made
    code_revision: str | None


class SliceMetrics(TypedDict):
    rmse: float | None
    mae: float | None
    r2: float | None
    mse: float | None
    rows: int


class Scored(TypedDict):
    model_uri: str
    run_id: str
    metrics: Metrics
    slices: dict[str, SliceMetrics]
    non_finite_predictions: int


class Champion(TypedDict, total=False):
    version: str
    run_id: str | None
    model_uri: str
    metrics: Metrics  # absent when it could not be scored; ``error`` says why
    slices: dict[str, SliceMetrics]
    non_finite_predictions: int
    error: str


class Comparison(TypedDict):
    rmse_diff: float | None  # candidate minus champion; negative is better
    intervals: dict[str, list[float | None]]  # confidence level (as in CONFIDENCE_LEVELS) -> [low, high]
    p_better: float | None


class PriorRuns(TypedDict):
    basis: str  # "same dataset", "any dataset" or "none"
    count: int
    median_test_rmse: float | None
    best_test_rmse: float | None


class Evaluation(TypedDict):
    """Candidate, champion, baselines and prior runs scored on one test split.

    ``champion`` is None before the first promotion; ``comparison`` (the paired bootstrap, overall and per
    slice) is None unless the champion was scored.
    """

    dataset_id: str
    test_rows: int
    bootstrap: dict[str, Any]
    candidate: Scored
    champion: Champion | None
    comparison: dict[str, Any] | None
    baselines: dict[str, Metrics]
    prior_runs: PriorRuns


def result_line(command: str, result: Mapping[str, Any]) -> str:
    """The line the trainer prints for ``command``'s ``result``, once its parser accepts it."""
    payload = json.dumps(result, sort_keys=True)
    PARSERS[command](payload)
    return f"{RESULT_MARKER} {payload}"


def error_line(message: str) -> str:
    """The line the trainer prints when it fails; one line, whatever ``message`` holds."""
    return f"{ERROR_MARKER} {' '.join(message.split())}"


def extract(lines: list[str] | str | None, marker: str = RESULT_MARKER) -> str | None:
    """The payload of the last line that starts with ``marker``, if any."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    for line in reversed(lines or []):
        if line.startswith(marker + " "):
            return line[len(marker) + 1 :]
    return None


def parse_train(payload: str | None) -> TrainResult:
    """The training result: the candidate's run and model, the dataset it saw, its test metrics."""
    data = _load(payload, "train")
    return {
        "run_id": _text(data.get("run_id"), "train.run_id"),
        "model_uri": _text(data.get("model_uri"), "train.model_uri"),
        "dataset_id": _text(data.get("dataset_id"), "train.dataset_id"),
        "metrics": _metrics(data.get("metrics"), "train.metrics"),
        "reused": bool(data.get("reused", False)),
        "code_revision": data.get("code_revision"),
    }


def parse_evaluation(payload: str | None) -> Evaluation:
    """The evaluation result (see ``Evaluation``)."""
    data = _load(payload, "evaluate")
    candidate = data.get("candidate") or {}
    result: Evaluation = {
        "dataset_id": _text(data.get("dataset_id"), "evaluate.dataset_id"),
        "test_rows": _count(data.get("test_rows"), "evaluate.test_rows"),
        "bootstrap": dict(data.get("bootstrap") or {}),
        "candidate": {
            "model_uri": _text(candidate.get("model_uri"), "evaluate.candidate.model_uri"),
            "run_id": _text(candidate.get("run_id"), "evaluate.candidate.run_id"),
            "metrics": _metrics(candidate.get("metrics"), "evaluate.candidate.metrics"),
            "slices": _slices(candidate.get("slices", {}), "evaluate.candidate.slices"),
            "non_finite_predictions": _count(
                candidate.get("non_finite_predictions", 0), "evaluate.candidate.non_finite_predictions"
            ),
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
        parsed: Champion = {
            "version": _text(str(champion.get("version") or ""), "evaluate.champion.version"),
            "run_id": champion.get("run_id"),
            "model_uri": _text(champion.get("model_uri"), "evaluate.champion.model_uri"),
        }
        if champion.get("error"):
            parsed["error"] = str(champion["error"])
        else:
            parsed["metrics"] = _metrics(champion.get("metrics"), "evaluate.champion.metrics")
            parsed["slices"] = _slices(champion.get("slices", {}), "evaluate.champion.slices")
            parsed["non_finite_predictions"] = _count(
                champion.get("non_finite_predictions", 0), "evaluate.champion.non_finite_predictions"
            )
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


PARSERS = {"train": parse_train, "evaluate": parse_evaluation}


def _number(value: Any, where: str, *, optional: bool = False) -> float | None:
    """A JSON number as float; NaN and infinities become None."""
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ResultError(f"{where} must be a number, got {value!r}")
    return float(value) if math.isfinite(value) else None


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ResultError(f"{where} must be a count (an integer >= 0), got {value!r}")
    return value


def _metrics(value: Any, where: str, names: tuple[str, ...] = TEST_METRICS) -> Metrics:
    """Named metrics; a missing or non-finite one is None (a reason to reject), a non-number is malformed."""
    if not isinstance(value, dict):
        raise ResultError(f"{where} must be an object of metrics")
    return {name: _number(value.get(name), f"{where}.{name}", optional=True) for name in names}


def _slices(value: Any, where: str) -> dict[str, SliceMetrics]:
    if not isinstance(value, dict):
        raise ResultError(f"{where} must be an object of slices")
    return {
        str(name): {  # type: ignore[misc]
            **_metrics(metrics, f"{where}.{name}", SLICE_METRICS),
            "rows": _count(metrics.get("rows", 0), f"{where}.{name}.rows"),
        }
        for name, metrics in value.items()
    }


def _comparison(value: Any, where: str) -> Comparison:
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


def _prior_runs(value: Any) -> PriorRuns:
    value = value or {}
    return {
        "basis": str(value.get("basis", "none")),
        "count": _count(value.get("count", 0), "evaluate.prior_runs.count"),
        "median_test_rmse": _number(value.get("median_test_rmse"), "evaluate.prior_runs.median", optional=True),
        "best_test_rmse": _number(value.get("best_test_rmse"), "evaluate.prior_runs.best", optional=True),
    }


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ResultError(f"{where} must be a non-empty string, got {value!r}")
    return value


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
