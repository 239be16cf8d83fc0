"""
### Roll the abalone champion back

Moves the `champion` alias of the registered model back to the previous champion (the version the
current one replaced), or to the version named in the form. Who triggered it and why are recorded on
the registered model, and `make history` shows it beside the promotions.

Idempotent: a retry or re-run of the same DAG run completes or repeats the same rollback, never a
second one. A new run steps one further back.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from abalone_pipeline.config import Settings

settings = Settings.from_env()


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "abalone", "registry"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "retries": settings.task_retries},
    params={
        # Optional, so null by default: the trigger form treats an empty string as a missing required value.
        "to_version": Param(
            None,
            type=["null", "string"],
            pattern=r"^([1-9][0-9]*)?$",
            title="Version",
            description="The version to make champion; empty: the previous champion.",
        ),
        "reason": Param(
            type="string",
            minLength=1,
            maxLength=1000,
            title="Reason",
            description="Why the champion is rolled back (required); recorded in the registry.",
        ),
    },
)
def abalone_rollback():
    @task(multiple_outputs=False, pool=settings.registry_pool)
    def rollback(params: dict | None = None, dag_run=None) -> dict:
        """Move the champion alias and record who and why."""
        from abalone_pipeline.tasks import rollback_champion

        return rollback_champion(settings, params, dag_run)

    rollback()


abalone_rollback()
