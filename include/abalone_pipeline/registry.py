"""Registry writes: idempotent registration, a guarded alias move, and the audit trail on runs and versions."""

from __future__ import annotations

import logging
from typing import Any

from abalone_pipeline.gate import Decision

log = logging.getLogger(__name__)

# Tag keys are the audit trail: from a version you reach the run, the data and the Airflow run.
TAG_DECISION = "abalone.gate.decision"
TAG_REASONS = "abalone.gate.reasons"
TAG_VERSION = "abalone.registered_version"
TAG_PREVIOUS_CHAMPION = "abalone.previous_champion"


class PromotionConflict(RuntimeError):
    """The alias moved between evaluation and promotion; the gate's comparison no longer holds."""


def _error_code(exc: Exception) -> str:
    return getattr(exc, "error_code", "")


def current_version(client, model_name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None if the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def ensure_registered_model(client, model_name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, description=description)
        log.info("created registered model %s", model_name)
    except MlflowException as exc:
        if _error_code(exc) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def registered_version(client, model_name: str, run_id: str):
    """The version already registered from ``run_id``, if any (the oldest, should there be several)."""
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return min(existing, key=lambda v: int(v.version)) if existing else None


def apply_decision(
    client,
    *,
    model_name: str,
    alias: str,
    candidate: dict[str, Any],
    decision: Decision,
    audit_tags: dict[str, str],
) -> dict[str, Any]:
    """Record the decision on the candidate's run; if it passed, register it and move ``alias`` to it.

    A candidate is decided once. The decision tag on its run is written last, so a re-run of a DAG run
    whose promotion finished changes nothing (it will not move the alias back to an older champion),
    while a retry after a partial failure finds the version it registered and completes the move.
    The alias moves only if it still points where it pointed when the candidate was evaluated
    (``decision.champion_version``), so a concurrent promotion is never silently overwritten.
    """
    run_id = candidate["run_id"]
    recorded = client.get_run(run_id).data.tags
    if TAG_DECISION in recorded:
        log.info("candidate run %s was already %s; not acting on it again", run_id, recorded[TAG_DECISION])
        return {
            "promoted": recorded[TAG_DECISION] == "promoted",
            "version": recorded.get(TAG_VERSION),
            "champion_version": current_version(client, model_name, alias),
            "reasons": recorded.get(TAG_REASONS, ""),
            "already_decided": True,
        }
    reasons = "; ".join(decision.reasons)
    if not decision.promote:
        client.set_tag(run_id, TAG_REASONS, reasons)
        client.set_tag(run_id, TAG_DECISION, "rejected")
        log.info("candidate run %s rejected; %s@%s stays at v%s", run_id, model_name, alias, decision.champion_version)
        return {"promoted": False, "version": None, "champion_version": decision.champion_version, "reasons": reasons}

    ensure_registered_model(client, model_name, "Abalone age (Rings) regressor, promoted by the nightly gate.")
    version = registered_version(client, model_name, run_id)
    current = current_version(client, model_name, alias)
    allowed = {decision.champion_version} | ({str(version.version)} if version is not None else set())
    if current not in allowed:
        raise PromotionConflict(
            f"{model_name}@{alias} moved to v{current} after this candidate was compared with "
            f"v{decision.champion_version}; nothing was changed. Re-run the DAG to compare against v{current}."
        )
    if version is None:
        model_uri = candidate["model_uri"]
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        version = client.create_model_version(
            model_name,
            source=model_uri,
            run_id=run_id,
            tags={
                **audit_tags,
                TAG_DECISION: "promoted",
                TAG_REASONS: reasons,
                TAG_PREVIOUS_CHAMPION: current or "none",
            },
            model_id=model_id,
        )
        log.info("registered %s as %s v%s", model_uri, model_name, version.version)
    else:
        log.info("run %s is already registered as %s v%s", run_id, model_name, version.version)
    number = str(version.version)
    if current != number:
        client.set_registered_model_alias(model_name, alias, number)
        log.info("moved %s@%s from %s to v%s", model_name, alias, f"v{current}" if current else "(unset)", number)
    client.set_tag(run_id, TAG_VERSION, number)
    client.set_tag(run_id, TAG_REASONS, reasons)
    client.set_tag(run_id, TAG_DECISION, "promoted")
    return {"promoted": True, "version": number, "champion_version": number, "reasons": reasons}
