"""MLflow helpers shared by training and scoring: experiment lookup, idempotent runs, registry reads."""

from __future__ import annotations

import logging
import os

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

IDEMPOTENCY_TAG = "abalone.idempotency_key"
# The Airflow attempt (try number and a nonce) that made a run; see abalone_trainer.fence.
ATTEMPT_TAG = "abalone.attempt"


def configure(tracking_uri: str | None) -> MlflowClient:
    """Point MLflow at ``tracking_uri`` (an http(s) URL or a SageMaker MLflow ARN) and return a client."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if it does not exist yet (safe against a concurrent create)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_finished_run(client: MlflowClient, experiment_id: str, key: str, dataset_id: str) -> Run | None:
    """A finished run already made for ``key`` (a DAG run's training task) on the same dataset, if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{IDEMPOTENCY_TAG}` = '{key}' and tags.`abalone.dataset_id` = '{dataset_id}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def close_abandoned_runs(client: MlflowClient, experiment_id: str, key: str) -> None:
    """Mark runs left RUNNING by a killed attempt for ``key`` as KILLED, so history tells the truth."""
    for run in client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{IDEMPOTENCY_TAG}` = '{key}' and attributes.status = 'RUNNING'",
        max_results=50,
    ):
        log.warning("marking run %s of an earlier, interrupted attempt as KILLED", run.info.run_id)
        client.set_terminated(run.info.run_id, status="KILLED")


def end_active_run(status: str, *, quickly: bool = False) -> None:
    """End the active run with ``status``; never raises: a run left RUNNING is closed by the DAG run's cleanup.

    ``quickly``: one request with a short timeout, for the seconds between SIGTERM and SIGKILL.
    """
    if mlflow.active_run() is None:
        return
    if quickly:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "1"  # per connect and per read
    try:
        mlflow.end_run(status)
        log.info("MLflow run ended %s", status)
    except Exception as exc:
        log.warning("cannot end the MLflow run %s (the DAG run's cleanup will): %s", status, exc)


def never_finish_at_exit() -> None:
    """Remove MLflow's exit hook, which ends a run still active at exit as FINISHED: a run this process did
    not end on purpose (a superseded or killed attempt) must stay as it is, for the cleanup to mark KILLED."""
    import atexit

    from mlflow.tracking import fluent

    atexit.unregister(fluent._safe_end_run)
