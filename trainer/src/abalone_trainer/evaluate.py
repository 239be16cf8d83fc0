"""Score the candidate beside the current champion, the baselines and recent runs, on one test split.

Everything the gate needs comes out of here as numbers; the decision itself is made on the Airflow
side by a pure policy function.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import Timeout

from abalone_contract.constants import CONFIDENCE_LEVELS, FEATURES, LABEL, TAG_DATASET_ID
from abalone_contract.tracking import alias_version
from abalone_trainer import stats, tracking
from abalone_trainer.data import StagedData

log = logging.getLogger(__name__)

# The gate compares against at most this many recent finished runs: a bounded query, never a scan.
PRIOR_RUNS = 20


def predict(model_uri: str, data: StagedData) -> np.ndarray:
    """Predicted Rings on the test rows from the model at ``model_uri``, loaded as it is served."""
    import mlflow

    test = data.frames["test"]
    predictions = mlflow.pyfunc.load_model(model_uri).predict(test[list(FEATURES)])
    return np.asarray(predictions, dtype="float64").reshape(-1)


def with_prefix(metrics: dict[str, float]) -> dict[str, float]:
    return {f"test_{name}": value for name, value in metrics.items()}


def resolve_champion(client, model_name: str, alias: str) -> dict[str, Any] | None:
    """The version that ``alias`` points at, or None when the model or the alias does not exist yet."""
    version = alias_version(client, model_name, alias)
    if version is None:
        log.info("no %s@%s yet: the candidate is gated on its own", model_name, alias)
        return None
    return {
        "version": str(version.version),
        "run_id": version.run_id,
        # Pin the version, not the alias: the alias may move while we score.
        "model_uri": f"models:/{model_name}/{version.version}",
    }


def prior_runs(client, candidate_run_id: str, dataset_id: str, limit: int = PRIOR_RUNS) -> dict[str, Any]:
    """Test RMSE of the most recent finished runs of the candidate's experiment, for the drift guard.

    Runs on the same dataset are preferred: their test split is the candidate's own. Without any, the
    most recent runs on any dataset are reported instead, and the basis says so.
    """
    experiment_id = client.get_run(candidate_run_id).info.experiment_id
    finished = "attributes.status = 'FINISHED' and metrics.test_rmse >= 0"
    for basis, extra in (("same dataset", f" and tags.`{TAG_DATASET_ID}` = '{dataset_id}'"), ("any dataset", "")):
        runs = client.search_runs(
            [experiment_id],
            filter_string=finished + extra,
            order_by=["attributes.start_time DESC"],
            max_results=limit + 1,
        )
        # A NaN metric passes the ">= 0" filter in MLflow's SQL store; it must not poison the median.
        runs = [
            run
            for run in runs
            if run.info.run_id != candidate_run_id and np.isfinite(run.data.metrics.get("test_rmse", np.nan))
        ][:limit]
        if runs:
            scores = [run.data.metrics["test_rmse"] for run in runs]
            return {
                "basis": basis,
                "count": len(runs),
                "median_test_rmse": float(np.median(scores)),
                "best_test_rmse": float(min(scores)),
                "run_ids": [run.info.run_id for run in runs],
            }
    return {"basis": "none", "count": 0, "median_test_rmse": None, "best_test_rmse": None, "run_ids": []}


def _score_champion(champion: dict[str, Any], data: StagedData) -> np.ndarray | None:
    """The champion's predictions, or None (with ``champion["error"]`` set) when it cannot be scored.

    Deleted artifacts, a changed signature or a model that no longer loads must not stop the nightly
    run: the gate then refuses to promote and says why. A server that cannot be reached is different:
    it is raised, so the task is retried.
    """
    try:
        predictions = predict(champion["model_uri"], data)
    except (RequestsConnectionError, Timeout):
        raise
    except Exception as exc:
        champion["error"] = f"{type(exc).__name__}: {exc}"[:1000]
    else:
        bad = int(np.sum(~np.isfinite(predictions)))
        if not bad:
            return predictions
        champion["error"] = f"it predicts non-finite values for {bad} of {predictions.size} test rows"
    log.warning("champion v%s cannot be scored: %s", champion["version"], champion["error"])
    return None


def evaluate(
    data: StagedData,
    *,
    candidate_model_uri: str,
    candidate_run_id: str,
    model_name: str,
    alias: str = "champion",
    slices: stats.SliceSpec | None = None,
    resamples: int = 2000,
    seed: int = 0,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Candidate, champion (if any), baselines and prior runs, scored on the same test rows."""
    client = tracking.configure(tracking_uri)
    test = data.frames["test"]
    labels = test[LABEL].to_numpy(dtype="float64")
    masks = (slices or stats.SliceSpec()).masks(test)

    def scored(predictions: np.ndarray) -> dict[str, Any]:
        return {
            "metrics": with_prefix(stats.regression_metrics(labels, predictions)),
            "slices": stats.sliced_metrics(labels, predictions, masks),
            "non_finite_predictions": int(np.sum(~np.isfinite(predictions))),
        }

    candidate_predictions = predict(candidate_model_uri, data)
    candidate = {"model_uri": candidate_model_uri, "run_id": candidate_run_id, **scored(candidate_predictions)}
    log.info("candidate %s: %s", candidate_model_uri, _format(candidate["metrics"]))

    baselines = {
        name: with_prefix(stats.regression_metrics(labels, predictions))
        for name, predictions in stats.baseline_predictions(data.frames["train"], test).items()
    }
    log.info("baselines: %s", ", ".join(f"{name} rmse={m['test_rmse']:.4f}" for name, m in baselines.items()))

    comparison = None
    champion = resolve_champion(client, model_name, alias)
    if champion is not None:
        champion_predictions = _score_champion(champion, data)
        if champion_predictions is not None:
            champion.update(scored(champion_predictions))
            log.info("champion v%s: %s", champion["version"], _format(champion["metrics"]))

            def bootstrap(mask: np.ndarray, offset: int) -> dict[str, Any]:
                return stats.paired_bootstrap(
                    labels[mask],
                    candidate_predictions[mask],
                    champion_predictions[mask],
                    resamples=resamples,
                    seed=seed + offset,
                )

            everything = np.ones(labels.size, dtype=bool)
            comparison = {
                "overall": bootstrap(everything, 0),
                "slices": {name: bootstrap(mask, index + 1) for index, (name, mask) in enumerate(masks.items())},
            }
            overall = comparison["overall"]
            log.info(
                "candidate - champion RMSE %+.4f, 95%% interval [%+.4f, %+.4f], better in %.0f%% of resamples",
                overall["rmse_diff"],
                *overall["intervals"]["0.95"],
                100 * overall["p_better"],
            )

    history = prior_runs(client, candidate_run_id, data.dataset_id)
    log.info(
        "prior runs (%s): %d, median test_rmse %s", history["basis"], history["count"], history["median_test_rmse"]
    )
    return {
        "dataset_id": data.dataset_id,
        "test_rows": int(labels.size),
        "slices": {name: int(mask.sum()) for name, mask in masks.items()},
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "levels": [str(level) for level in CONFIDENCE_LEVELS],
        },
        "candidate": candidate,
        "champion": champion,
        "comparison": comparison,
        "baselines": baselines,
        "prior_runs": history,
    }


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4f}" for name, value in sorted(metrics.items()))
