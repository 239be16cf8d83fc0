"""What the model page shows, read from MLflow: the champion, the decision history, the RMSE trend, one run's report.

Each function makes a fixed number of requests, every search capped by ``max_results`` (nothing pages), and
returns plain dicts and lists, ready to render or to serialise as JSON.
"""

from __future__ import annotations

import json
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from abalone_contract.constants import TAG_DATASET_ID
from abalone_pipeline import links, registry
from abalone_pipeline.config import Settings
from abalone_pipeline.summary import DRY_RUN, OUTCOMES

# Logged on each candidate run: test_rmse by training, the others by the gate.
METRIC_CANDIDATE = "test_rmse"
METRIC_CHAMPION = "gate.champion_rmse"
BASELINE_METRIC = re.compile(r"gate\.baseline_(\w+)_rmse")
SLICES_CHART = "gate/slices.png"
# The most rows one page asks MLflow for: months of nights, in one search of runs and one of versions.
MAX_DECISIONS = 200
# Decision.summary(): "<HEAD>: failed rule_a, rule_b: <details>" or "<HEAD>: all N applicable rules passed".
FAILED_RULES = re.compile(r": failed ([a-z0-9_]+(?:, [a-z0-9_]+)*): ")
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def outcome(tags: dict[str, str]) -> tuple[str | None, str | None]:
    """``(outcome, verdict)`` of a candidate run; ``(None, None)`` while it is undecided.

    The verdict is the gate's: for a dry run, what it would have done. Runs decided before the outcome tag
    existed have only the gate's decision or dry-run tag.
    """
    found = tags.get(registry.TAG_OUTCOME)
    if found not in OUTCOMES:
        if tags.get(registry.TAG_DECISION) in OUTCOMES:
            found = tags[registry.TAG_DECISION]
        elif registry.TAG_DRY_RUN in tags:
            found = DRY_RUN
        else:
            return None, None
    if found == DRY_RUN:
        return found, tags.get(registry.TAG_DRY_RUN)
    return found, tags.get(registry.TAG_DECISION, found)


def failed_rules(reasons: str | None) -> list[str]:
    """The rules a decision summary names as failed (``Decision.summary``)."""
    match = FAILED_RULES.search(reasons or "")
    return match.group(1).split(", ") if match else []


def _when(epoch_ms: int | None) -> str | None:
    if not epoch_ms:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="seconds")


def _airflow_run(key: str | None) -> tuple[str | None, str | None]:
    dag_id, _, run_id = (key or "").partition("/")
    return (dag_id or None, run_id or None)


def _row(run, settings: Settings) -> dict[str, Any]:
    """One candidate run as a history row; its outcome is None while it is undecided."""
    tags, metrics, info = run.data.tags, run.data.metrics, run.info
    found, verdict = outcome(tags)
    reasons = tags.get(registry.TAG_REASONS)
    return {
        "kind": "decision",
        "when": _when(info.start_time),
        "when_ms": info.start_time or 0,
        "outcome": found,
        "verdict": verdict,
        "reasons": reasons,
        "failed_rules": failed_rules(reasons),
        "candidate_rmse": metrics.get(METRIC_CANDIDATE),
        "champion_rmse": metrics.get(METRIC_CHAMPION),
        "baselines": {
            match.group(1): value for key, value in sorted(metrics.items()) if (match := BASELINE_METRIC.fullmatch(key))
        },
        "version": tags.get(registry.TAG_VERSION),
        "replaced": None,
        "by": tags.get("airflow.triggered_by"),
        "dag_id": tags.get("airflow.dag_id"),
        "airflow_run_id": tags.get("airflow.run_id"),
        "airflow_run_url": tags.get("airflow.run_url"),
        "mlflow_run_id": info.run_id,
        "mlflow_run_url": links.run_link(settings, info.run_id, info.experiment_id),
        "status": info.status,
    }


def _rollback_row(event: dict[str, Any]) -> dict[str, Any]:
    dag_id, run_id = _airflow_run(event["airflow_run"])
    when = datetime.fromisoformat(event["when"]) if event["when"] else None
    return {
        "kind": "rollback",
        "when": when.astimezone(UTC).isoformat(timespec="seconds") if when else None,
        "when_ms": int(when.timestamp() * 1000) if when else 0,
        "outcome": event["event"].replace(" (incomplete)", "_incomplete"),
        "verdict": None,
        "reasons": event["why"],
        "failed_rules": [],
        "candidate_rmse": None,
        "champion_rmse": None,
        "baselines": {},
        "version": event["version"],
        "replaced": event["replaced"],
        "by": event["by"],
        "dag_id": dag_id,
        "airflow_run_id": run_id,
        "airflow_run_url": None,
        "mlflow_run_id": None,
        "mlflow_run_url": None,
        "status": None,
    }


def champion(client, settings: Settings) -> dict[str, Any] | None:
    """The version ``settings.champion_alias`` points at, with its score and audit trail; None if there is none."""
    from mlflow.exceptions import MlflowException

    number = registry.current_version(client, settings.model_name, settings.champion_alias)
    if number is None:
        return None
    version = client.get_model_version(settings.model_name, number)
    tags = version.tags or {}
    test_rmse = experiment_id = None
    if version.run_id:
        try:
            run = client.get_run(version.run_id)
            test_rmse, experiment_id = run.data.metrics.get(METRIC_CANDIDATE), run.info.experiment_id
        except MlflowException as exc:
            if getattr(exc, "error_code", "") not in NOT_FOUND:
                raise
    dag_id, run_id = _airflow_run(tags.get(registry.TAG_AIRFLOW_RUN))
    return {
        "name": settings.model_name,
        "alias": settings.champion_alias,
        "version": number,
        "test_rmse": test_rmse,
        "dataset": tags.get(TAG_DATASET_ID),
        "promoted_at": tags.get(registry.TAG_PROMOTED_AT),
        "decision": tags.get(registry.TAG_DECISION),
        "replaced": tags.get(registry.TAG_PREVIOUS_CHAMPION),
        "forced": registry.TAG_FORCED_BY in tags or tags.get(registry.TAG_DECISION) == "forced",
        "forced_by": tags.get(registry.TAG_FORCED_BY),
        "force_reason": tags.get(registry.TAG_FORCE_REASON),
        "reasons": tags.get(registry.TAG_REASONS),
        "dag_id": dag_id,
        "airflow_run_id": run_id,
        "airflow_run_url": tags.get("airflow.run_url"),
        "mlflow_run_id": version.run_id,
        "mlflow_run_url": links.run_link(settings, version.run_id, experiment_id) if version.run_id else None,
        "mlflow_version_url": links.version_link(settings, number),
    }


def decisions(client, settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    """Gate outcomes of the latest ``limit`` candidate runs and the rollbacks among them, newest first.

    Runs without an outcome (training failed, or still running) are left out: the Airflow grid shows those.
    """
    limit = max(1, min(limit, MAX_DECISIONS))
    experiment = client.get_experiment_by_name(settings.experiment)
    runs = (
        client.search_runs([experiment.experiment_id], max_results=limit, order_by=["attributes.start_time DESC"])
        if experiment is not None
        else []
    )
    rows = [row for row in (_row(run, settings) for run in runs) if row["outcome"]]
    rows += [_rollback_row(event) for event in registry.rollbacks(client, settings.model_name)]
    rows.sort(key=lambda row: row["when_ms"], reverse=True)
    return rows[:limit]


def trend(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidate, champion and baseline RMSE per candidate run, oldest first: the chart's points.

    ``rows`` are ``decisions`` rows, whose metrics came with the runs: no further request.
    """
    return [
        {
            "when": row["when"],
            "outcome": row["outcome"],
            "mlflow_run_id": row["mlflow_run_id"],
            "candidate": row["candidate_rmse"],
            "champion": row["champion_rmse"],
            "baselines": row["baselines"],
        }
        for row in reversed(rows)
        if row["kind"] == "decision" and row["candidate_rmse"] is not None
    ]


def _filter_value(value: str) -> str | None:
    # MLflow's filter grammar has no escape for a quote; Airflow's ids never contain one.
    return None if "'" in value or "\\" in value else value


def find_candidate(client, settings: Settings, dag_id: str, run_id: str):
    """The MLflow run that the DAG run ``dag_id``/``run_id`` trained (the decided one, if a retry made two)."""
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None or _filter_value(dag_id) is None or _filter_value(run_id) is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`airflow.dag_id` = '{dag_id}' and tags.`airflow.run_id` = '{run_id}'",
        max_results=5,
        order_by=["attributes.start_time DESC"],
    )
    return next((run for run in runs if outcome(run.data.tags)[0]), runs[0] if runs else None)


def artifact_bytes(client, run_id: str, path: str) -> bytes:
    """One artifact of a run, read through a temporary directory that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="abalone-model-page-") as directory:
        return Path(client.download_artifacts(run_id, path, directory)).read_bytes()


def run_report(client, settings: Settings, dag_id: str, run_id: str) -> dict[str, Any]:
    """One DAG run's candidate: its outcome, the gate's checks and report, and whether it has a slices chart."""
    report: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "found": False}
    run = find_candidate(client, settings, dag_id, run_id)
    if run is None:
        return report
    row = _row(run, settings)
    present = {item.path for item in client.list_artifacts(run.info.run_id, "gate")}
    markdown = decision = None
    if registry.REPORT_MARKDOWN in present:
        markdown = artifact_bytes(client, run.info.run_id, registry.REPORT_MARKDOWN).decode("utf-8", "replace")
    if registry.REPORT_JSON in present:
        decision = json.loads(artifact_bytes(client, run.info.run_id, registry.REPORT_JSON))
    checks = [
        {key: check.get(key) for key in ("rule", "applied", "passed", "detail", "observed", "threshold")}
        for check in (decision or {}).get("checks", [])
    ]
    if decision:
        row["failed_rules"] = [check["rule"] for check in checks if not check["passed"]]
        row["reasons"] = row["reasons"] or decision.get("summary")
        row["verdict"] = row["verdict"] or decision.get("verdict")
    return {
        **report,
        "found": True,
        "run": row,
        "checks": checks,
        "decision": decision,
        "report_markdown": markdown,
        "slices_chart": SLICES_CHART in present,
        "mlflow_report_url": links.run_link(settings, run.info.run_id, run.info.experiment_id, "artifacts/gate"),
    }
