"""Parse and validate the results the trainer container prints, before anything acts on them."""

from __future__ import annotations

import json
import math
from typing import Any

RESULT_MARKER = "ABALONE_RESULT"
ERROR_MARKER = "ABALONE_ERROR"
TEST_METRICS = ("test_rmse", "test_mae", "test_r2", "test_mse")


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


def _metrics(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ResultError(f"{where} must be an object of metrics")
    metrics = {}
    for name in TEST_METRICS:
        number = value.get(name)
        if not isinstance(number, int | float) or isinstance(number, bool) or not math.isfinite(number):
            raise ResultError(f"{where}.{name} must be a finite number, got {number!r}")
        metrics[name] = float(number)
    if metrics["test_rmse"] < 0 or metrics["test_mse"] < 0 or metrics["test_mae"] < 0:
        raise ResultError(f"{where} has a negative error metric: {metrics}")
    return metrics


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
    }


def parse_evaluation(payload: str) -> dict[str, Any]:
    """Candidate and champion scores on one test split; ``champion`` is None before the first promotion."""
    data = _load(payload, "evaluate")
    candidate = data.get("candidate") or {}
    result: dict[str, Any] = {
        "dataset_id": _text(data.get("dataset_id"), "evaluate.dataset_id"),
        "candidate": {
            "model_uri": _text(candidate.get("model_uri"), "evaluate.candidate.model_uri"),
            "metrics": _metrics(candidate.get("metrics"), "evaluate.candidate.metrics"),
        },
        "champion": None,
    }
    champion = data.get("champion")
    if champion is not None:
        result["champion"] = {
            "version": _text(str(champion.get("version") or ""), "evaluate.champion.version"),
            "run_id": champion.get("run_id"),
            "model_uri": _text(champion.get("model_uri"), "evaluate.champion.model_uri"),
            "metrics": _metrics(champion.get("metrics"), "evaluate.champion.metrics"),
        }
    return result


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
