"""Where people look: the URLs of MLflow pages and Airflow runs, and the tasks' extra links.

Every link to MLflow is built here from ``Settings.mlflow_ui_url``, the browser-facing MLflow UI, which is
not the tracking URI: in compose the workers reach ``http://mlflow:5000`` and a browser does not, and a
SageMaker ARN is no URL at all. Without a UI URL, SageMaker links go to the SageMaker AI console.

The extra links follow Airflow 3's model: the task stores its URL in XCom while it runs
(``persist``), the task runner turns it into the link's own XCom when the try ends, and the API server
serves that XCom. No link class has to be importable by the API server, and the links of a finished run
survive restarts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

    from abalone_pipeline.config import Settings


def sagemaker_console_url(arn: str) -> str | None:
    """The SageMaker AI console of the ARN's region: where a SageMaker user opens managed MLflow."""
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or not parts[3]:
        return None
    region = parts[3]
    domain = {"aws-cn": "amazonaws.cn", "aws-us-gov": "amazonaws-us-gov.com"}.get(parts[1], "aws.amazon.com")
    return f"https://{region}.console.{domain}/sagemaker/home?region={region}#/mlflow"


def mlflow_run_url(ui_url: str | None, run_id: str, experiment_id: str | None = None, path: str = "") -> str | None:
    """A run's page (``path``: a tab or artifact below it, e.g. ``artifacts/gate/report.md``)."""
    if not ui_url or not run_id:
        return None
    # MLflow redirects /runs/<id> to its experiment; the deep (artifact) routes need the experiment.
    page = f"experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"runs/{run_id}"
    return f"{ui_url}/#/{page}" + (f"/{path}" if path else "")


def mlflow_version_url(ui_url: str | None, model_name: str, version: str | int | None) -> str | None:
    if not ui_url or version is None:
        return None
    return f"{ui_url}/#/models/{quote(model_name, safe='')}/versions/{version}"


def airflow_run_url(base_url: str, dag_id: str, run_id: str) -> str:
    """The DAG run's page in the Airflow UI."""
    return f"{base_url}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


class PersistedLink(BaseOperatorLink):
    """A link whose URL its task stores while it runs; empty until then (and the UI shows no button)."""

    name: ClassVar[str]

    @property
    def xcom_key(self) -> str:
        return f"abalone_link_{self.name.lower().replace(' ', '_')}"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # Only a task's runner calls this, when the try ends: the DAG file's parse never imports it.
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""

    @classmethod
    def persist(cls, context: Context, url: str | None) -> None:
        if url:
            context["ti"].xcom_push(key=cls().xcom_key, value=url)


class MlflowRunLink(PersistedLink):
    name = "MLflow run"


class GateReportLink(PersistedLink):
    name = "Gate report"


class ModelVersionLink(PersistedLink):
    name = "Model version"


def with_links(task, *links: PersistedLink):
    """Give a TaskFlow task extra links (``@task`` has no parameter for them); returns the task's output."""
    task.operator.operator_extra_links = links
    return task


def run_link(settings: Settings, run_id: str, experiment_id: str | None = None, path: str = "") -> str | None:
    """An MLflow run's page, or, with a SageMaker ARN and no UI URL, the console that opens MLflow."""
    if settings.mlflow_ui_url:
        return mlflow_run_url(settings.mlflow_ui_url, run_id, experiment_id, path)
    return sagemaker_console_url(settings.tracking_uri)


def version_link(settings: Settings, version: str | int | None) -> str | None:
    """A registered version's page, or, with a SageMaker ARN and no UI URL, the console."""
    if version is None:
        return None
    if settings.mlflow_ui_url:
        return mlflow_version_url(settings.mlflow_ui_url, settings.model_name, version)
    return sagemaker_console_url(settings.tracking_uri)
