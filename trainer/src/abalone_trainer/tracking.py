"""MLflow helpers of the trainer: the client, the experiment, the run a retry reuses, ending runs on purpose."""

from __future__ import annotations

import logging
import os

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from abalone_contract.constants import TAG_DATASET_ID, TAG_IDEMPOTENCY_KEY
from abalone_contract.tracking import mlflow_client

log = logging.getLogger(__name__)


def configure(tracking_uri: str | None) -> MlflowClient:
    """Point MLflow at ``tracking_uri`` (else $MLFLOW_TRACKING_URI) and return a client."""
    return mlflow_client(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))


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
            f"tags.`{TAG_IDEMPOTENCY_KEY}` = '{key}' and tags.`{TAG_DATASET_ID}` = '{dataset_id}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


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
