"""Registry writes: find-or-create registration, guarded alias moves, rollback, and the audit trail.

MLflow's registry keeps the current state (versions, aliases) but no history of who moved an alias,
when, or why. This module keeps that history in tags: on each promoted version (what promoted it and
what it replaced) and on the registered model (each rollback), so ``history`` can replay it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from abalone_contract.constants import TAG_DATASET_ID
from abalone_contract.tracking import alias_version
from abalone_pipeline.gate import Decision

log = logging.getLogger(__name__)

# Tag keys are the audit trail: from a version you reach the run, the data and the Airflow run.
TAG_DECISION = "abalone.gate.decision"
TAG_REASONS = "abalone.gate.reasons"
TAG_REPORT = "abalone.gate.report"
TAG_VERSION = "abalone.registered_version"
TAG_PREVIOUS_CHAMPION = "abalone.previous_champion"
TAG_PROMOTED_AT = "abalone.promoted_at"
TAG_AIRFLOW_RUN = "abalone.airflow_run"
TAG_FORCED_BY = "abalone.forced_by"
TAG_FORCE_REASON = "abalone.force_reason"
TAG_DRY_RUN = "abalone.gate.dry_run"
# The content id of the trainer image that made a promoted version (what an unchanged night is compared with).
TAG_TRAINER_IMAGE_ID = "abalone.trainer_image_id"
# What the run did with its candidate: promoted, forced, rejected or dry_run (summary.OUTCOMES).
TAG_OUTCOME = "abalone.outcome"
ROLLBACK_TAG_PREFIX = "abalone.rollback."
REPORT_JSON = "gate/decision.json"
REPORT_MARKDOWN = "gate/report.md"
MAX_TAG_VALUE = 4000  # MLflow stores at least 5000 characters per tag value


class PromotionConflict(RuntimeError):
    """The alias moved between evaluation and promotion; the gate's comparison no longer holds."""


class RollbackError(RuntimeError):
    """The rollback has no target, or its target does not exist."""


def _error_code(exc: Exception) -> str:
    return getattr(exc, "error_code", "")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else 0


def current_version(client, model_name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None if the model or alias does not exist."""
    version = alias_version(client, model_name, alias)
    return None if version is None else str(version.version)


def ensure_registered_model(client, model_name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, description=description)
        log.info("created registered model %s", model_name)
    except MlflowException as exc:
        if _error_code(exc) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def registered_version(client, model_name: str, airflow_run: str):
    """The version already registered by the Airflow run ``airflow_run`` (``dag_id/run_id``), if any."""
    existing = client.search_model_versions(
        f"name = '{model_name}' and tags.`{TAG_AIRFLOW_RUN}` = '{airflow_run}'", max_results=10
    )
    return min(existing, key=lambda v: int(v.version)) if existing else None


def record_report(client, run_id: str, decision: Decision, report_markdown: str) -> None:
    """Log the decision (JSON) and its report (Markdown) on the candidate's run; rewriting them is harmless."""
    client.log_text(run_id, json.dumps(decision.to_dict(), indent=2, sort_keys=True), REPORT_JSON)
    client.log_text(run_id, report_markdown, REPORT_MARKDOWN)


def recorded_decision(client, run_id: str) -> dict[str, Any]:
    """The decision logged on a candidate's run (``record_report``), as ``Decision.to_dict`` wrote it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, REPORT_JSON, tmp)).read_text())


def apply_decision(
    client,
    *,
    model_name: str,
    alias: str,
    previous_alias: str,
    candidate: dict[str, Any],
    decision: Decision,
    audit_tags: dict[str, str],
) -> dict[str, Any]:
    """Record the decision on the candidate's run; if it passed, register it and move ``alias`` to it.

    The gate's report is already on the run (``record_report``, by the gate task).

    A candidate is decided once. The decision tag on its run is written last, so a re-run of a DAG run
    whose promotion finished changes nothing (it will not move the alias back to an older champion),
    while a retry after a partial failure finds the version its Airflow run registered and completes
    the move. The alias moves only if it still points where it pointed when the candidate was
    evaluated (``decision.champion_version``), so a concurrent promotion is never silently overwritten.
    ``previous_alias`` is moved to the outgoing champion first: that is what a rollback restores.
    """
    run_id = candidate["run_id"]
    recorded = client.get_run(run_id).data.tags
    if TAG_DECISION in recorded:
        log.info("candidate run %s was already %s; not acting on it again", run_id, recorded[TAG_DECISION])
        if recorded.get(TAG_VERSION):  # a try that died between the run's tags and the version's: finish it
            _mark_promoted(client, model_name, recorded[TAG_VERSION], recorded[TAG_DECISION])
        return {
            "promoted": recorded[TAG_DECISION] in ("promoted", "forced"),
            "verdict": recorded[TAG_DECISION],
            "version": recorded.get(TAG_VERSION),
            "champion_version": current_version(client, model_name, alias),
            "already_decided": True,
        }
    summary = decision.summary()[:MAX_TAG_VALUE]
    if not decision.promote:
        from mlflow.entities import RunTag

        client.log_batch(
            run_id,
            tags=[RunTag(TAG_REASONS, summary), RunTag(TAG_OUTCOME, "rejected"), RunTag(TAG_DECISION, "rejected")],
        )
        log.info("candidate run %s rejected; %s@%s stays at v%s", run_id, model_name, alias, decision.champion_version)
        return {
            "promoted": False,
            "verdict": decision.verdict,
            "version": None,
            "champion_version": decision.champion_version,
        }

    current = current_version(client, model_name, alias)  # read again: it may have moved since the evaluation
    airflow_run = audit_tags[TAG_AIRFLOW_RUN]
    version = registered_version(client, model_name, airflow_run)
    allowed = {decision.champion_version} | ({str(version.version)} if version is not None else set())
    if current not in allowed:
        what_happened, rerun = (
            ("was removed", "as a first champion")
            if current is None
            else (f"moved to v{current}", f"against v{current}")
        )
        raise PromotionConflict(
            f"{model_name}@{alias} {what_happened} after this candidate was compared with "
            f"v{decision.champion_version}; nothing was changed. Re-run the DAG to judge the candidate {rerun}."
        )
    if current is None:
        # Only then can the model be missing. Asking MLflow's SQL store to create an existing model costs
        # O(versions): it answers "already exists" by loading the model with all its versions.
        ensure_registered_model(client, model_name, "Abalone age (Rings) regressor, promoted by the nightly gate.")
    if version is None:
        model_uri = candidate["model_uri"]
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        tags = {
            **audit_tags,
            TAG_REASONS: summary,
            TAG_REPORT: f"runs:/{run_id}/{REPORT_MARKDOWN}",
            TAG_PREVIOUS_CHAMPION: current or "none",
        }
        if decision.forced:
            tags |= {TAG_FORCED_BY: decision.forced_by or "unknown", TAG_FORCE_REASON: decision.force_reason or ""}
        version = client.create_model_version(model_name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)
        log.info("registered %s as %s v%s", model_uri, model_name, version.version)
    else:
        log.info("Airflow run %s already registered %s v%s", airflow_run, model_name, version.version)
    number = str(version.version)
    if current != number:
        if current is not None:
            client.set_registered_model_alias(model_name, previous_alias, current)
        client.set_registered_model_alias(model_name, alias, number)
        log.info("moved %s@%s from %s to v%s", model_name, alias, f"v{current}" if current else "(unset)", number)
    from mlflow.entities import RunTag

    # One call, straight after the move: from here on the candidate counts as decided, so a later retry
    # of this task cannot move the alias forward again over a rollback made in between.
    client.log_batch(
        run_id,
        tags=[
            RunTag(TAG_VERSION, number),
            RunTag(TAG_REASONS, summary),
            RunTag(TAG_OUTCOME, decision.verdict),
            RunTag(TAG_DECISION, decision.verdict),
        ],
    )
    _mark_promoted(client, model_name, number, decision.verdict, version.tags)
    return {"promoted": True, "verdict": decision.verdict, "version": number, "champion_version": number}


def _mark_promoted(client, model_name: str, version: str, verdict: str, tags: dict | None = None) -> None:
    """The version counts as promoted (for ``history``) only once the alias has moved to it."""
    if tags is None:
        tags = client.get_model_version(model_name, version).tags
    if TAG_DECISION not in (tags or {}):
        client.set_model_version_tag(model_name, version, TAG_PROMOTED_AT, now())
        client.set_model_version_tag(model_name, version, TAG_DECISION, verdict)


def rollback_tag(key: str) -> str:
    """The registered-model tag that records the rollback made by one Airflow run.

    MLflow-legal characters only; a digest of the whole key keeps two run ids that differ only in the
    replaced characters (or beyond the length cut) apart.
    """
    readable = re.sub(r"[^A-Za-z0-9_.\-/ ]", "-", key)[:150]
    return f"{ROLLBACK_TAG_PREFIX}{readable}.{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def rollback(
    client,
    *,
    model_name: str,
    alias: str,
    previous_alias: str,
    key: str,
    reason: str,
    requested_by: str,
    to_version: str | None = None,
) -> dict[str, Any]:
    """Move ``alias`` back to ``to_version``, or to ``previous_alias`` when none is named.

    Idempotent per ``key`` (the Airflow run): the plan is recorded on the registered model before any
    alias moves, so a retry completes the same rollback instead of rolling back once more. Afterwards
    ``previous_alias`` points at what the restored version itself replaced, so a second rollback (a
    new run) steps one further back rather than undoing the first.
    """
    from mlflow.exceptions import MlflowException

    if not reason.strip():
        raise RollbackError("a rollback needs a reason; it is recorded in the registry")
    tag = rollback_tag(key)
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as exc:
        raise RollbackError(f"registered model {model_name} does not exist: {exc.message}") from exc
    current = current_version(client, model_name, alias)
    if tag in model.tags:
        plan = json.loads(model.tags[tag])
        if plan["status"] == "done":
            log.info("rollback %s already done: %s@%s -> v%s", key, model_name, alias, plan["to"])
            return {**plan, "already_done": True}
        if current not in (plan["from"], plan["to"]):
            raise RollbackError(
                f"{model_name}@{alias} moved to v{current} while this rollback (v{plan['from']} -> v{plan['to']}) "
                "was interrupted; not overwriting it. Trigger a new rollback if it is still wanted."
            )
        log.info("resuming rollback %s: %s@%s -> v%s", key, model_name, alias, plan["to"])
    else:
        target = to_version or current_version(client, model_name, previous_alias)
        if target is None:
            raise RollbackError(
                f"{model_name}@{previous_alias} is not set, so there is no previous champion; name a version"
            )
        if str(target) == current:
            log.info("%s v%s is already %s@%s; nothing to roll back", model_name, target, model_name, alias)
            return {"from": current, "to": current, "status": "unchanged", "already_done": True}
        try:
            restored = client.get_model_version(model_name, target)
        except MlflowException as exc:
            raise RollbackError(f"{model_name} v{target} does not exist: {exc.message}") from exc
        replaced = restored.tags.get(TAG_PREVIOUS_CHAMPION)
        plan = {
            "at": now(),
            "from": current,
            "to": str(target),
            "previous_after": replaced if replaced and replaced not in ("none", str(target)) else None,
            "by": requested_by,
            "reason": reason[:1000],
            "airflow_run": key,
            "status": "started",
        }
        client.set_registered_model_tag(model_name, tag, json.dumps(plan, sort_keys=True))
    client.set_registered_model_alias(model_name, alias, plan["to"])
    if plan["previous_after"]:
        client.set_registered_model_alias(model_name, previous_alias, plan["previous_after"])
    elif current_version(client, model_name, previous_alias) is not None:
        client.delete_registered_model_alias(model_name, previous_alias)
    plan["status"] = "done"
    client.set_registered_model_tag(model_name, tag, json.dumps(plan, sort_keys=True))
    log.info("rolled %s@%s back from v%s to v%s: %s", model_name, alias, plan["from"], plan["to"], reason)
    return {**plan, "already_done": False}


def history(client, model_name: str, limit: int = 100) -> list[dict[str, Any]]:
    """Promotions and rollbacks of ``model_name``, oldest first (the latest ``limit`` versions)."""
    model = _registered_model(client, model_name)
    if model is None:
        return []
    events = []
    for version in client.search_model_versions(
        f"name = '{model_name}'", max_results=limit, order_by=["version_number DESC"]
    ):
        tags = version.tags
        if tags.get(TAG_DECISION) not in ("promoted", "forced"):
            continue
        events.append(
            {
                "when": tags.get(TAG_PROMOTED_AT, ""),
                # The worker's clock for both kinds of event, so they interleave correctly.
                "order": _epoch_ms(tags.get(TAG_PROMOTED_AT, "")),
                "event": tags[TAG_DECISION],
                "version": str(version.version),
                "replaced": tags.get(TAG_PREVIOUS_CHAMPION),
                "airflow_run": tags.get(TAG_AIRFLOW_RUN),
                "mlflow_run": version.run_id,
                "dataset": tags.get(TAG_DATASET_ID),
                "by": tags.get(TAG_FORCED_BY) or tags.get("airflow.triggered_by"),
                "why": tags.get(TAG_FORCE_REASON) or tags.get(TAG_REASONS, ""),
            }
        )
    events += _rollback_events(model)
    events.sort(key=lambda event: event["order"])
    return [{key: value for key, value in event.items() if key != "order"} for event in events]


def rollbacks(client, model_name: str) -> list[dict[str, Any]]:
    """The rollbacks of ``model_name``, oldest first, as ``history`` lists them: one request, no version search."""
    model = _registered_model(client, model_name)
    events = sorted(_rollback_events(model), key=lambda event: event["order"]) if model is not None else []
    return [{key: value for key, value in event.items() if key != "order"} for event in events]


def _registered_model(client, model_name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def _rollback_events(model) -> list[dict[str, Any]]:
    """Each rollback recorded in the registered model's tags (``rollback_tag``)."""
    events = []
    for key, value in model.tags.items():
        if key.startswith(ROLLBACK_TAG_PREFIX):
            plan = json.loads(value)
            events.append(
                {
                    "when": plan["at"],
                    "order": _epoch_ms(plan["at"]),
                    "event": "rollback" if plan["status"] == "done" else "rollback (incomplete)",
                    "version": plan["to"],
                    "replaced": plan["from"],
                    "airflow_run": plan["airflow_run"],
                    "mlflow_run": None,
                    "dataset": None,
                    "by": plan["by"],
                    "why": plan["reason"],
                }
            )
    return events
