"""The gate policy on constructed evaluations: every verdict it can reach, and why."""

from __future__ import annotations

import json
import math

import pytest

from abalone_pipeline.gate import POLICY_SCHEMA, Decision, GatePolicy, PolicyError, decide, rule
from abalone_pipeline.gate_report import render

POLICY = GatePolicy()
SLICES = ("sex=M", "sex=F", "sex=I", "rings<=7", "rings=8-11", "rings>=12")


def comparison(diff: float, low: float, high: float) -> dict:
    intervals = {level: [low, high] for level in ("0.8", "0.9", "0.95", "0.99")}
    return {"rmse_diff": diff, "intervals": intervals, "p_better": 0.5}


def evaluation(
    candidate: float = 2.10,
    champion: float | None = 2.15,
    *,
    interval: tuple[float, float] = (-0.08, -0.02),
    slice_diffs: dict[str, float] | None = None,
    baselines: tuple[float, float] = (3.20, 2.21),
    prior: tuple[int, float | None] = (0, None),
    champion_error: str | None = None,
) -> dict:
    """An evaluation as ``abalone_contract.results.parse_evaluation`` returns it."""
    diffs = {name: 0.0 for name in SLICES} | (slice_diffs or {})

    def metrics(rmse: float) -> dict:
        return {"test_rmse": rmse, "test_mae": rmse * 0.7, "test_r2": 0.55, "test_mse": rmse**2}

    result = {
        "dataset_id": "0123456789abcdef",
        "test_rows": 836,
        "bootstrap": {"resamples": 2000},
        "candidate": {
            "model_uri": "models:/m-candidate",
            "run_id": "run-candidate",
            "metrics": metrics(candidate),
            "slices": {name: {"rmse": candidate + (diff or 0), "rows": 100} for name, diff in diffs.items()},
            "non_finite_predictions": 0,
        },
        "champion": None,
        "comparison": None,
        "baselines": {"mean": metrics(baselines[0]), "linear": metrics(baselines[1])},
        "prior_runs": {"basis": "same dataset", "count": prior[0], "median_test_rmse": prior[1]},
    }
    if champion is not None:
        result["champion"] = {"version": "3", "run_id": "run-champion", "model_uri": "models:/abalone/3"}
        if champion_error:
            result["champion"]["error"] = champion_error
        else:
            result["champion"] |= {"metrics": metrics(champion), "slices": {n: {"rmse": champion} for n in SLICES}}
            result["comparison"] = {
                "overall": comparison(candidate - champion, *interval),
                "slices": {
                    name: comparison(diff, diff - 0.1, diff + 0.1) if diff is not None else comparison(None, None, None)
                    for name, diff in diffs.items()
                },
            }
    return result


def failed(decision: Decision) -> list[str]:
    return [check.rule for check in decision.failed]


def test_a_clear_improvement_is_promoted():
    decision = decide(evaluation(2.05, 2.20, interval=(-0.20, -0.10)), POLICY)
    assert decision.promote and decision.verdict == "promoted"
    assert failed(decision) == []
    improvement = next(check for check in decision.checks if check.rule == "improvement")
    assert improvement.observed == pytest.approx(0.15)


def test_a_clear_regression_is_rejected_by_improvement_and_significance():
    decision = decide(evaluation(2.30, 2.10, interval=(0.12, 0.28), baselines=(3.2, 2.4)), POLICY)
    assert not decision.promote
    assert failed(decision) == ["improvement", "significance"]
    assert "significantly worse" in decision.summary()


def test_a_regression_in_one_slice_only_is_rejected():
    decision = decide(evaluation(2.08, 2.12, slice_diffs={"rings>=12": 0.40}), POLICY)
    assert failed(decision) == ["slice:rings>=12"]
    assert not decision.promote
    assert "rings>=12: RMSE difference +0.4000" in decision.summary()


def test_a_tie_keeps_the_champion():
    decision = decide(evaluation(2.12, 2.12, interval=(-0.01, 0.01)), POLICY)
    assert failed(decision) == ["improvement"]
    assert "a tie keeps the champion" in decision.summary()


def test_a_difference_inside_the_noise_depends_on_the_statistical_rule():
    noisy = evaluation(2.11, 2.12, interval=(-0.05, 0.03))
    assert decide(noisy, POLICY).promote, "better point estimate, not significantly worse"
    strict = GatePolicy(statistical_rule="require_significantly_better")
    decision = decide(noisy, strict)
    assert failed(decision) == ["significance"]
    assert "not significantly better" in decision.summary()


def test_a_minimum_improvement_turns_a_small_gain_into_a_rejection():
    small_gain = evaluation(2.11, 2.12)
    assert decide(small_gain, POLICY).promote
    assert failed(decide(small_gain, GatePolicy(min_improvement=0.05))) == ["improvement"]
    assert failed(decide(small_gain, GatePolicy(min_relative_improvement=0.01))) == ["improvement"]


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_non_finite_metrics_are_rejected_and_cannot_be_forced(bad):
    broken = evaluation(2.05, 2.12)
    broken["candidate"]["metrics"]["test_rmse"] = bad  # None is how abalone_contract.results hands NaN and inf over
    decision = decide(broken, POLICY)
    assert not decision.promote
    assert {"metrics_finite", "ceiling", "baseline:mean", "baseline:linear", "improvement"} <= set(failed(decision))
    assert "not a finite number" in decision.summary()
    forced = decide(broken, POLICY, force_reason="ship it", forced_by="alice")
    assert not forced.promote
    assert "refused" in forced.summary()
    json.dumps(forced.to_dict(), allow_nan=False)  # it travels through XCom


def test_a_nan_comparison_or_prior_median_fails_its_rule_with_a_reason():
    source = evaluation(2.05, 2.12, prior=(5, None), slice_diffs={"sex=F": None})
    source["comparison"]["overall"]["intervals"]["0.95"] = [None, None]
    decision = decide(source, POLICY)
    assert {"significance", "slice:sex=F", "prior_runs"} <= set(failed(decision))
    assert "median test_rmse of 5 prior runs is not a finite number" in decision.summary()
    json.dumps(decision.to_dict(), allow_nan=False)


def test_non_finite_predictions_the_trainer_counted_reject_the_candidate_with_the_count():
    broken = evaluation(2.05, 2.12)
    broken["candidate"]["non_finite_predictions"] = 3
    decision = decide(broken, POLICY)
    assert "metrics_finite" in failed(decision) and not decision.promote
    assert "non-finite values for 3 of 836 test rows" in decision.summary()
    assert not decide(broken, POLICY, force_reason="ship it", forced_by="alice").promote


def test_a_missing_metric_is_rejected():
    broken = evaluation(2.05, None)
    del broken["candidate"]["metrics"]["test_mae"]
    broken["candidate"]["metrics"]["test_r2"] = math.nan
    assert failed(decide(broken, POLICY)) == ["metrics_finite"]


def test_the_first_run_is_judged_by_the_ceiling_and_the_baselines():
    decision = decide(evaluation(2.15, None), POLICY)
    assert decision.promote and decision.champion_version is None
    applied = [check.rule for check in decision.checks if check.applied]
    assert applied == ["metrics_finite", "ceiling", "baseline:mean", "baseline:linear"]
    assert failed(decide(evaluation(2.60, None, baselines=(3.2, 2.9)), POLICY)) == ["ceiling"]


def test_a_candidate_that_does_not_beat_the_baselines_is_broken():
    decision = decide(evaluation(2.20, None, baselines=(3.2, 2.21)), POLICY)
    assert failed(decision) == ["baseline:linear"], "2.20 is within the 0.02 margin of least squares"
    assert failed(decide(evaluation(2.20, None, baselines=(2.19, 2.5)), POLICY)) == ["baseline:mean"]
    missing = evaluation(2.0, None)
    missing["baselines"] = {}
    assert failed(decide(missing, POLICY)) == ["baseline:mean", "baseline:linear"]


def test_an_unloadable_champion_blocks_promotion_unless_forced():
    broken = evaluation(2.05, 2.10, champion_error="MlflowException: artifact not found")
    decision = decide(broken, POLICY)
    assert failed(decision) == ["champion_scorable"]
    assert "force_promote" in decision.summary() and "artifact not found" in decision.summary()
    forced = decide(broken, POLICY, force_reason="champion artifacts lost in the bucket migration", forced_by="bob")
    assert forced.promote and forced.verdict == "forced"
    assert forced.forced_by == "bob" and "bucket migration" in forced.summary()
    assert failed(forced) == ["champion_scorable"], "a forced decision still shows what failed"


def test_prior_runs_guard_applies_once_there_are_enough():
    assert decide(evaluation(2.18, None, prior=(2, 2.0)), POLICY).promote, "too few runs: not applied"
    decision = decide(evaluation(2.18, None, prior=(5, 2.05)), POLICY)
    assert failed(decision) == ["prior_runs"]
    assert "median 2.0500 of 5 recent runs (same dataset) + 0.1000" in decision.summary()
    assert decide(evaluation(2.18, None, prior=(5, 2.05)), GatePolicy(prior_runs_tolerance=None)).promote


def test_policy_overrides_keep_the_other_defaults_and_refuse_unknown_keys():
    policy = GatePolicy.from_dict({"max_rmse": 2.2}, GatePolicy(slice_tolerance=0.5))
    assert (policy.max_rmse, policy.slice_tolerance) == pytest.approx((2.2, 0.5))
    with pytest.raises(PolicyError, match="unknown gate policy keys"):
        GatePolicy.from_dict({"max_test_rmse": 2.2})
    with pytest.raises(PolicyError, match="confidence"):
        GatePolicy(confidence=0.5)
    with pytest.raises(PolicyError, match="statistical_rule"):
        GatePolicy(statistical_rule="vibes")


@pytest.mark.parametrize("value", [-1, 0, 0.5, 0.95, 0.97, 1, 1.5, 2, 3.0, 100, None, True, "off", "2.5", [1]])
def test_the_params_form_and_the_policy_refuse_the_same_values(value):
    """One declaration per field: the JSON schema (Airflow's validator) and the policy agree on every value."""
    import jsonschema

    for name, schema in POLICY_SCHEMA["properties"].items():
        form_accepts = jsonschema.validators.validator_for(schema)(schema).is_valid(value)
        try:
            GatePolicy(**{name: value})
        except PolicyError as exc:
            assert not form_accepts, f"the form accepts {name}={value!r}, the policy refuses it: {exc}"
            assert str(exc).startswith(f"gate policy {name} must be "), "the message names the key and the rule"
        else:
            assert form_accepts, f"the policy accepts {name}={value!r}, the form refuses it"


def test_a_policy_field_declares_only_bounds_the_policy_checks():
    assert rule(1.0, "a margin", type="number", minimum=0).metadata["schema"]["minimum"] == 0
    with pytest.raises(TypeError, match="multipleOf"):
        rule(1.0, "a margin", type="number", multipleOf=0.5)


def test_a_decision_survives_its_xcom_round_trip_and_renders_a_report():
    source = evaluation(2.08, 2.12, slice_diffs={"sex=I": 0.3})
    decision = decide(source, POLICY)
    again = Decision.from_dict(decision.to_dict())
    assert again == decision
    report = render(decision, source, {"airflow.run_id": "manual__1"})
    assert report.startswith("# Gate decision: REJECTED")
    assert "| slice:sex=I | FAIL |" in report
    assert "| sex=I | 100 | 2.3800 | 2.1200 | +0.3000 | [+0.2000, +0.4000] |" in report
    assert "| linear baseline (fitted on the training rows) | 2.2100 |" in report
