"""Score the candidate and the current champion on the same test split."""

from __future__ import annotations

import logging
from typing import Any

from mlflow.exceptions import MlflowException

from abalone_trainer import tracking
from abalone_trainer.data import StagedData, to_labels
from abalone_trainer.defaults import FEATURES
from abalone_trainer.model import regression_metrics

log = logging.getLogger(__name__)


def score(model_uri: str, data: StagedData) -> dict[str, float]:
    """Test-split metrics of the model at ``model_uri``, loaded as it is served: a pyfunc over raw rows."""
    import mlflow

    test = data.frames["test"]
    predictions = mlflow.pyfunc.load_model(model_uri).predict(test[list(FEATURES)])
    scores = regression_metrics(to_labels(test), predictions)
    return {f"test_{name}": value for name, value in scores.items()}


def resolve_champion(client, model_name: str, alias: str) -> dict[str, Any] | None:
    """The version that ``alias`` points at, or None when the model or the alias does not exist yet."""
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            log.info("no %s@%s yet (%s): the candidate is judged on its own", model_name, alias, exc.error_code)
            return None
        raise
    return {
        "version": str(version.version),
        "run_id": version.run_id,
        # Pin the version, not the alias: the alias may move while we score.
        "model_uri": f"models:/{model_name}/{version.version}",
    }


def evaluate(
    data: StagedData,
    *,
    candidate_model_uri: str,
    model_name: str,
    alias: str = "champion",
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Metrics of the candidate and of ``model_name@alias`` (if any) on the same test rows."""
    client = tracking.configure(tracking_uri)
    candidate = {"model_uri": candidate_model_uri, "metrics": score(candidate_model_uri, data)}
    log.info("candidate %s: %s", candidate_model_uri, candidate["metrics"])
    champion = resolve_champion(client, model_name, alias)
    if champion is not None:
        champion["metrics"] = score(champion["model_uri"], data)
        log.info("champion v%s: %s", champion["version"], champion["metrics"])
    return {
        "dataset_id": data.dataset_id,
        "test_rows": len(data.frames["test"]),
        "candidate": candidate,
        "champion": champion,
    }
