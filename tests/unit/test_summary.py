"""The run summary for every outcome: what the gate said, what the registry did, the champion after."""

from __future__ import annotations

import json

import pytest

from abalone_pipeline.summary import (
    DRY_RUN,
    FORCED,
    PROMOTED,
    REJECTED,
    UNCHANGED,
    log_lines,
    outcome_of,
    run_summary,
    unchanged_decision,
)

STAGED = {"dataset_id": "7c40", "source_sha256": "de37", "rows": {"train": 2970}, "validation": {"quarantined_rows": 2}}
PASSED = {"rule": "improvement", "passed": True, "applied": True, "detail": "better by 0.03"}
TIED = {"rule": "improvement", "passed": False, "applied": True, "detail": "ties v3 (2.0200 vs 2.0200)"}


def decision(promote: bool, checks=(PASSED,), champion="3", **extra) -> dict:
    return {
        "promote": promote,
        "checks": list(checks),
        "candidate_rmse": 1.99,
        "champion_rmse": 2.02 if champion else None,
        "champion_version": champion,
        "forced": False,
        "verdict": "promoted" if promote else "rejected",
        "summary": "PROMOTE: all 5 applicable rules passed" if promote else "REJECT: failed improvement: ties v3",
        **extra,
    }


def summary(outcome, decided, version=None, champion_now="3"):
    links = {
        "airflow_run": "http://localhost:8080/dags/d/runs/r",
        "promoted_version": None,
        "mlflow_run": "http://m/#/runs/abc",
    }
    return run_summary(
        staged=STAGED,
        decision=decided,
        outcome=outcome,
        promoted_version=version,
        champion_now=champion_now,
        links=links,
    )


@pytest.mark.parametrize(
    ("decided", "dry_run", "expected"),
    [
        (decision(True), False, PROMOTED),
        (decision(True, forced=True), False, FORCED),
        (decision(False, (TIED,)), False, REJECTED),
        (decision(True), True, DRY_RUN),
        (decision(False, (TIED,)), True, DRY_RUN),
        (decision(True, forced=True), True, DRY_RUN),
    ],
)
def test_the_outcome_is_the_verdict_unless_it_is_a_dry_run(decided, dry_run, expected):
    assert outcome_of(decided, dry_run=dry_run) == expected


def test_a_promotion_names_the_new_version_and_what_it_beat():
    result = summary(PROMOTED, decision(True), version="4", champion_now="4")
    assert result["headline"] == "promoted v4: test RMSE 1.9900 vs v3 2.0200"
    assert (result["promoted_version"], result["champion_now"], result["compared_with_version"]) == ("4", "4", "3")


def test_a_first_champion_says_there_was_none():
    result = summary(PROMOTED, decision(True, champion=None), version="1", champion_now="1")
    assert result["headline"] == "promoted v1: test RMSE 1.9900 (no champion yet)"


def test_a_forced_promotion_says_who_and_why():
    forced = decision(True, forced=True, forced_by="alice", force_reason="bad feed")
    assert summary(FORCED, forced, version="5")["headline"].startswith("forced v5 by alice (bad feed): ")


def test_a_rejection_names_the_failed_rules_and_the_champion_stays():
    result = summary(REJECTED, decision(False, (PASSED, TIED)))
    assert result["headline"] == "rejected: failed improvement; test RMSE 1.9900 vs v3 2.0200"
    assert result["promoted_version"] is None and result["champion_now"] == "3"
    assert result["outcome"] == "rejected" and result["gate_verdict"] == "rejected"


def test_a_dry_run_says_what_it_would_do_and_the_real_champion():
    would_promote = summary(DRY_RUN, decision(True))
    assert would_promote["headline"] == "dry run: would promote; test RMSE 1.9900 vs v3 2.0200"
    assert would_promote["promoted_version"] is None and would_promote["champion_now"] == "3"
    assert summary(DRY_RUN, decision(False, (TIED,)))["headline"].startswith("dry run: would reject (improvement)")


def test_a_night_that_did_not_train_says_why_and_has_no_scores():
    reason = "unchanged since the champion v3 (run abc): the same dataset 7c40, trainer image sha256:1 and ..."
    result = summary(UNCHANGED, unchanged_decision(reason))
    assert result["headline"] == f"not trained: {reason}"
    assert (result["outcome"], result["gate_verdict"], result["reasons"]) == (UNCHANGED, "not trained", reason)
    assert result["candidate_test_rmse"] is None and result["promoted_version"] is None
    assert result["champion_now"] == "3" and result["dataset_id"] == "7c40"


def test_the_log_is_json_with_each_link_alone_on_its_line():
    result = summary(PROMOTED, decision(True), version="4", champion_now="4")
    head, json_line, *link_lines = log_lines(result)
    assert head == result["headline"]
    assert json.loads(json_line.removeprefix("run summary: ")) == result
    # Links without a URL are left out rather than printed as None.
    assert link_lines == ["airflow_run: http://localhost:8080/dags/d/runs/r", "mlflow_run: http://m/#/runs/abc"]
    assert all(not line.endswith(("'", '"', ",")) for line in link_lines)
