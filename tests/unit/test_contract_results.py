from __future__ import annotations

import json
import math

import pytest

from abalone_contract.constants import parse_slices
from abalone_contract.results import ResultError, error_line, extract, parse_evaluation, parse_train, result_line

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
    with pytest.raises(ResultError, match="test_rmse must be a number"):
        parse_train(json.dumps({**TRAIN, "metrics": {**METRICS, "test_rmse": "2.1"}}))


def comparison(diff):
    return {"rmse_diff": diff, "intervals": {"0.95": [diff - 0.1, diff + 0.1]}, "p_better": 0.4}


BASE = {
    "dataset_id": "d1",
    "test_rows": 836,
    "candidate": {
        "model_uri": "models:/m-1",
        "run_id": "r1",
        "metrics": METRICS,
        "slices": {"sex=M": {"rmse": 2.0, "mae": 1.4, "r2": 0.5, "mse": 4.0, "rows": 300}},
    },
    "baselines": {"mean": {**METRICS, "test_rmse": 3.2}, "linear": {**METRICS, "test_rmse": 2.2}},
    "prior_runs": {"basis": "same dataset", "count": 2, "median_test_rmse": 2.2, "best_test_rmse": 2.1},
}
CHAMPION = {"version": 3, "run_id": "r", "model_uri": "models:/abalone/3", "metrics": METRICS, "slices": {}}


def test_evaluation_without_a_champion():
    parsed = parse_evaluation(json.dumps({**BASE, "champion": None}))
    assert parsed["champion"] is None and parsed["comparison"] is None
    assert parsed["candidate"]["slices"]["sex=M"]["rows"] == 300
    assert parsed["baselines"]["linear"]["test_rmse"] == pytest.approx(2.2) and parsed["prior_runs"]["count"] == 2


def test_evaluation_with_a_champion_and_its_comparison():
    payload = {**BASE, "champion": CHAMPION, "comparison": {"overall": comparison(-0.05), "slices": {}}}
    parsed = parse_evaluation(json.dumps(payload))
    assert parsed["champion"]["version"] == "3"
    assert parsed["comparison"]["overall"]["intervals"]["0.95"] == pytest.approx([-0.15, 0.05])
    with pytest.raises(ResultError, match=r"comparison\.overall"):
        parse_evaluation(json.dumps({**payload, "comparison": {"overall": {"rmse_diff": 0.1}}}))
    with pytest.raises(ResultError, match=r"champion\.metrics must be an object"):
        parse_evaluation(json.dumps({**payload, "champion": {**CHAMPION, "metrics": None}}))


def test_an_unscorable_champion_carries_its_error():
    broken = {"version": "3", "run_id": "r", "model_uri": "models:/abalone/3", "error": "OSError: gone"}
    parsed = parse_evaluation(json.dumps({**BASE, "champion": broken, "comparison": None}))
    assert parsed["champion"]["error"] == "OSError: gone" and "metrics" not in parsed["champion"]


def test_non_finite_and_missing_metrics_reach_the_gate_as_none():
    # The gate rejects them with a reason; failing the task here would hide the reason. XCom is JSON
    # without NaN (the Task SDK's client refuses it), so "not finite" travels as None.
    metrics = {"test_rmse": float("nan"), "test_mae": 1.0, "test_r2": float("-inf")}
    parsed = parse_train(json.dumps({**TRAIN, "metrics": metrics}))
    assert parsed["metrics"] == {"test_rmse": None, "test_mae": 1.0, "test_r2": None, "test_mse": None}
    json.dumps(parsed, allow_nan=False)
    payload = {
        **BASE,
        "candidate": {**BASE["candidate"], "metrics": metrics},
        "champion": CHAMPION,
        "comparison": {"overall": comparison(math.nan), "slices": {"sex=M": comparison(math.inf)}},
    }
    json.dumps(parse_evaluation(json.dumps(payload)), allow_nan=False)


def test_the_trainers_count_of_non_finite_predictions_reaches_the_gate():
    payload = {**BASE, "candidate": {**BASE["candidate"], "non_finite_predictions": 7}}
    assert parse_evaluation(json.dumps(payload))["candidate"]["non_finite_predictions"] == 7
    with pytest.raises(ResultError, match="non_finite_predictions must be a count"):
        parse_evaluation(json.dumps({**BASE, "candidate": {**BASE["candidate"], "non_finite_predictions": -1}}))


def test_the_trainer_cannot_print_a_result_the_pipeline_would_refuse():
    line = result_line("train", TRAIN)
    assert line.startswith("ABALONE_RESULT ") and parse_train(extract([line]))["run_id"] == "abc"
    with pytest.raises(ResultError, match=r"train\.model_uri"):
        result_line("train", {**TRAIN, "model_uri": None})
    with pytest.raises(ResultError, match=r"evaluate\.test_rows"):
        result_line("evaluate", {**BASE, "test_rows": "836"})


def test_an_error_line_is_one_line_whatever_the_message():
    line = error_line("bad input: cannot read s3://b/k:\n  NoSuchKey")
    assert line == "ABALONE_ERROR bad input: cannot read s3://b/k: NoSuchKey"
    assert extract(f"noise\n{line}\n", "ABALONE_ERROR") == "bad input: cannot read s3://b/k: NoSuchKey"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("sex;rings:7,11", (True, (7, 11))), ("rings:5", (False, (5,))), ("none", (False, ())), ("sex", (True, ()))],
)
def test_slice_specs_parse_the_same_on_both_sides(text, parsed):
    assert parse_slices(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [("sex,rings", "unknown slice"), ("rings:11,7", "increasing"), ("rings:a", "integers"), ("rings:", "unknown")],
)
def test_bad_slice_specs_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_slices(text)
