"""Failure notifications through Airflow's notifier interface, and the run summary operators see in the UI.

``failure_notifiers`` gives the DAG run and every task their ``on_failure_callback``: always a
log-only notifier (one structured ``ABALONE_FAILURE`` line), and with ``ABALONE_SNS_TOPIC_ARN`` the
Amazon provider's ``SnsNotifier``. The provider's notifier imports boto3, so it is built when a failure
fires, never when the DAG file is parsed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

log = logging.getLogger(__name__)

# An exception's text in a notification is cut to this many characters (the log has the rest).
MAX_ERROR_CHARS = 2000


def failure_summary(context: dict[str, Any]) -> dict[str, Any]:
    """What failed, where and why, from a callback's context (a task's, or a DAG run's)."""
    dag_run = context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception") or context.get("reason")
    run_type = getattr(dag_run, "run_type", None)
    return {
        "dag_id": getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
        "run_type": getattr(run_type, "value", run_type),
        "task_id": getattr(ti, "task_id", None),
        "try_number": getattr(ti, "try_number", None),
        "error": " ".join(str(error).split())[:MAX_ERROR_CHARS] if error else None,
    }


def failure_line(summary: dict[str, Any]) -> str:
    """The one line a failure is told in, in the log and on SNS alike."""
    return json.dumps(summary, sort_keys=True)


def _subject(summary: dict[str, Any]) -> str:
    where = f"{summary['dag_id']}.{summary['task_id']}" if summary["task_id"] else str(summary["dag_id"])
    return f"Airflow failure: {where}"[:100]  # SNS subjects are at most 100 characters


class _Configured(BaseNotifier):
    """A notifier whose settings come from configuration, so there is nothing to render.

    BaseNotifier renders template fields with the DAG's Jinja environment even when there are none,
    and a DAG-level callback may be handed a serialized DAG that has no such environment
    (``airflow dags test`` does): skipping the empty render keeps the notification from failing.
    """

    template_fields = ()

    def render_template_fields(self, context, jinja_env=None) -> None:
        return None


class LogFailure(_Configured):
    """The default: one ERROR line, ``ABALONE_FAILURE {json}``, for log-based alerting to match."""

    def notify(self, context: dict[str, Any]) -> None:
        log.error("ABALONE_FAILURE %s", failure_line(failure_summary(context)))


class SnsFailure(_Configured):
    """Publish the failure summary to an SNS topic with the Amazon provider's ``SnsNotifier``."""

    def __init__(self, *, target_arn: str, aws_conn_id: str | None = "aws_default") -> None:
        super().__init__()
        self.target_arn = target_arn
        self.aws_conn_id = aws_conn_id

    def notify(self, context: dict[str, Any]) -> None:
        from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

        summary = failure_summary(context)
        region = self.target_arn.split(":")[3] if self.target_arn.count(":") >= 5 else None
        SnsNotifier(
            aws_conn_id=self.aws_conn_id,
            target_arn=self.target_arn,
            subject=_subject(summary),
            message=failure_line(summary),
            region_name=region or None,
        ).notify(context)


def failure_notifiers(sns_topic_arn: str | None, aws_conn_id: str) -> list[BaseNotifier]:
    """The notifiers for ``on_failure_callback``: the log line, and SNS when a topic is configured."""
    notifiers: list[BaseNotifier] = [LogFailure()]
    if sns_topic_arn:
        notifiers.append(SnsFailure(target_arn=sns_topic_arn, aws_conn_id=aws_conn_id))
    return notifiers
