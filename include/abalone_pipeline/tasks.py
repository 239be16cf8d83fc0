"""Bodies of the DAG's Python tasks: each a few lines over the typed modules of this package."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from abalone_pipeline.config import Settings
from abalone_pipeline.gate import Decision, GatePolicy, PolicyError, decide

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
    from abalone_pipeline.staging.sources import read_source

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

    from abalone_pipeline.objectstore import PermanentError, open_store
    from abalone_pipeline.staging import StagingError, stage
    from abalone_pipeline.staging.sources import open_source
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
            staged = stage(
                source, source_uri, store, policy=policy, workdir=settings.staging_dir, workers=settings.staging_workers
            )
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


def check_run_options(settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
    """Refuse a run option that is not allowed or contradicts another, before anything is staged or trained.

    Returns what the later tasks act on, resolved once: the source to stage, the tolerated share of bad rows,
    the run's gate policy (the configured one with the ``gate`` Param's overrides), whether it is a dry run,
    the reason for forcing (None unless forced), and whether to train even when nothing changed.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_pipeline.config import source_allowed

    force_reason = str(params.get("force_reason") or "").strip() if params.get("force_promote") else None
    if force_reason == "":
        raise AirflowFailException("force_promote needs a force_reason: it is recorded on the promoted version")
    source = str(params.get("source_uri") or settings.source_uri)
    if not source_allowed(source, settings.source_prefixes):
        # The message names the source and the setting, never anything read from it.
        raise AirflowFailException(
            f"source {source} is not allowed: sources must lie under one of {', '.join(settings.source_prefixes)} "
            "(ABALONE_ALLOWED_SOURCES)"
        )
    options = {
        "source_uri": source,
        "max_quarantine_fraction": float(params.get("max_quarantine_fraction", settings.max_quarantine_fraction)),
        "gate_policy": policy_for_run(settings, params).to_dict(),
        "dry_run": bool(params.get("dry_run")),
        "force_reason": force_reason,
        "force_training": bool(params.get("force_training")),
    }
    log.info("run options: %s", options)
    return options


def triggered_by(dag_run) -> str:
    """Who started the run: the UI or API user, or the scheduler."""
    run_type = getattr(dag_run.run_type, "value", dag_run.run_type)  # the Task SDK gives an enum
    return getattr(dag_run, "triggering_user_name", None) or f"airflow ({run_type})"


def gate_candidate(evaluation: dict[str, Any], options: dict[str, Any], dag_run) -> dict[str, Any]:
    """Pass the candidate through the gate: the run's policy and forcing (``options``, as ``check_run_options``
    resolved them) applied to the evaluation by ``gate.decide``; every rule's finding is logged."""
    force_reason = options["force_reason"]
    decision = decide(
        evaluation,
        GatePolicy(**options["gate_policy"]),
        force_reason=force_reason,
        forced_by=triggered_by(dag_run) if force_reason else None,
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


def audit_tags(
    staged: dict[str, Any], candidate: dict[str, Any], dag_run, try_number: int, run_url: str
) -> dict[str, str]:
    """Where a promoted version comes from: the data, the Airflow run, the image and the code."""
    from abalone_contract.constants import TAG_CODE_REVISION, TAG_DATASET_ID, TAG_MANIFEST_URI
    from abalone_pipeline import registry

    image = candidate.get("trainer_image") or {}
    return {
        registry.TAG_AIRFLOW_RUN: f"{dag_run.dag_id}/{dag_run.run_id}",
        "airflow.dag_id": dag_run.dag_id,
        "airflow.run_id": dag_run.run_id,
        "airflow.run_after": str(dag_run.run_after),
        "airflow.try_number": str(try_number),
        "airflow.triggered_by": triggered_by(dag_run),
        TAG_DATASET_ID: staged["dataset_id"],
        TAG_MANIFEST_URI: staged["manifest_uri"],
        "abalone.source_uri": staged.get("source_uri", ""),
        "abalone.source_sha256": staged.get("source_sha256", ""),
        "abalone.trainer_image": image.get("name", ""),
        registry.TAG_TRAINER_IMAGE_ID: image.get("id", ""),
        "abalone.trainer_image_digest": image.get("digest") or "none (built locally, never pushed)",
        TAG_CODE_REVISION: image.get("revision") or candidate.get("code_revision") or "unknown",
        "mlflow.run_id": candidate["run_id"],
        "airflow.run_url": run_url,
    }


def gate_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """The night's numbers beside the candidate's own ``test_rmse``, for trends across runs."""
    metrics = {f"gate.baseline_{name}_rmse": scores["test_rmse"] for name, scores in evaluation["baselines"].items()}
    if evaluation.get("champion"):
        metrics["gate.champion_rmse"] = evaluation["champion"]["metrics"]["test_rmse"]
    return {name: float(value) for name, value in metrics.items() if value is not None}


def record_decision(
    settings: Settings,
    *,
    candidate: dict[str, Any],
    decision: dict[str, Any],
    evaluation: dict[str, Any],
    staged: dict[str, Any],
    dry_run: bool,
    dag_run,
    try_number: int,
) -> dict[str, Any]:
    """Record the gate's decision on the candidate's run, whatever it is; return it with the run's outcome.

    On the run: the report (Markdown and JSON) and its per-slice chart, the champion's and the baselines'
    scores as metrics, the way back to the Airflow run (a tag and, clickable, the run's description), and
    for a rejection or a dry run the outcome itself. A promotion's outcome is written by ``promote`` once
    the alias has moved. A candidate already decided (a cleared and re-run DAG run) keeps its decision.
    """
    from abalone_contract.tracking import mlflow_client
    from abalone_pipeline.charts import Drawing

    # matplotlib and MLflow's client each take seconds to import: the chart is drawn meanwhile.
    try:
        chart = Drawing(evaluation, decision)
    except Exception as exc:  # the report says it all in words
        log.warning("no gate chart: cannot start the process that draws it: %s", exc)
        chart = None
    try:
        client = mlflow_client(settings.tracking_uri)
        return _record(settings, client, chart, candidate, decision, evaluation, staged, dry_run, dag_run, try_number)
    finally:
        if chart is not None:
            chart.close()


def _record(settings: Settings, client, chart, candidate, decision, evaluation, staged, dry_run, dag_run, try_number):
    """``record_decision`` once the client is loaded; the returned decision carries the champion after it
    (``champion_now``), which the summary of a night that promotes nothing shows without a client of its own."""
    from abalone_pipeline import links, registry
    from abalone_pipeline.gate_report import render
    from abalone_pipeline.summary import DRY_RUN, REJECTED, outcome_of

    run_id = candidate["run_id"]
    run = client.get_run(run_id)
    recorded = run.data.tags.get(registry.TAG_DECISION)
    if recorded:
        # Gated again, it would be compared with itself if it is the champion now: the night's decision is
        # the one on record, and its report says why.
        log.info("candidate run %s was already decided (%s); keeping that decision", run_id, recorded)
        try:
            stored = registry.recorded_decision(client, run_id)
        except Exception as exc:  # an older run without its JSON: tonight's decision stands in for it
            log.warning("cannot read the recorded decision of run %s (%s); using tonight's", run_id, exc)
            stored = decision
        decided = {**stored, "outcome": recorded, "experiment_id": run.info.experiment_id, "already_decided": True}
        return {**decided, **champion_now(settings, client)}
    outcome = outcome_of(decision, dry_run=dry_run)
    gate_decision = Decision.from_dict(decision)
    run_url = links.airflow_run_url(settings.airflow_base_url, dag_run.dag_id, dag_run.run_id)
    tags = audit_tags(staged, candidate, dag_run, try_number, run_url)
    context = {key: value for key, value in tags.items() if key.startswith(("airflow.", "abalone."))}
    registry.record_report(client, run_id, gate_decision, render(gate_decision, evaluation, context))
    log_chart(client, run_id, chart)
    if staged.get("drift"):
        client.log_dict(run_id, staged["drift"], "data/drift.json")
    from mlflow.entities import Metric, RunTag

    now_ms = int(run.info.end_time or run.info.start_time or 0)
    metrics = [Metric(name, value, now_ms, 0) for name, value in gate_metrics(evaluation).items()]
    run_tags = [
        RunTag("airflow.run_url", run_url),
        RunTag("mlflow.note.content", f"Trained by Airflow run [{dag_run.dag_id} / {dag_run.run_id}]({run_url})."),
        RunTag(registry.TAG_REASONS, gate_decision.summary()[: registry.MAX_TAG_VALUE]),
    ]
    if outcome == DRY_RUN:
        run_tags += [RunTag(registry.TAG_DRY_RUN, gate_decision.verdict), RunTag(registry.TAG_OUTCOME, DRY_RUN)]
    client.log_batch(run_id, metrics=metrics, tags=run_tags)
    if outcome == DRY_RUN:
        log.info("DRY RUN: the gate says %s; the registry is not touched", gate_decision.verdict.upper())
    elif outcome == REJECTED:  # recorded as decided, the registry untouched
        registry.apply_decision(
            client,
            model_name=settings.model_name,
            alias=settings.champion_alias,
            previous_alias=settings.previous_alias,
            candidate=candidate,
            decision=gate_decision,
            audit_tags=tags,
        )
    return {**decision, "outcome": outcome, "experiment_id": run.info.experiment_id, **champion_now(settings, client)}


def champion_now(settings: Settings, client=None) -> dict[str, str | None]:
    """``{"champion_now": version}`` (None: there is no champion) as the registry has it now, read with
    ``client`` (a new MLflow client if None); nothing, with a warning, if the registry cannot say."""
    from abalone_contract.tracking import mlflow_client
    from abalone_pipeline import registry

    try:
        client = client or mlflow_client(settings.tracking_uri)
        return {"champion_now": registry.current_version(client, settings.model_name, settings.champion_alias)}
    except Exception as exc:  # a summary without the champion is still one
        log.warning("cannot read %s@%s: %s", settings.model_name, settings.champion_alias, exc)
        return {}


def log_chart(client, run_id: str, chart) -> None:
    """The candidate-vs-champion chart per slice (a ``charts.Drawing``), beside the report; a chart never
    fails the gate."""
    if chart is None:
        return
    try:
        png = chart.result()
    except Exception as exc:  # the report says it all in words
        log.warning("no gate chart: %s", exc)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slices.png"
        path.write_bytes(png)
        client.log_artifact(run_id, str(path), "gate")


def promote_candidate(
    settings: Settings,
    *,
    candidate: dict[str, Any],
    decision: dict[str, Any],
    staged: dict[str, Any],
    dag_run,
    try_number: int,
) -> dict[str, Any]:
    """Register the candidate the gate passed (or the run forced) and move the champion alias to it."""
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_contract.tracking import mlflow_client
    from abalone_pipeline import links, registry

    if candidate["dataset_id"] != staged["dataset_id"]:
        raise AirflowFailException(
            f"candidate run {candidate['run_id']} was trained on dataset {candidate['dataset_id']}, "
            f"but this run staged {staged['dataset_id']}; not promoting it"
        )
    gate_decision = Decision.from_dict(decision)
    run_url = links.airflow_run_url(settings.airflow_base_url, dag_run.dag_id, dag_run.run_id)
    client = mlflow_client(settings.tracking_uri)
    try:
        outcome = registry.apply_decision(
            client,
            model_name=settings.model_name,
            alias=settings.champion_alias,
            previous_alias=settings.previous_alias,
            candidate=candidate,
            decision=gate_decision,
            audit_tags=audit_tags(staged, candidate, dag_run, try_number, run_url),
        )
    except registry.PromotionConflict as exc:
        # Retrying cannot help: the comparison itself is stale.
        raise AirflowFailException(str(exc)) from exc
    log.info(
        "%s; %s@%s is v%s", outcome["verdict"].upper(), settings.model_name, settings.champion_alias, outcome["version"]
    )
    return outcome


def summarize(
    settings: Settings,
    *,
    decision: dict[str, Any],
    promoted: dict[str, Any] | None,
    staged: dict[str, Any],
    candidate: dict[str, Any] | None,
    dag_run,
    reread: bool = False,
) -> dict[str, Any]:
    """The run at a glance, with the champion after the run; logged as JSON, links alone.

    ``candidate`` is None on a night that did not train (its ``decision`` says why). On a night that
    promotes nothing, the champion is the one the gate read once its decision was recorded (no MLflow
    client to load here: a few seconds of such a night); after a promotion, on a night that did not
    train, if the gate could not read it, or when ``reread`` (a retried or cleared summary, which may come
    long after the gate), it is read from the registry now.
    """
    from abalone_pipeline import links
    from abalone_pipeline.summary import log_lines, run_summary

    known = decision if promoted is None and not reread else {}  # the gate's read, if it could
    champion = (known if "champion_now" in known else champion_now(settings)).get("champion_now")
    version = (promoted or {}).get("version")
    run_id = (candidate or {}).get("run_id")
    summary = run_summary(
        staged=staged,
        decision=decision,
        outcome=decision["outcome"] if promoted is None else promoted["verdict"],
        promoted_version=version,
        champion_now=champion,
        links={
            "airflow_run": links.airflow_run_url(settings.airflow_base_url, dag_run.dag_id, dag_run.run_id),
            "mlflow_run": links.run_link(settings, run_id, decision.get("experiment_id")) if run_id else None,
            "gate_report": gate_report_link(settings, run_id, decision.get("experiment_id")) if run_id else None,
            "promoted_version": links.version_link(settings, version),
            "champion": links.version_link(settings, champion),
        },
    )
    for line in log_lines(summary):
        log.info("%s", line)
    return summary


def gate_report_link(settings: Settings, run_id: str, experiment_id: str | None) -> str | None:
    from abalone_pipeline import links, registry

    return links.run_link(settings, run_id, experiment_id, f"artifacts/{registry.REPORT_MARKDOWN}")


def rollback_champion(settings: Settings, params: dict[str, Any], dag_run) -> dict[str, Any]:
    """Move the champion alias back to the previous champion, or to the version named in the run's Params."""
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_contract.tracking import mlflow_client
    from abalone_pipeline import registry

    client = mlflow_client(settings.tracking_uri)
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
    from abalone_contract import tracking
    from abalone_contract.constants import idempotency_key

    client = tracking.mlflow_client(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return []
    return tracking.close_running_runs(client, experiment.experiment_id, idempotency_key(dag_id, run_id))


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
