"""
### Abalone nightly retraining

Stages the abalone data to the object store, trains a candidate inside the TensorFlow Deep Learning
Container, scores it beside the current champion on the same test split, and moves the `champion`
alias in the MLflow model registry only when the gate passes.

* **preflight**: check the run's options (the source against the allowlist, a forced promotion's
  reason, the gate policy with the run's overrides) and resolve them once for stage and gate. A refused
  option fails here, before anything is staged, and is not retried.
* **stage**: validate the source, split it deterministically, write the splits and a manifest under
  a content-addressed prefix (never rewritten), and compare it with the previously staged dataset (drift).
* **train**: `abalone-trainer train` in the trainer image (GPU queue and pool); logs params, per-epoch
  and test metrics, dataset lineage and the model to MLflow. Skipped, with the reason in its log, when
  the staged dataset, the trainer image and the hyperparameters are all the champion's (a new model could
  only tie it); evaluate is then skipped too and the gate records the night as `unchanged`.
* **evaluate**: `abalone-trainer evaluate`: candidate, `champion`, a mean and a least-squares baseline
  on the same test rows, overall and per slice, with a paired bootstrap of the RMSE difference.
* **gate**: a pure, declarative policy over those numbers (ceiling, baselines, improvement over the
  champion with a paired-bootstrap interval, per-slice tolerance, recent runs); every rule is reported.
  The decision is recorded on the candidate's MLflow run (report, per-slice chart, the scores), and
  the gate branches: **promote** runs only for a blessed candidate or a forced run. A night that did not
  train has no candidate: the gate records it as `unchanged` in its XCom.
* **promote** (one-slot registry pool): register the candidate (once per DAG run) and move `champion`,
  keeping the old one as `previous_champion`. Skipped on a rejection, a dry run or an unchanged night.
* **summarize**: the run at a glance (headline, data digest, scores, outcome, the champion now and the
  links), as JSON in its XCom and its log.

* **clean_up** (the trainer tasks' teardown: it runs once they are done, whatever happened to them, beside
  the gate): closes their fences, removes this run's trainer containers and marks MLflow runs left
  RUNNING as KILLED, and logs what it found.

Each try of train and evaluate claims its task's fence first; a container whose try is no longer the
current one stops itself. Every failed task, and a failed run, is logged as one `ABALONE_FAILURE` line
with its reason and, with `ABALONE_SNS_TOPIC_ARN`, published to that SNS topic.

A rejected candidate is an expected outcome: the run succeeds, promote is skipped, and the decision is
on the MLflow run. train and evaluate link to the MLflow run, gate to its report, promote to the version.
Settings come from `ABALONE_*` environment variables (docs/configuration.md); the form below overrides
hyperparameters, the source and the gate for one run, and offers a dry run and a forced promotion
(with a recorded reason). `abalone_rollback` moves the champion back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from airflow.sdk import Asset, Param, dag, task
from docker.types import Mount

from abalone_contract.constants import idempotency_key
from abalone_contract.hyperparams import HyperParams
from abalone_contract.results import parse_evaluation, parse_train
from abalone_pipeline.config import Settings
from abalone_pipeline.gate import POLICY_SCHEMA
from abalone_pipeline.links import GateReportLink, ModelVersionLink, run_link, with_links
from abalone_pipeline.notify import failure_notifiers
from abalone_pipeline.operators import TrainerContainerOperator
from abalone_pipeline.reuse import unchanged_since_champion
from abalone_pipeline.tasks import clean_up_after_failure

settings = Settings.from_env()
TRAINER_DEFAULTS = HyperParams()  # the trigger form starts from the trainer's own defaults
# A failed task, and a failed run, are logged as ABALONE_FAILURE and sent to SNS if configured.
ON_FAILURE = failure_notifiers(settings.sns_topic_arn, settings.aws_conn_id)

TRAINER_ENV = {
    "MLFLOW_TRACKING_URI": settings.tracking_uri,
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Its thread can fail a request of the run (KeyError: '_MLFLOW_TELEMETRY_SESSION_ID') when offline.
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
STORE_MOUNTS = [Mount(target=str(root), source=str(root), type="bind")] if (root := settings.local_store_root) else []
# Updated by every successful stage, with the dataset's id and manifest in the event's extra, so other
# DAGs can be scheduled on freshly staged data. Its URI is its name: an s3:// URI would make Airflow
# load the Amazon provider's asset handler, and boto3 with it, on every parse of this file.
STAGED_DATASET = Asset(name="abalone_staged_dataset", group="abalone")
container_defaults = {
    "image": settings.trainer_image,
    "docker_url": settings.docker_url,
    "network_mode": settings.network_mode,
    "environment": TRAINER_ENV,
    "mounts": STORE_MOUNTS,
    "queue": settings.train_queue,
    "entrypoint": ["abalone-trainer"],
    "hardening": settings.hardening,
    "stop_grace_seconds": settings.stop_grace_seconds,
    "fence_store": settings.object_store_uri,
    "aws_conn_id": settings.aws_conn_id,
}


@dag(
    schedule=settings.schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=settings.max_active_runs,
    dagrun_timeout=timedelta(hours=4),
    tags=["mlops", "retraining", "abalone"],
    doc_md=__doc__,
    # A run that ends without its clean_up task (a run timeout) still has its fences and runs closed.
    on_failure_callback=[*ON_FAILURE, clean_up_after_failure(settings)],
    default_args={
        "owner": "ml-platform",
        "on_failure_callback": ON_FAILURE,
        "retries": settings.task_retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
        "retry_exponential_backoff": True,
    },
    params={
        "epochs": Param(
            TRAINER_DEFAULTS.epochs,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Epochs",
            description="Maximum training epochs.",
        ),
        "batch_size": Param(
            TRAINER_DEFAULTS.batch_size,
            type="integer",
            minimum=1,
            maximum=4096,
            title="Batch size",
            description="Mini-batch size.",
        ),
        "learning_rate": Param(
            TRAINER_DEFAULTS.learning_rate,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Learning rate",
            description="Adam learning rate.",
        ),
        "source_uri": Param(
            settings.source_uri,
            type="string",
            pattern=r"^(s3://|https?://|file://|/)\S+$",
            title="Source data",
            description="The abalone CSV to stage: s3://, https://, file:// or an absolute path on the worker.",
        ),
        "max_quarantine_fraction": Param(
            settings.max_quarantine_fraction,
            type="number",
            minimum=0,
            exclusiveMaximum=1,
            title="Tolerated bad rows",
            description="Share of rows that may break a row rule and be quarantined; above it the run stops.",
        ),
        "gpu": Param(
            settings.gpu, type="boolean", title="GPU", description="Give the training container the host's GPUs."
        ),
        "gate": Param(
            settings.gate_policy.to_dict(),
            **POLICY_SCHEMA,
            title="Gate policy",
            description=(
                "The promotion rules for this run (docs/gate.md). Keys left out keep the configured "
                'defaults: for example {"max_rmse": 2.3} only lowers the ceiling.'
            ),
        ),
        "force_training": Param(
            False,
            type="boolean",
            title="Train even if unchanged",
            description=(
                "Train even when the staged dataset, the trainer image and the hyperparameters are the "
                "champion's (the night is otherwise skipped: a new model could only tie it). A dry run and a "
                "forced promotion always train."
            ),
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Evaluate and gate, record the report on the MLflow run, never touch the registry.",
        ),
        "force_promote": Param(
            False,
            type="boolean",
            title="Force promotion",
            description="Promote whatever the gate says (not a model with non-finite metrics). Needs a reason.",
        ),
        # Optional, so null by default: the trigger form treats an empty string as a missing required value.
        "force_reason": Param(
            None,
            type=["null", "string"],
            maxLength=1000,
            title="Reason for forcing",
            description="Required with force_promote; recorded on the promoted version with who triggered the run.",
        ),
    },
)
def abalone_retraining():
    @task(multiple_outputs=False)
    def preflight(params: dict | None = None) -> dict:
        """Check the run's options and resolve them once: the source, the gate policy, a dry run or forcing."""
        from abalone_pipeline.tasks import check_run_options

        return check_run_options(settings, params)

    options = preflight()

    # multiple_outputs: each key is also an XCom of its own, so the trainer commands can take the manifest's URI.
    @task(multiple_outputs=True, inlets=[STAGED_DATASET], outlets=[STAGED_DATASET])
    def stage(options: dict, inlet_events=None, outlet_events=None) -> dict:
        """Validate and stage the source, and summarise its drift from the last staged dataset."""
        from abalone_pipeline.tasks import dataset_drift, previous_manifest_uri, stage_dataset

        previous = previous_manifest_uri(inlet_events, STAGED_DATASET)
        staged = stage_dataset(settings, options["source_uri"], options["max_quarantine_fraction"])
        staged["drift"] = dataset_drift(settings, staged, previous)
        outlet_events[STAGED_DATASET].extra = {
            key: staged[key] for key in ("dataset_id", "manifest_uri", "rows", "source_sha256")
        }
        return staged

    staged = stage(options)

    train = TrainerContainerOperator(
        task_id="train",
        doc="Train a candidate in the trainer image and log it to MLflow.",
        command=[
            "--manifest-uri",
            staged["manifest_uri"],
            "train",
            "--experiment",
            settings.experiment,
            "--idempotency-key",
            idempotency_key("{{ dag.dag_id }}", "{{ run_id }}"),
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
        execution_timeout=timedelta(minutes=settings.train_timeout_minutes),
        timeout_setting="ABALONE_TRAIN_TIMEOUT_MINUTES",
        result_parser=parse_train,
        # Nothing the model depends on changed since the champion's training: skip it (abalone_pipeline.reuse).
        skip_check=partial(unchanged_since_champion, settings),
        skip_inputs={
            "dataset_id": staged["dataset_id"],
            "options": options,
            "idempotency_key": idempotency_key("{{ dag.dag_id }}", "{{ run_id }}"),
            "hyperparams": {
                "epochs": "{{ params.epochs }}",
                "batch_size": "{{ params.batch_size }}",
                "learning_rate": "{{ params.learning_rate }}",
            },
        },
        multiple_outputs=True,  # its run_id and model_uri are XComs of their own, for evaluate's command
        mlflow_link=lambda result: run_link(settings, result["run_id"]),
        **container_defaults,
    )

    evaluate = TrainerContainerOperator(
        task_id="evaluate",
        doc="Score the candidate and the current champion on the same test split.",
        command=[
            "--manifest-uri",
            staged["manifest_uri"],
            "evaluate",
            "--candidate-model-uri",
            train.output["model_uri"],
            "--candidate-run-id",
            train.output["run_id"],
            "--model-name",
            settings.model_name,
            "--alias",
            settings.champion_alias,
            "--slices",
            settings.eval_slices,
            "--bootstrap-resamples",
            str(settings.bootstrap_resamples),
        ],
        execution_timeout=timedelta(minutes=settings.evaluate_timeout_minutes),
        timeout_setting="ABALONE_EVALUATE_TIMEOUT_MINUTES",
        result_parser=parse_evaluation,
        mlflow_link=lambda result: run_link(settings, result["candidate"]["run_id"]),
        **container_defaults,
    )

    # A branch: the decision is always recorded, and the registry is touched only for a blessed (or
    # forced) candidate, so the grid shows a promotion as a run whose promote task succeeded. It also
    # runs when train was skipped (none_failed), to record that night as unchanged.
    @task.branch(trigger_rule="none_failed")
    def gate(
        candidate: dict | None,
        evaluation: dict | None,
        staged: dict,
        options: dict,
        unchanged: str | None,
        dag_run=None,
        ti=None,
    ) -> list[str]:
        """Pass the candidate through the run's gate policy and record the decision on its MLflow run."""
        from abalone_pipeline.summary import DRY_RUN, REJECTED, UNCHANGED, unchanged_decision
        from abalone_pipeline.tasks import gate_candidate, gate_report_link, record_decision

        if unchanged:  # train was skipped: nothing to gate, the night is recorded as unchanged
            decision = unchanged_decision(unchanged)
        else:
            decision = record_decision(
                settings,
                candidate=candidate,
                decision=gate_candidate(evaluation, options, dag_run),
                evaluation=evaluation,
                staged=staged,
                dry_run=options["dry_run"],
                dag_run=dag_run,
                try_number=ti.try_number,
            )
            report = gate_report_link(settings, candidate["run_id"], decision["experiment_id"])
            GateReportLink.persist({"ti": ti}, report)
        ti.xcom_push(key="decision", value=decision)
        return ["summarize"] if decision["outcome"] in (REJECTED, DRY_RUN, UNCHANGED) else ["promote", "summarize"]

    gated = gate(train.output, evaluate.output, staged, options, train.output["skipped"])
    decision = with_links(gated, GateReportLink())["decision"]

    @task(multiple_outputs=False, pool=settings.registry_pool)
    def promote(candidate: dict, decision: dict, staged: dict, dag_run=None, ti=None) -> dict:
        """Register the candidate and move the champion alias to it (the previous one to previous_champion)."""
        from abalone_pipeline.links import ModelVersionLink, version_link
        from abalone_pipeline.tasks import promote_candidate

        outcome = promote_candidate(
            settings, candidate=candidate, decision=decision, staged=staged, dag_run=dag_run, try_number=ti.try_number
        )
        ModelVersionLink.persist({"ti": ti}, version_link(settings, outcome["version"]))
        return outcome

    promoted = with_links(promote(train.output, decision, staged), ModelVersionLink())

    @task(multiple_outputs=False, trigger_rule="none_failed")
    def summarize(
        decision: dict, promoted: dict | None, staged: dict, candidate: dict | None, dag_run=None, ti=None
    ) -> dict:
        """The run at a glance: decision, scores, the champion now, and the links (JSON in XCom and log)."""
        from abalone_pipeline.tasks import summarize

        return summarize(
            settings,
            decision=decision,
            promoted=promoted,
            staged=staged,
            candidate=candidate,
            dag_run=dag_run,
            reread=ti.try_number > 1,
        )

    summarize(decision, promoted, staged, train.output)

    # On the trainer queue: it removes containers from the Docker engine the trainer tasks use.
    @task(multiple_outputs=False, queue=settings.train_queue)
    def clean_up(dag_run=None) -> dict:
        """Leave nothing of this run behind: fences closed, containers removed, no MLflow run RUNNING."""
        from abalone_pipeline.tasks import clean_up_run

        return clean_up_run(settings, dag_run.dag_id, dag_run.run_id)

    # The one edge without data: a teardown of the trainer tasks, it runs once they are done, whatever happened
    # to them, beside the gate (the registry tasks use no container, fence or open MLflow run).
    [train, evaluate] >> clean_up().as_teardown()


abalone_retraining()
