"""``DockerOperator`` for the trainer image: unique container per try, env from the worker, parsed results."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from docker.types import DeviceRequest

from abalone_pipeline.results import ERROR_MARKER, RESULT_MARKER, extract

# Read from the worker's environment at run time, so secrets never pass through the DAG file.
PASSTHROUGH_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT",
    "SAGEMAKER_MLFLOW_ASSUME_ROLE_ARN",
    "SAGEMAKER_PRESIGNED_URL_UPLOAD_ENABLED",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
    # Whether MLflow moves large artifacts straight to and from the artifact store by presigned URLs (what
    # the server advertises, when unset) or through the server: presigned URLs name the store as the server
    # reaches it, which a trainer on another host may not (docker-compose.yaml's gpu-worker-remote).
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD",
)
PASSTHROUGH_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
# The trainer starts its error line with this when retrying cannot help (see abalone_trainer.cli).
BAD_INPUT_PREFIX = "bad input:"


def container_name(dag_id: str, task_id: str, run_id: str, try_number: int) -> str:
    """A Docker-legal name unique to one try of one task in one DAG run."""
    raw = f"{dag_id}-{task_id}-{run_id}-try{try_number}"
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", raw).strip("-.")[:200]


def as_bool(value: bool | str) -> bool:
    """A rendered template of a boolean Param is the string "True" or "False"."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise AirflowFailException(f"gpu must be true or false, got {value!r}")
    return lowered in ("true", "1")


class TrainerContainerOperator(DockerOperator):
    """Run one ``abalone-trainer`` command; return its ``ABALONE_RESULT`` payload, checked by ``result_parser``.

    ``gpu`` (templated) requests every GPU of the host. A "bad input" error fails the task without
    retries; any other failure is retried and names the trainer's error.
    """

    template_fields = (*DockerOperator.template_fields, "gpu")

    def __init__(self, *, result_parser: Callable[[str], Any] = str, gpu: bool | str = False, **kwargs: Any) -> None:
        kwargs.setdefault("auto_remove", "force")
        kwargs.setdefault("mount_tmp_dir", False)
        super().__init__(xcom_all=True, do_xcom_push=True, **kwargs)
        self.result_parser = result_parser
        self.gpu = gpu

    def execute(self, context) -> Any:
        ti = context["ti"]
        if as_bool(self.gpu):
            self.device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        if not self.container_name:
            self.container_name = container_name(ti.dag_id, ti.task_id, ti.run_id, ti.try_number)
        self.environment = {**{k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}, **self.environment}
        self._private_environment = {
            **{k: os.environ[k] for k in PASSTHROUGH_SECRETS if k in os.environ},
            **self._private_environment,
        }
        self.log.info("running %s in container %s: %s", self.image, self.container_name, self.command)
        try:
            lines = super().execute(context)
        except DockerContainerFailedException as exc:
            error = extract(exc.logs, ERROR_MARKER)
            if error is None:
                raise AirflowException(
                    f"{self.task_id}: {exc}; the trainer printed no error, see the log above"
                ) from exc
            if error.startswith(BAD_INPUT_PREFIX):
                raise AirflowFailException(f"{self.task_id}: {error}") from exc
            raise AirflowException(f"{self.task_id}: {error}") from exc
        payload = extract(lines, RESULT_MARKER)
        if payload is None:
            raise AirflowException(f"{self.task_id}: the container exited 0 but printed no {RESULT_MARKER} line")
        try:
            result = self.result_parser(payload)
        except ValueError as exc:
            raise AirflowFailException(f"{self.task_id}: the trainer's result is invalid: {exc}") from exc
        if isinstance(result, dict):
            result["trainer_image"] = self.image_provenance()
        return result

    def image_provenance(self) -> dict[str, str | None]:
        """The image that ran: its name, content id, registry digest (if it was pulled) and source revision."""
        try:
            inspected = self.cli.inspect_image(self.image)
        except Exception as exc:  # provenance is recorded best-effort; the result stands without it
            self.log.warning("cannot inspect image %s: %s", self.image, exc)
            return {"name": self.image, "id": None, "digest": None, "revision": None}
        digests = inspected.get("RepoDigests") or []
        labels = (inspected.get("Config") or {}).get("Labels") or {}
        return {
            "name": self.image,
            "id": inspected.get("Id"),
            "digest": digests[0] if digests else None,
            "revision": labels.get("org.opencontainers.image.revision"),
        }
