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


def configure(tracking_uri: str | None) -> MlflowClient:
    """Point MLflow at ``tracking_uri`` (an http(s) URL or a SageMaker MLflow ARN) and return a client."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SystemExit("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
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
