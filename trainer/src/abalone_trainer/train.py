"""Fit the model on the staged splits and log everything the registry and the audit need to MLflow."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from abalone_contract.constants import (
    FEATURES,
    LABEL,
    TAG_ATTEMPT,
    TAG_CODE_REVISION,
    TAG_DATASET_ID,
    TAG_IDEMPOTENCY_KEY,
    TAG_MANIFEST_URI,
    TAG_MODEL_URI,
)
from abalone_contract.hyperparams import HyperParams
from abalone_contract.tracking import close_running_runs
from abalone_trainer import tracking
from abalone_trainer.data import StagedData, to_features, to_labels
from abalone_trainer.fence import Fence, Superseded
from abalone_trainer.model import as_dataset, build_model, predict
from abalone_trainer.plots import log_test_plots
from abalone_trainer.signals import Terminated
from abalone_trainer.stats import regression_metrics

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"


def seed_everything(seed: int) -> None:
    """Make a CPU run repeatable: same data and seed, same weights."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit(data: StagedData, hparams: HyperParams, on_epoch_end=None):
    """Train on ``train``, early-stop on ``validation``; return the model (best weights restored) and history.

    The learning rate halves after ``patience // 2`` epochs without a better validation loss, so a run
    gets to try a smaller step before early stopping ends it.
    """
    import keras

    seed_everything(hparams.seed)
    train_x, train_y = to_features(data.frames["train"]), to_labels(data.frames["train"])
    val_x, val_y = to_features(data.frames["validation"]), to_labels(data.frames["validation"])
    model = build_model(train_x, hparams, label_mean=float(train_y.mean()))
    train_ds = as_dataset(train_x, train_y, batch_size=hparams.batch_size, shuffle_seed=hparams.seed)
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=max(1, hparams.patience // 2), min_lr=1e-5),
        keras.callbacks.EarlyStopping(patience=hparams.patience, restore_best_weights=True),
    ]
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end))
    history = model.fit(
        train_ds,
        validation_data=as_dataset(val_x, val_y),
        epochs=hparams.epochs,
        shuffle=False,  # the dataset shuffles itself, with the run's seed
        callbacks=callbacks,
        verbose=0,
    )
    return model, history.history


def log_model(model, example):
    """Log ``model`` as a pyfunc over raw rows, with its signature, an input example and its own code."""
    import mlflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    from abalone_trainer.pyfunc import KERAS_ARTIFACT, model_code_path, package_dirs

    signature = infer_signature(example, predict(model, to_features(example)))
    with tempfile.TemporaryDirectory() as tmp:
        keras_path = Path(tmp) / "model.keras"
        model.save(keras_path)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=model_code_path(),
            artifacts={KERAS_ARTIFACT: str(keras_path)},
            code_paths=package_dirs(),
            signature=signature,
            input_example=example,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"mlflow-skinny=={mlflow.__version__}", "pandas"],
        )


def _log_dataset_inputs(data: StagedData) -> None:
    import mlflow

    for split, context in (("train", "training"), ("validation", "validation"), ("test", "testing")):
        dataset = mlflow.data.from_pandas(
            data.frames[split],
            source=data.split_uri(split),
            targets=LABEL,
            name=f"abalone-{data.dataset_id}-{split}",
            # MLflow keeps at most 36 characters of digest; the full sha256 goes in the tags.
            digest=data.split_sha256(split)[:32],
        )
        mlflow.log_input(dataset, context=context, tags={"sha256": data.split_sha256(split)})


def _log_validation(data: StagedData) -> None:
    """What staging's validation found, from the manifest: row counts, quarantined rows per rule, warnings."""
    import mlflow

    validation = data.manifest.get("validation") or {}
    counts = {
        f"data_{name}": validation[name]
        for name in ("data_rows", "valid_rows", "quarantined_rows")
        if name in validation
    }
    counts |= {f"data_quarantined.{rule}": n for rule, n in (validation.get("quarantined_by_rule") or {}).items()}
    counts |= {f"data_warning.{rule}": n for rule, n in (validation.get("warnings") or {}).items()}
    if counts:
        mlflow.log_metrics({name.replace(":", "."): float(value) for name, value in counts.items()})
    if quarantine := data.manifest.get("quarantine"):
        mlflow.set_tag("abalone.quarantine_uri", quarantine["uri"])


def train_and_log(
    data: StagedData,
    hparams: HyperParams,
    *,
    experiment: str,
    idempotency_key: str,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
    fence: Fence | None = None,
) -> dict[str, Any]:
    """Train one candidate inside an MLflow run and return the small result the DAG validates.

    A finished run already made for ``idempotency_key`` is returned as it is, so a retried or re-run
    task never produces a second candidate for the same DAG run. ``fence`` is checked at every epoch and
    before the model is logged and the run ends: a superseded attempt leaves its run as it is (the newer
    attempt, or the DAG run's cleanup, marks it KILLED) and never finishes it.
    """
    import mlflow

    fence = fence or Fence(None, None)
    client = tracking.configure(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, experiment)
    fence.check(required=True)
    previous = tracking.find_finished_run(client, experiment_id, idempotency_key, data.dataset_id)
    if previous is not None:
        log.info("run %s already trained %s; reusing it", previous.info.run_id, idempotency_key)
        return _result_from_run(previous, reused=True)
    close_running_runs(client, experiment_id, idempotency_key)

    run_tags = {
        TAG_IDEMPOTENCY_KEY: idempotency_key,
        TAG_DATASET_ID: data.dataset_id,
        TAG_MANIFEST_URI: data.manifest_uri,
        # Baked into the image at build time (see trainer/Dockerfile); absent when run from a checkout.
        **({TAG_CODE_REVISION: revision} if (revision := os.environ.get("ABALONE_CODE_REVISION")) else {}),
        **({TAG_ATTEMPT: fence.attempt} if fence.attempt else {}),
        **(tags or {}),
    }
    # Not `with start_run()`: leaving the block on an exception would end the run FAILED, and a superseded
    # attempt must not finish a run. (cli.main also removes MLflow's exit hook, which ends runs FINISHED.)
    run = None
    try:
        run = mlflow.start_run(experiment_id=experiment_id, tags=run_tags)
        log.info("MLflow run %s in experiment %s (%s)", run.info.run_id, experiment, experiment_id)
        mlflow.log_params({**hparams.as_params(), "dataset_id": data.dataset_id})
        _log_dataset_inputs(data)
        _log_validation(data)

        started = time.monotonic()
        # Fault-injection tests slow training down with this, to have time to kill it mid-way.
        epoch_delay = float(os.environ.get("ABALONE_TRAINER_EPOCH_DELAY_SECONDS") or 0)

        def log_epoch(epoch: int, logs: dict[str, float]) -> None:
            metrics = {name: float(value) for name, value in logs.items() if np.isfinite(value)}
            mlflow.log_metrics(metrics, step=epoch)
            if epoch % 10 == 0:
                log.info("epoch %d: loss=%.4f val_rmse=%.4f", epoch, logs["loss"], logs.get("val_rmse", float("nan")))
            if epoch_delay:
                time.sleep(epoch_delay)
            fence.check()

        model, history = fit(data, hparams, on_epoch_end=log_epoch)
        epochs_run = len(history["loss"])
        best_epoch = int(np.argmin(history["val_loss"]))

        test = data.frames["test"]
        test_predictions = predict(model, to_features(test))
        scores = regression_metrics(to_labels(test), test_predictions)
        test_metrics = {f"test_{name}": value for name, value in scores.items()}
        mlflow.log_metrics(
            {
                **test_metrics,
                "epochs_run": epochs_run,
                "best_epoch": best_epoch,
                "train_seconds": time.monotonic() - started,
            }
        )
        log.info("trained %d epochs (best %d): %s", epochs_run, best_epoch, _format(test_metrics))
        log_test_plots(test, test_predictions)  # never raises: a plot is not worth a failed training

        fence.check(required=True)
        model_info = log_model(model, test[list(FEATURES)].head(5).reset_index(drop=True))
        mlflow.set_tag(TAG_MODEL_URI, model_info.model_uri)
        fence.check(required=True)
        status = client.get_run(run.info.run_id).info.status
        if status != "RUNNING":  # marked KILLED by a newer attempt or the cleanup: it stays so
            raise Superseded(f"run {run.info.run_id} was marked {status} while this attempt trained")
        mlflow.end_run("FINISHED")
    except (Superseded, Terminated):
        # Superseded: KILLED, never FINISHED (the newer attempt or the cleanup may have marked it so already);
        # stopped: inside the stop grace period.
        tracking.end_active_run("KILLED", quickly=True)
        raise
    except BaseException:
        tracking.end_active_run("FAILED")
        raise
    finished = client.get_run(run.info.run_id)
    result = _result_from_run(finished, reused=False, model_uri=model_info.model_uri)
    result["hyperparameters"] = asdict(hparams)
    return result


def _result_from_run(run, *, reused: bool, model_uri: str | None = None) -> dict[str, Any]:
    metrics = run.data.metrics
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "model_uri": model_uri or run.data.tags[TAG_MODEL_URI],
        "dataset_id": run.data.tags[TAG_DATASET_ID],
        "code_revision": run.data.tags.get(TAG_CODE_REVISION),
        "metrics": {name: metrics[name] for name in ("test_rmse", "test_mae", "test_r2", "test_mse")},
        "reused": reused,
    }


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4f}" for name, value in sorted(metrics.items()))
