"""Bodies of the DAG's Python tasks: each a few lines over the typed modules of this package."""

from __future__ import annotations

import logging
from typing import Any

from abalone_pipeline.config import Settings
from abalone_pipeline.gate import Decision, GatePolicy, decide

log = logging.getLogger(__name__)


def _s3_client_factory(settings: Settings):
    def factory():
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=settings.aws_conn_id).get_conn()

    return factory


def stage_dataset(settings: Settings, source_uri: str) -> dict[str, Any]:
    """Read ``source_uri``, validate and split it, and stage it in the configured object store."""
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_pipeline.objectstore import MissingObject, open_store, read_source
    from abalone_pipeline.staging import StagingError, stage

    factory = _s3_client_factory(settings)
    try:
        payload = read_source(source_uri, factory)
    except MissingObject as exc:
        # A missing or forbidden source will not fix itself on retry; other store errors are retried.
        raise AirflowFailException(f"cannot stage: {exc}") from exc
    log.info("read %d bytes from %s", len(payload), source_uri)
    try:
        staged = stage(payload, source_uri, open_store(settings.object_store_uri, factory))
    except StagingError as exc:
        raise AirflowFailException(f"cannot stage: {exc}") from exc
    log.info("dataset %s: %s (%s)", staged.dataset_id, staged.manifest_uri, staged.rows)
    return staged.to_xcom()


def judge(evaluation: dict[str, Any], max_test_rmse: float, rmse_tolerance: float) -> dict[str, Any]:
    """Apply the gate policy to the evaluation scores."""
    decision = decide(
        evaluation["candidate"]["metrics"],
        evaluation["champion"],
        GatePolicy(max_test_rmse=float(max_test_rmse), rmse_tolerance=float(rmse_tolerance)),
    )
    log.info("gate decision: %s", decision.summary())
    return decision.to_dict()


def promote_candidate(
    settings: Settings, candidate: dict[str, Any], decision: dict[str, Any], staged: dict[str, Any], dag_run
) -> dict[str, Any]:
    """Record the decision in MLflow and, if it passed, make the candidate the champion."""
    from airflow.sdk.exceptions import AirflowFailException
    from mlflow.tracking import MlflowClient

    from abalone_pipeline.registry import PromotionConflict, apply_decision

    if candidate["dataset_id"] != staged["dataset_id"]:
        raise AirflowFailException(
            f"candidate run {candidate['run_id']} was trained on dataset {candidate['dataset_id']}, "
            f"but this run staged {staged['dataset_id']}; not promoting it"
        )
    gate_decision = Decision.from_dict(decision)
    audit_tags = {
        "airflow.dag_id": dag_run.dag_id,
        "airflow.run_id": dag_run.run_id,
        "airflow.run_after": str(dag_run.run_after),
        "abalone.dataset_id": staged["dataset_id"],
        "abalone.manifest_uri": staged["manifest_uri"],
        "mlflow.run_id": candidate["run_id"],
    }
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        outcome = apply_decision(
            client,
            model_name=settings.model_name,
            alias=settings.champion_alias,
            candidate=candidate,
            decision=gate_decision,
            audit_tags=audit_tags,
        )
    except PromotionConflict as exc:
        # Retrying cannot help: the comparison itself is stale.
        raise AirflowFailException(str(exc)) from exc
    champion = outcome["champion_version"]
    log.info(
        "%s; %s@%s is v%s",
        "PROMOTED" if outcome["promoted"] else "NOT PROMOTED",
        settings.model_name,
        settings.champion_alias,
        champion if champion is not None else " (none yet)",
    )
    return outcome
