"""The night at a glance: what the gate decided, what the registry did, and where to look.

Pure functions of the tasks' results, so every outcome (promoted, forced, rejected, dry run, unchanged) is tested
without MLflow or Airflow. The summary is the ``summarize`` task's XCom and its log, as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from abalone_pipeline.numbers import metric

PROMOTED, FORCED, REJECTED, DRY_RUN = "promoted", "forced", "rejected", "dry_run"
# Not trained: the dataset, trainer image and hyperparameters are the champion's (abalone_pipeline.reuse).
UNCHANGED = "unchanged"
OUTCOMES = (PROMOTED, FORCED, REJECTED, DRY_RUN, UNCHANGED)


def unchanged_decision(reason: str) -> dict[str, Any]:
    """The gate's record of a night that did not train: nothing to promote, and why."""
    return {"outcome": UNCHANGED, "promote": False, "verdict": "not trained", "summary": reason, "checks": []}


def outcome_of(decision: dict[str, Any], *, dry_run: bool) -> str:
    """What this run does with its candidate: the gate's verdict, unless it is a dry run."""
    if dry_run:
        return DRY_RUN
    if decision["promote"]:
        return FORCED if decision.get("forced") else PROMOTED
    return REJECTED


def headline(outcome: str, decision: dict[str, Any], version: str | None = None) -> str:
    """One line, e.g. ``promoted v4: test RMSE 1.9900 vs v3 2.0200``."""
    champion = decision.get("champion_version")
    scores = f"test RMSE {metric(decision.get('candidate_rmse'))}" + (
        f" vs v{champion} {metric(decision.get('champion_rmse'))}" if champion else " (no champion yet)"
    )
    failed = [check["rule"] for check in decision.get("checks", ()) if not check["passed"]]
    if outcome == UNCHANGED:
        return f"not trained: {decision['summary']}"
    if outcome == DRY_RUN:
        would = "would promote" if decision["promote"] else f"would reject ({', '.join(failed)})"
        return f"dry run: {would}; {scores}"
    if outcome == REJECTED:
        return f"rejected: failed {', '.join(failed) or 'no rule'}; {scores}"
    why = f" by {decision.get('forced_by') or 'unknown'} ({decision.get('force_reason')})" if outcome == FORCED else ""
    return f"{outcome} v{version}{why}: {scores}"


def run_summary(
    *,
    staged: dict[str, Any],
    decision: dict[str, Any],
    outcome: str,
    promoted_version: str | None,
    champion_now: str | None,
    links: dict[str, str | None],
) -> dict[str, Any]:
    """The run at a glance: data, scores, decision, the champion after the run, and the links."""
    return {
        "outcome": outcome,
        "headline": headline(outcome, decision, promoted_version),
        "dataset_id": staged.get("dataset_id"),
        "source_sha256": staged.get("source_sha256"),
        "rows": staged.get("rows"),
        "quarantined_rows": (staged.get("validation") or {}).get("quarantined_rows"),
        "candidate_test_rmse": decision.get("candidate_rmse"),
        "compared_with_version": decision.get("champion_version"),
        "compared_with_test_rmse": decision.get("champion_rmse"),
        "gate_verdict": decision.get("verdict"),
        "reasons": decision.get("summary"),
        "promoted_version": promoted_version,
        "champion_now": champion_now,
        "links": {name: url for name, url in links.items() if url},
    }


def log_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as the log shows it: the headline, the JSON, then each link alone on its line."""
    lines = [summary["headline"], "run summary: " + json.dumps(summary, sort_keys=True)]
    lines += [f"{name}: {url}" for name, url in summary["links"].items()]
    return lines
