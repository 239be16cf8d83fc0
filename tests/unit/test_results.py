from __future__ import annotations

import json

import pytest

from abalone_pipeline.results import ResultError, extract, parse_evaluation, parse_train

METRICS = {"test_rmse": 2.1, "test_mae": 1.5, "test_r2": 0.55, "test_mse": 4.41}
TRAIN = {"run_id": "abc", "model_uri": "models:/m-1", "dataset_id": "d1", "metrics": METRICS, "reused": False}


def test_extract_takes_the_last_marked_line_among_noise():
    lines = ["INFO starting", 'ABALONE_RESULT {"a": 1}', "W0000 tensorflow noise", 'ABALONE_RESULT {"a": 2}', "bye"]
    assert extract(lines) == '{"a": 2}'
    assert extract(["nothing here"]) is None
    assert extract("x\nABALONE_ERROR bad input: boom\n", "ABALONE_ERROR") == "bad input: boom"


def test_train_result_is_validated():
    assert parse_train(json.dumps(TRAIN))["metrics"] == METRICS
    with pytest.raises(ResultError, match="no ABALONE_RESULT"):
        parse_train(None)
    with pytest.raises(ResultError, match="not valid JSON"):
        parse_train("{oops")
    with pytest.raises(ResultError, match=r"train\.run_id"):
        parse_train(json.dumps({**TRAIN, "run_id": ""}))
    with pytest.raises(ResultError, match="test_rmse must be a finite number"):
        parse_train(json.dumps({**TRAIN, "metrics": {**METRICS, "test_rmse": float("nan")}}))
    with pytest.raises(ResultError, match="negative"):
        parse_train(json.dumps({**TRAIN, "metrics": {**METRICS, "test_mae": -1}}))


def test_evaluation_with_and_without_a_champion():
    base = {"dataset_id": "d1", "candidate": {"model_uri": "models:/m-1", "metrics": METRICS}}
    assert parse_evaluation(json.dumps({**base, "champion": None}))["champion"] is None
    champion = {"version": 3, "run_id": "r", "model_uri": "models:/abalone/3", "metrics": METRICS}
    parsed = parse_evaluation(json.dumps({**base, "champion": champion}))
    assert parsed["champion"]["version"] == "3"
    with pytest.raises(ResultError, match=r"champion\.metrics"):
        parse_evaluation(json.dumps({**base, "champion": {**champion, "metrics": {}}}))
