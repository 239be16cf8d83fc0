"""The MLflow lookups both sides make: the client for a tracking URI, an alias's version, a DAG run's runs.

MLflow is imported inside each function: both sides have it (the trainer image mlflow-skinny, Airflow
mlflow), and importing this module must not load it at DAG parse time.
"""

from __future__ import annotations

import logging
from typing import Any

from abalone_contract.constants import TAG_IDEMPOTENCY_KEY

log = logging.getLogger(__name__)

# What MLflow answers when the registered model or the alias does not exist (per server flavour).
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def mlflow_client(tracking_uri: str):
    """An ``MlflowClient`` for ``tracking_uri``: an http(s) URL or a SageMaker MLflow ARN.

    sagemaker-mlflow takes the SigV4 region and its routing header from the process-wide
    ``mlflow.get_tracking_uri()``, not from the client's URI, so the URI is set globally too; without it
    every request to an ARN fails inside the plugin (IndexError in its host metadata provider).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    if not tracking_uri:
        raise ValueError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if not tracking_uri.startswith("arn:"):
        # The plugin's header provider assumes an ARN and warns on every request to an http(s) server.
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(client, model_name: str, alias: str) -> Any | None:
    """The ``ModelVersion`` that ``alias`` points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in _ABSENT:
            return None
        raise


def close_running_runs(client, experiment_id: str, key: str) -> list[str]:
    """Mark the runs of ``key`` (a DAG run's training) still RUNNING as KILLED: their attempt is gone."""
    closed = []
    for run in client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_IDEMPOTENCY_KEY}` = '{key}' and attributes.status = 'RUNNING'",
        max_results=50,
    ):
        log.warning("marking run %s of an interrupted attempt as KILLED", run.info.run_id)
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed
