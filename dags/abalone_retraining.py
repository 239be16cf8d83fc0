"""
### Abalone nightly retraining

Stages the abalone data to the object store, trains a candidate inside the TensorFlow Deep Learning
Container, scores it beside the current champion on the same test split, and moves the `champion`
alias in the MLflow model registry only when the gate passes.

* **stage**: validate the source, split it deterministically, write the splits and a manifest under
  a content-addressed prefix (never rewritten).
* **train**: `abalone-trainer train` in the trainer image (GPU queue and pool); logs params, per-epoch
  and test metrics, dataset lineage and the model to MLflow.
* **evaluate**: `abalone-trainer evaluate`: candidate and `champion` on the same test rows.
* **gate**: a pure policy: an RMSE ceiling, and not worse than the champion beyond a tolerance.
* **promote**: register the candidate and move `champion` if the gate passed; record why either way.

A rejected candidate is an expected outcome: the run succeeds and the decision is on the MLflow run.
Settings come from `ABALONE_*` environment variables (see the README); the form below overrides
hyperparameters, the source and the gate for one run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task
from docker.types import Mount

from abalone_pipeline.config import Settings
from abalone_pipeline.operators import TrainerContainerOperator
from abalone_pipeline.results import parse_evaluation, parse_train

settings = Settings.from_env()

TRAINER_ENV = {
    "MLFLOW_TRACKING_URI": settings.tracking_uri,
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
STORE_MOUNTS = [Mount(target=str(root), source=str(root), type="bind")] if (root := settings.local_store_root) else []
MANIFEST_URI = "{{ ti.xcom_pull(task_ids='stage')['manifest_uri'] }}"
container_defaults = {
    "image": settings.trainer_image,
    "docker_url": settings.docker_url,
    "network_mode": settings.network_mode,
    "environment": TRAINER_ENV,
    "mounts": STORE_MOUNTS,
    "queue": settings.train_queue,
    "entrypoint": ["abalone-trainer"],
}


@dag(
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    tags=["mlops", "retraining", "abalone"],
    doc_md=__doc__,
    default_args={
        "owner": "ml-platform",
        "retries": settings.task_retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
        "retry_exponential_backoff": True,
    },
    params={
        "epochs": Param(100, type="integer", minimum=1, maximum=1000, description="Maximum training epochs."),
        "batch_size": Param(32, type="integer", minimum=1, maximum=4096, description="Mini-batch size."),
        "learning_rate": Param(
            1e-3, type="number", exclusiveMinimum=0, exclusiveMaximum=1, description="Adam learning rate."
        ),
        "source_uri": Param(
            settings.source_uri,
            type="string",
            pattern=r"^(s3://|file://|/)\S+$",
            description="The abalone CSV to stage: s3://, file:// or an absolute path on the worker.",
        ),
        "gpu": Param(settings.gpu, type="boolean", description="Give the training container the host's GPUs."),
        "max_test_rmse": Param(
            settings.max_test_rmse, type="number", exclusiveMinimum=0, description="Gate: RMSE ceiling (rings)."
        ),
        "rmse_tolerance": Param(
            settings.rmse_tolerance,
            type="number",
            minimum=0,
            description="Gate: how much worse than the champion the candidate may score.",
        ),
    },
)
def abalone_retraining():
    @task(multiple_outputs=False)
    def stage(params: dict | None = None) -> dict:
        """Validate the source and stage train/validation/test splits with a manifest."""
        from abalone_pipeline.tasks import stage_dataset

        return stage_dataset(settings, params["source_uri"])

    train = TrainerContainerOperator(
        task_id="train",
        doc="Train a candidate in the trainer image and log it to MLflow.",
        command=[
            "--manifest-uri",
            MANIFEST_URI,
            "train",
            "--experiment",
            settings.experiment,
            "--idempotency-key",
            "{{ dag.dag_id }}/{{ run_id }}",
            "--epochs",
            "{{ params.epochs }}",
            "--batch-size",
            "{{ params.batch_size }}",
            "--learning-rate",
            "{{ params.learning_rate }}",
            "--tag",
            "airflow.dag_id={{ dag.dag_id }}",
            "--tag",
            "airflow.run_id={{ run_id }}",
        ],
        gpu="{{ params.gpu }}",
        pool=settings.train_pool,
        result_parser=parse_train,
        **container_defaults,
    )

    evaluate = TrainerContainerOperator(
        task_id="evaluate",
        doc="Score the candidate and the current champion on the same test split.",
        command=[
            "--manifest-uri",
            MANIFEST_URI,
            "evaluate",
            "--candidate-model-uri",
            "{{ ti.xcom_pull(task_ids='train')['model_uri'] }}",
            "--model-name",
            settings.model_name,
            "--alias",
            settings.champion_alias,
        ],
        result_parser=parse_evaluation,
        **container_defaults,
    )

    @task(multiple_outputs=False)
    def gate(evaluation: dict, params: dict | None = None) -> dict:
        """Turn the scores into a decision with reasons; a rejection is not a failure."""
        from abalone_pipeline.tasks import judge

        return judge(evaluation, params["max_test_rmse"], params["rmse_tolerance"])

    @task(multiple_outputs=False)
    def promote(candidate: dict, decision: dict, staged: dict, dag_run=None) -> dict:
        """Register the candidate and move the champion alias if the gate passed; record why either way."""
        from abalone_pipeline.tasks import promote_candidate

        return promote_candidate(settings, candidate, decision, staged, dag_run)

    staged = stage()
    staged >> train >> evaluate
    promote(train.output, gate(evaluate.output), staged)


abalone_retraining()
