"""Bodies of the DAG's Python tasks: each a few lines over the typed modules of this package."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from abalone_pipeline.config import Settings
from abalone_pipeline.gate import Decision, GatePolicy, PolicyError, decide
from abalone_pipeline.notify import run_summary

log = logging.getLogger(__name__)


def s3_client_factory(aws_conn_id: str | None):
    """Builds the boto3 S3 client of the Amazon provider's connection ``aws_conn_id``, when a store needs one."""

    def factory():
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=aws_conn_id).get_conn()

    return factory


def previous_manifest_uri(inlet_events, asset) -> str | None:
    """The manifest of the dataset staged before this run, from the staged-dataset Asset's last event."""
    try:
        events = inlet_events[asset]
        return events[-1].extra.get("manifest_uri") if len(events) else None
    except Exception as exc:  # drift is advisory: never fail staging over it
        log.warning("cannot read the previous staged dataset from the Asset's events: %s", exc)
        return None


def dataset_drift(settings: Settings, staged: dict[str, Any], previous_uri: str | None) -> dict[str, Any]:
    """Drift of ``staged`` (the stage task's XCom) against the previous dataset; ``against`` None: nothing compared."""
    import json

    from abalone_pipeline.drift import DriftThresholds, compare
    from abalone_pipeline.objectstore import read_source

    if previous_uri is None or previous_uri == staged["manifest_uri"]:
        reason = "no earlier staged dataset" if previous_uri is None else "the same dataset as the previous run"
        log.info("drift: not computed (%s)", reason)
        return {"against": None, "reason": reason}
    try:
        previous = json.loads(read_source(previous_uri, s3_client_factory(settings.aws_conn_id)))
    except Exception as exc:  # advisory: say so and go on
        log.warning("drift: cannot read the previous manifest (%s)", exc)
        return {"against": previous_uri, "reason": f"unreadable: {exc}"}
    if "statistics" not in previous or not staged.get("statistics"):
        return {"against": previous_uri, "reason": "a manifest has no statistics (staged by an older version)"}
    thresholds = DriftThresholds(settings.drift_max_mean_shift, settings.drift_max_share_shift)
    result = {"against": previous["dataset_id"], **compare(previous["statistics"], staged["statistics"], thresholds)}
    for warning in result["warnings"]:
        log.warning("drift against dataset %s: %s", previous["dataset_id"], warning)
    if not result["warnings"]:
        log.info("drift against dataset %s: within the thresholds", previous["dataset_id"])
    return result


def stage_dataset(settings: Settings, source_uri: str, max_quarantine_fraction: float) -> dict[str, Any]:
    """Read ``source_uri``, validate and split it, and stage it in the configured object store."""
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_pipeline.objectstore import PermanentError, open_source, open_store
    from abalone_pipeline.staging import StagingError, stage
    from abalone_pipeline.validation import ValidationPolicy

    factory = s3_client_factory(settings.aws_conn_id)
    policy = ValidationPolicy(max_quarantine_fraction=float(max_quarantine_fraction))
    if settings.staging_dir and not Path(settings.staging_dir).is_dir():
        raise AirflowFailException(f"ABALONE_STAGING_DIR={settings.staging_dir} is not a directory")
    try:
        store = open_store(settings.object_store_uri, factory)
        with open_source(source_uri, factory, max_bytes=settings.max_source_bytes) as source:
            size = f"{source.size:,} bytes" if source.size is not None else "size not known up front"
            log.info("staging %s (%s) into %s", source_uri, size, settings.object_store_uri)
            staged = stage(source, source_uri, store, policy=policy, workdir=settings.staging_dir)
    except (PermanentError, StagingError) as exc:
        # A missing, forbidden, oversized or invalid source, or a staged object changed by hand, will not
        # fix itself on retry; other errors (the network, the store) are retried.
        raise AirflowFailException(f"cannot stage: {exc}") from exc
    log.info("dataset %s: %s (%s)", staged.dataset_id, staged.manifest_uri, staged.rows)
    summary = staged.validation
    log.info(
        "validation: %d data rows, %d valid, %d quarantined %s%s",
        summary["data_rows"],
        summary["valid_rows"],
        summary["quarantined_rows"],
        summary["quarantined_by_rule"] or "",
        f" in {staged.quarantine_uri}" if staged.quarantine_uri else "",
    )
    for rule, count in summary["warnings"].items():
        log.warning("validation warning: %s in %d rows (kept)", rule, count)
    return staged.to_xcom()


def policy_for_run(settings: Settings, params: dict[str, Any]) -> GatePolicy:
    """The configured gate policy with this run's overrides (the ``gate`` Param) applied."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return GatePolicy.from_dict(params.get("gate") or {}, settings.gate_policy)
    except (PolicyError, TypeError) as exc:
        raise AirflowFailException(f"invalid gate policy for this run: {exc}") from exc


def check_run_options(settings: Settings, params: dict[str, Any]) -> None:
    """Refuse contradictory run options before anything is staged or trained."""
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_pipeline.config import source_allowed

    if params.get("force_promote") and not str(params.get("force_reason") or "").strip():
        raise AirflowFailException("force_promote needs a force_reason: it is recorded on the promoted version")
    source = str(params.get("source_uri") or settings.source_uri)
    if not source_allowed(source, settings.source_prefixes):
        # The message names the source and the setting, never anything read from it.
        raise AirflowFailException(
            f"source {source} is not allowed: sources must lie under one of {', '.join(settings.source_prefixes)} "
            "(ABALONE_ALLOWED_SOURCES)"
        )
    policy_for_run(settings, params)


def triggered_by(dag_run) -> str:
    """Who started the run: the UI or API user, or the scheduler."""
    run_type = getattr(dag_run.run_type, "value", dag_run.run_type)  # the Task SDK gives an enum
    return getattr(dag_run, "triggering_user_name", None) or f"airflow ({run_type})"


def judge(settings: Settings, evaluation: dict[str, Any], params: dict[str, Any], dag_run) -> dict[str, Any]:
    """Apply this run's gate policy to the evaluation and log every rule's finding."""
    forced = bool(params.get("force_promote"))
    decision = decide(
        evaluation,
        policy_for_run(settings, params),
        force_reason=str(params.get("force_reason") or "").strip() if forced else None,
        forced_by=triggered_by(dag_run) if forced else None,
    )
    log.info("gate decision: %s", decision.summary())
    for check in decision.checks:
        log.info(
            "  %-4s %-24s %s",
            "n/a" if not check.applied else "pass" if check.passed else "FAIL",
            check.rule,
            check.detail,
        )
    return decision.to_dict()


def promote_candidate(
    settings: Settings,
    *,
    candidate: dict[str, Any],
    decision: dict[str, Any],
    evaluation: dict[str, Any],
    staged: dict[str, Any],
    params: dict[str, Any],
    dag_run,
    try_number: int,
) -> dict[str, Any]:
    """Record the decision and its report in MLflow and, if it passed, make the candidate the champion."""
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_pipeline import registry
    from abalone_pipeline.gate_report import render

    if candidate["dataset_id"] != staged["dataset_id"]:
        raise AirflowFailException(
            f"candidate run {candidate['run_id']} was trained on dataset {candidate['dataset_id']}, "
            f"but this run staged {staged['dataset_id']}; not promoting it"
        )
    gate_decision = Decision.from_dict(decision)
    image = candidate.get("trainer_image") or {}
    audit_tags = {
        registry.TAG_AIRFLOW_RUN: f"{dag_run.dag_id}/{dag_run.run_id}",
        "airflow.dag_id": dag_run.dag_id,
        "airflow.run_id": dag_run.run_id,
        "airflow.run_after": str(dag_run.run_after),
        "airflow.try_number": str(try_number),
        "airflow.triggered_by": triggered_by(dag_run),
        "abalone.dataset_id": staged["dataset_id"],
        "abalone.manifest_uri": staged["manifest_uri"],
        "abalone.source_uri": staged.get("source_uri", ""),
        "abalone.source_sha256": staged.get("source_sha256", ""),
        "abalone.trainer_image": image.get("name", ""),
        "abalone.trainer_image_id": image.get("id", ""),
        "abalone.trainer_image_digest": image.get("digest") or "none (built locally, never pushed)",
        "abalone.code_revision": image.get("revision") or candidate.get("code_revision") or "unknown",
        "mlflow.run_id": candidate["run_id"],
        "airflow.run_url": airflow_run_url(settings, dag_run),
    }
    context = {key: value for key, value in audit_tags.items() if key.startswith(("airflow.", "abalone."))}
    report = render(gate_decision, evaluation, context)
    client = registry.mlflow_client(settings.tracking_uri)
    if staged.get("drift"):
        client.log_dict(candidate["run_id"], staged["drift"], "data/drift.json")
    client.set_tag(candidate["run_id"], "airflow.run_url", audit_tags["airflow.run_url"])  # the way back

    def with_summary(outcome: dict[str, Any]) -> dict[str, Any]:
        summary = run_summary(
            staged=staged,
            decision=decision,
            outcome=outcome,
            mlflow_run_url=mlflow_run_url(settings, client, candidate),
        )
        log.info("run summary: %s", summary)
        return {**outcome, "summary": summary}

    if params.get("dry_run"):
        registry.record_report(client, candidate["run_id"], gate_decision, report)
        client.set_tag(candidate["run_id"], registry.TAG_DRY_RUN, gate_decision.verdict)
        log.info("DRY RUN: the gate says %s; the registry was not touched", gate_decision.verdict.upper())
        return with_summary({"promoted": False, "verdict": gate_decision.verdict, "dry_run": True, "version": None})
    try:
        outcome = registry.apply_decision(
            client,
            model_name=settings.model_name,
            alias=settings.champion_alias,
            previous_alias=settings.previous_alias,
            candidate=candidate,
            decision=gate_decision,
            audit_tags=audit_tags,
            report_markdown=report,
        )
    except registry.PromotionConflict as exc:
        # Retrying cannot help: the comparison itself is stale.
        raise AirflowFailException(str(exc)) from exc
    champion = outcome["champion_version"]
    log.info(
        "%s; %s@%s is v%s",
        outcome["verdict"].upper(),
        settings.model_name,
        settings.champion_alias,
        champion if champion is not None else " (none yet)",
    )
    return with_summary(outcome)


def airflow_run_url(settings: Settings, dag_run) -> str:
    """The run's page in the Airflow UI."""
    return f"{settings.airflow_base_url}/dags/{quote(dag_run.dag_id, safe='')}/runs/{quote(dag_run.run_id, safe='')}"


def mlflow_run_url(settings: Settings, client, candidate: dict[str, Any]) -> str | None:
    """The candidate's page in the MLflow UI; None for SageMaker (its UI is reached through the console)."""
    if not settings.tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        experiment = client.get_run(candidate["run_id"]).info.experiment_id
    except Exception as exc:  # a link is a convenience: never fail the promotion over it
        log.warning("cannot look up the candidate's experiment for its link: %s", exc)
        return None
    return f"{settings.tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{candidate['run_id']}"


def rollback_champion(settings: Settings, params: dict[str, Any], dag_run) -> dict[str, Any]:
    """Move the champion alias back to the previous champion, or to the version named in the run's Params."""
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_pipeline import registry

    client = registry.mlflow_client(settings.tracking_uri)
    try:
        outcome = registry.rollback(
            client,
            model_name=settings.model_name,
            alias=settings.champion_alias,
            previous_alias=settings.previous_alias,
            key=f"{dag_run.dag_id}/{dag_run.run_id}",
            reason=str(params.get("reason") or ""),
            requested_by=triggered_by(dag_run),
            to_version=str(params["to_version"]) if params.get("to_version") else None,
        )
    except registry.RollbackError as exc:
        raise AirflowFailException(f"cannot roll back: {exc}") from exc
    log.info("%s@%s is v%s (was v%s)", settings.model_name, settings.champion_alias, outcome["to"], outcome["from"])
    return outcome


def idempotency_key(dag_id: str, run_id: str) -> str:
    """What the train task passes as ``--idempotency-key``: one key per DAG run (tag ``abalone.idempotency_key``)."""
    return f"{dag_id}/{run_id}"


def close_fences(settings: Settings, dag_id: str, run_id: str, why: str) -> list[str]:
    """Close the trainer tasks' fences, so a container of this run left on any host stops at its next check."""
    from abalone_pipeline import attempts
    from abalone_pipeline.objectstore import open_store

    store = open_store(settings.object_store_uri, s3_client_factory(settings.aws_conn_id))
    return [
        attempts.close(store, attempts.fence_key(dag_id, run_id, task_id), why) for task_id in attempts.TRAINER_TASKS
    ]


def close_running_runs(settings: Settings, dag_id: str, run_id: str) -> list[str]:
    """Mark the MLflow runs of this DAG run still RUNNING (their attempt is gone) as KILLED."""
    from abalone_pipeline import registry

    client = registry.mlflow_client(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return []
    key = idempotency_key(dag_id, run_id)
    closed = []
    for run in client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`abalone.idempotency_key` = '{key}' and attributes.status = 'RUNNING'",
        max_results=50,
    ):
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def remove_run_containers(settings: Settings, dag_id: str, run_id: str) -> list[str]:
    """Stop and remove this DAG run's trainer containers on this worker's Docker engine."""
    import docker
    from abalone_pipeline.operators import container_labels, label_filter, remove_containers

    cli = docker.APIClient(base_url=settings.docker_url, version="auto", timeout=60)
    try:
        found = cli.containers(all=True, filters=label_filter(container_labels(dag_id, run_id)))
        return remove_containers(cli, found, settings.stop_grace_seconds, "its DAG run is over")
    finally:
        cli.close()


def clean_up_run(settings: Settings, dag_id: str, run_id: str, *, containers: bool = True) -> dict[str, Any]:
    """Leave nothing of a DAG run behind: fences closed, containers removed, no MLflow run RUNNING.

    Every step is tried even when one fails, and each says what it did; a step that failed fails the task
    (a teardown: the DAG run's state is its work's, not this task's). ``containers=False`` where no Docker
    engine is reachable: a container left anywhere then stops itself at its next fence check.
    """
    from airflow.sdk.exceptions import AirflowException

    steps = {
        "fences_closed": lambda: close_fences(settings, dag_id, run_id, "the DAG run is over"),
        "containers_removed": lambda: remove_run_containers(settings, dag_id, run_id) if containers else [],
        "mlflow_runs_killed": lambda: close_running_runs(settings, dag_id, run_id),
    }
    cleaned: dict[str, Any] = {}
    errors = []
    for name, step in steps.items():
        try:
            cleaned[name] = step()
        except Exception as exc:
            log.error("clean-up step %s failed: %s", name, exc)
            errors.append(f"{name}: {exc}")
    log.info(
        "cleaned up %s/%s: containers removed: %s; MLflow runs left RUNNING, now KILLED: %s",
        dag_id,
        run_id,
        ", ".join(cleaned.get("containers_removed") or []) or "none",
        ", ".join(cleaned.get("mlflow_runs_killed") or []) or "none",
    )
    if errors:
        raise AirflowException("clean-up incomplete: " + "; ".join(errors))
    return cleaned


def clean_up_after_failure(settings: Settings):
    """A DAG-level ``on_failure_callback`` for a run that ends without its ``clean_up`` task (a run timeout):
    ``clean_up_run`` without the containers (it runs in the DAG processor, where no Docker engine may be)."""

    def callback(context) -> None:
        dag_run = context.get("dag_run")
        if dag_run is None:
            return
        try:
            clean_up_run(settings, dag_run.dag_id, dag_run.run_id, containers=False)
        except Exception as exc:  # a callback's failure changes nothing; the log says what was left
            log.warning("after the failed run %s: %s", dag_run.run_id, exc)

    return callback
