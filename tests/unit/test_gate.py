from __future__ import annotations

import pytest

from abalone_pipeline.gate import Decision, GatePolicy, decide

POLICY = GatePolicy(max_test_rmse=2.5, rmse_tolerance=0.02)


def metrics(rmse: float) -> dict[str, float]:
    return {"test_rmse": rmse, "test_mae": rmse * 0.7, "test_r2": 0.5, "test_mse": rmse**2}


def champion(rmse: float, version: str = "3") -> dict:
    return {"version": version, "metrics": metrics(rmse)}


def test_first_run_is_judged_by_the_ceiling_alone():
    decision = decide(metrics(2.2), None, POLICY)
    assert decision.promote
    assert decision.champion_version is None
    assert any("no champion yet" in reason for reason in decision.reasons)


def test_first_run_above_the_ceiling_is_rejected():
    decision = decide(metrics(2.6), None, POLICY)
    assert not decision.promote
    assert "exceeds the ceiling 2.5000" in decision.summary()


@pytest.mark.parametrize(
    ("candidate", "incumbent", "promote"),
    [
        (2.10, 2.20, True),  # better
        (2.21, 2.20, True),  # worse, within tolerance
        (2.22, 2.20, True),  # exactly at the tolerance
        (2.23, 2.20, False),  # worse beyond tolerance
        (2.60, 2.70, False),  # better than a bad champion, but above the ceiling
    ],
)
def test_champion_comparison(candidate, incumbent, promote):
    assert decide(metrics(candidate), champion(incumbent), POLICY).promote is promote


def test_reasons_name_the_champion_and_its_score():
    decision = decide(metrics(2.3), champion(2.1, version="7"), POLICY)
    assert not decision.promote
    assert decision.champion_version == "7" and decision.champion_rmse == pytest.approx(2.1)
    assert "worse than champion v7 test_rmse 2.1000 + tolerance 0.0200" in decision.summary()


def test_decision_round_trips_through_xcom():
    decision = decide(metrics(2.2), champion(2.3), POLICY)
    assert Decision.from_dict(decision.to_dict()) == decision


@pytest.mark.parametrize("kwargs", [{"max_test_rmse": 0}, {"rmse_tolerance": -0.1}])
def test_policy_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        GatePolicy(**kwargs)
