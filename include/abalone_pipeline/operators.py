"""``DockerOperator`` for the trainer image: one confined container per try, fenced, always removed; parsed results."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Callable
from typing import Any

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException, AirflowTaskTimeout
from docker.errors import DockerException
from docker.types import DeviceRequest, Mount

from abalone_contract.constants import BAD_INPUT_PREFIX, ERROR_MARKER, RESULT_MARKER, SUPERSEDED_PREFIX
from abalone_contract.results import extract
from abalone_pipeline.config import Hardening
from abalone_pipeline.links import MlflowRunLink

log = logging.getLogger(__name__)

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
    # Fault-injection tests slow training down with it (see abalone_trainer.train).
    "ABALONE_TRAINER_EPOCH_DELAY_SECONDS",
)
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
CREDENTIALS_MOUNT = "/run/secrets/aws-credentials"
# Passed as the provider's private environment: kept out of logs, XCom and MLflow, but readable in
# `docker inspect` by whoever can use the GPU host's Docker engine (root-equivalent there anyway).
PASSTHROUGH_SECRETS = (
    *AWS_KEYS,
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)

# Every trainer container carries these labels: how a try finds its predecessors' containers (whatever
# their names), and how the DAG run's cleanup finds what is left of the run.
PROJECT_LABEL = "io.abalone.project"
PROJECT = "abalone-retraining"
DAG_LABEL = "io.abalone.dag_id"
RUN_LABEL = "io.abalone.run_id"
TASK_LABEL = "io.abalone.task_id"
TRY_LABEL = "io.abalone.try_number"


def container_name(dag_id: str, task_id: str, run_id: str, try_number: int) -> str:
    """A Docker-legal name unique to one try of one task in one DAG run."""
    raw = f"{dag_id}-{task_id}-{run_id}-try{try_number}"
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", raw).strip("-.")[:200]


def container_labels(dag_id: str, run_id: str, task_id: str | None = None, try_number: int | None = None) -> dict:
    labels = {PROJECT_LABEL: PROJECT, DAG_LABEL: dag_id, RUN_LABEL: run_id}
    if task_id is not None:
        labels[TASK_LABEL] = task_id
    if try_number is not None:
        labels[TRY_LABEL] = str(try_number)
    return labels


def label_filter(labels: dict[str, str]) -> dict[str, list[str]]:
    return {"label": [f"{key}={value}" for key, value in labels.items()]}


def remove_containers(cli, containers: list[dict], grace: int, why: str | None = None) -> list[str]:
    """Stop (``grace`` seconds to end cleanly) and remove ``containers``, saying ``why`` if given.

    Never raises: one already gone is skipped, and one the engine fails to remove is logged and left to
    the DAG run's ``clean_up``, so a removal never hides why a try ended.
    """
    import requests
    from docker.errors import NotFound

    removed = []
    for container in containers:
        name = (container.get("Names") or [container["Id"][:12]])[0].lstrip("/")
        labels = container.get("Labels") or {}
        if why:
            log.warning(
                "removing container %s (%s, try %s, %s): %s",
                name,
                labels.get(TASK_LABEL, "?"),
                labels.get(TRY_LABEL, "?"),
                container.get("Status") or container.get("State"),
                why,
            )
        try:
            cli.stop(container["Id"], timeout=grace)
            cli.remove_container(container["Id"], force=True)
        except NotFound:
            continue
        except (DockerException, requests.RequestException) as exc:
            log.warning("cannot remove container %s (the DAG run's clean_up will retry): %s", name, exc)
            continue
        removed.append(name)
    return removed


def as_bool(value: bool | str) -> bool:
    """A rendered template of a boolean Param is the string "True" or "False"."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise AirflowFailException(f"gpu must be true or false, got {value!r}")
    return lowered in ("true", "1")


class _ConfinedClient:
    """The provider's Docker client, creating containers with what the provider has no parameters for."""

    def __init__(self, client, host_config: dict[str, Any], container_config: dict[str, Any], on_created) -> None:
        self._client = client
        self._host_config = host_config
        self._container_config = container_config
        self._on_created = on_created

    def create_host_config(self, *args, **kwargs):
        return self._client.create_host_config(*args, **kwargs, **self._host_config)

    def create_container(self, *args, **kwargs):
        created = self._client.create_container(*args, **kwargs, **self._container_config)
        self._on_created(created)
        return created

    def __getattr__(self, name: str):
        return getattr(self._client, name)


class TrainerContainerOperator(DockerOperator):
    """Run one ``abalone-trainer`` command; return its ``ABALONE_RESULT`` payload, checked by ``result_parser``.

    Each try claims the task's fence (``abalone_pipeline.attempts``) in ``fence_store`` and removes the
    containers earlier tries left on this engine (found by labels) before it starts its own; its container
    is confined by ``hardening`` and stopped with ``stop_grace_seconds`` to end cleanly, and it is removed
    whatever happens: success, failure, timeout, or the task being killed. ``gpu`` (templated) requests
    every GPU of the host. A "bad input" error, a superseded attempt and a configuration error (no NVIDIA
    runtime, no image, no engine) fail the task without retries; any other failure is retried.
    ``mlflow_link`` turns the result into the URL of its MLflow run: the task's "MLflow run" extra link.
    ``skip_check(skip_inputs, image)`` (``skip_inputs`` templated, ``image`` the trainer image as this engine
    has it) may return a reason not to run at all: the task is skipped with it, logged and in its XCom
    ``skipped``, once earlier tries' containers are removed and before this try's fence or container.
    """

    template_fields = (*DockerOperator.template_fields, "gpu", "skip_inputs")
    operator_extra_links = (MlflowRunLink(),)

    def __init__(
        self,
        *,
        result_parser: Callable[[str], Any] = str,
        gpu: bool | str = False,
        hardening: Hardening | None = None,
        stop_grace_seconds: int = 3,
        fence_store: str | None = None,
        aws_conn_id: str | None = "aws_default",
        timeout_setting: str | None = None,
        mlflow_link: Callable[[Any], str | None] | None = None,
        skip_check: Callable[[Any, dict], str | None] | None = None,
        skip_inputs: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mount_tmp_dir", False)
        self.hardening = hardening or Hardening()
        kwargs.setdefault("user", self.hardening.user)
        kwargs.setdefault("mem_limit", self.hardening.memory)
        kwargs.setdefault("shm_size", self.hardening.shm_size)
        # The container is removed here (``_remove_container``), not by the provider, which would kill it
        # without a grace period when the task times out.
        super().__init__(xcom_all=True, do_xcom_push=True, auto_remove="never", **kwargs)
        self.result_parser = result_parser
        self.gpu = gpu
        self.stop_grace_seconds = stop_grace_seconds
        self.fence_store = fence_store
        self.aws_conn_id = aws_conn_id
        self.timeout_setting = timeout_setting
        self.mlflow_link = mlflow_link
        self.skip_check = skip_check
        self.skip_inputs = skip_inputs
        self._stopped_by_airflow = False
        self._removed: set[str] = set()

    @property
    def cli(self):
        return _ConfinedClient(
            self.hook.api_client,
            self.hardening.host_config(),
            {"stop_timeout": self.stop_grace_seconds},
            self._check_not_stopped,
        )

    def _check_not_stopped(self, created: dict) -> None:
        """Airflow stopped the task while its container was being created: never start it."""
        if self._stopped_by_airflow:
            self._remove_container(created)
            raise AirflowException(f"{self.task_id}: stopped by Airflow before its container started")

    def execute(self, context) -> Any:
        ti = context["ti"]
        try:  # connect first: an unreachable engine is a configuration error, not a failed run
            self.hook.api_client  # ruff: ignore[useless-expression]
        except AirflowException as exc:
            raise AirflowFailException(
                f"{self.task_id}: cannot reach the Docker engine at {self.docker_url} (ABALONE_DOCKER_URL): {exc}"
            ) from exc
        if as_bool(self.gpu):
            self.device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        try:
            lines = self._run_try(ti, context)
        except AirflowTaskTimeout as exc:
            raise AirflowTaskTimeout(
                f"{self.task_id} timed out after {self.execution_timeout} "
                f"({self.timeout_setting or 'execution_timeout'}); its container was stopped and removed"
            ) from exc
        except DockerContainerFailedException as exc:
            raise self._failure(exc) from exc
        except DockerException as exc:
            raise self._docker_error(exc) from exc
        finally:
            self._remove_container(self.container)
        payload = extract(lines, RESULT_MARKER)
        if payload is None:
            raise AirflowException(f"{self.task_id}: the container exited 0 but printed no {RESULT_MARKER} line")
        try:
            result = self.result_parser(payload)
        except ValueError as exc:
            raise AirflowFailException(f"{self.task_id}: the trainer's result is invalid: {exc}") from exc
        if isinstance(result, dict):
            result["trainer_image"] = self.image_provenance()
        if self.mlflow_link:
            MlflowRunLink.persist(context, self.mlflow_link(result))
        return result

    def _run_try(self, ti, context) -> Any:
        """Clear the way for this try, claim the fence, and run the container (the provider's ``execute``)."""
        self.labels = container_labels(ti.dag_id, ti.run_id, ti.task_id, ti.try_number)
        self._remove_earlier_containers(ti)
        self._skip_if_told(ti)
        if not self.container_name:
            self.container_name = self._free_name(container_name(ti.dag_id, ti.task_id, ti.run_id, ti.try_number))
        self.environment = {
            **{k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ},
            **self.environment,
            # The image may have no account for a numeric uid (no home, no name for MLflow's mlflow.user
            # tag), and the root filesystem is read-only.
            **({"HOME": "/tmp", "USER": "abalone-trainer"} if self.hardening.user else {}),
            **({"HOME": "/tmp"} if self.hardening.read_only else {}),
        }
        self._private_environment = {
            **{k: os.environ[k] for k in PASSTHROUGH_SECRETS if k in os.environ},
            **self._private_environment,
        }
        self._pass_aws_identity()
        if self.fence_store:
            self.command = [*self._claim_fence(ti), *self.command]
        self.log.info("running %s in container %s: %s", self.image, self.container_name, self.command)
        return super().execute(context)

    def _skip_if_told(self, ti) -> None:
        """Skip the task, with ``skip_check``'s reason, before any fence or container of this try."""
        if self.skip_check is not None and (reason := self.skip_check(self.skip_inputs, self.image_provenance())):
            self.log.info("%s skipped: %s", self.task_id, reason)
            ti.xcom_push(key="skipped", value=reason)
            raise AirflowSkipException(reason)

    def on_kill(self) -> None:
        """Stop and remove the container (the task was marked failed, timed out or its run ended).

        Airflow calls this from its SIGTERM handler while ``execute`` goes on; ``execute`` then finds the
        container gone and reports that Airflow stopped it.
        """
        self._stopped_by_airflow = True
        self._remove_container(self.container)

    def _remove_container(self, container: dict | None) -> None:
        """Stop (with the grace period) and remove ``container``, once; never raises: ``clean_up`` is the backstop."""
        if container is None or container["Id"] in self._removed or not self.hook.client_created:
            return
        self._removed.add(container["Id"])
        remove_containers(
            self.hook.api_client,
            [{"Id": container["Id"], "Names": [self.container_name or container["Id"][:12]]}],
            self.stop_grace_seconds,
        )

    def _remove_earlier_containers(self, ti) -> None:
        """Earlier tries' containers for this task and DAG run, on this engine: at most one may run."""
        mine = container_labels(ti.dag_id, ti.run_id, ti.task_id)
        earlier = self.cli.containers(all=True, filters=label_filter(mine))
        remove_containers(self.cli, earlier, self.stop_grace_seconds, f"try {ti.try_number} replaces it")

    def _free_name(self, name: str) -> str:
        """``name``, unless a container not made by this task holds it (an earlier try's was removed)."""
        if self.cli.containers(all=True, filters={"name": f"^/{re.escape(name)}$"}):
            taken, name = name, f"{name}-{secrets.token_hex(3)}"
            self.log.warning("a container named %s exists and is not this task's; using %s", taken, name)
        return name

    def _claim_fence(self, ti) -> list[str]:
        """Make this try the one the trainer may work for; the arguments that tell the trainer so."""
        from abalone_pipeline import attempts
        from abalone_pipeline.objectstore import ObjectStoreError, open_store
        from abalone_pipeline.tasks import s3_client_factory

        attempt = attempts.new_attempt(ti.try_number)
        try:
            store = open_store(self.fence_store, s3_client_factory(self.aws_conn_id))
            uri = attempts.claim(store, attempts.fence_key(ti.dag_id, ti.run_id, ti.task_id), attempt)
        except ObjectStoreError as exc:
            raise AirflowException(f"{self.task_id}: cannot claim the task's fence: {exc}") from exc
        self.log.info("attempt %s claims %s", attempt, uri)
        return ["--fence-uri", uri, "--attempt", attempt]

    def _pass_aws_identity(self) -> None:
        """Keep long-lived keys out of the container when the host offers another way to AWS.

        IRSA-style web identity: the container assumes the role itself from the token file, mounted read-only.
        ``ABALONE_TRAINER_AWS_CREDENTIALS_FILE``: a credentials file mounted read-only. With either, the
        worker's own keys are not passed; with neither and no keys, boto3 in the container falls back to
        the instance role.
        """
        token = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        credentials = os.environ.get("ABALONE_TRAINER_AWS_CREDENTIALS_FILE")
        if token:
            for name in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME"):
                if name in os.environ:
                    self.environment[name] = os.environ[name]
            self.mounts = [*self.mounts, Mount(target=token, source=token, type="bind", read_only=True)]
        if credentials:
            self.environment["AWS_SHARED_CREDENTIALS_FILE"] = CREDENTIALS_MOUNT
            mount = Mount(target=CREDENTIALS_MOUNT, source=credentials, type="bind", read_only=True)
            self.mounts = [*self.mounts, mount]
        if token or credentials:
            for name in AWS_KEYS:
                self._private_environment.pop(name, None)

    def _failure(self, exc: DockerContainerFailedException) -> AirflowException:
        if self._stopped_by_airflow:
            return AirflowException(f"{self.task_id}: its container was stopped by Airflow")
        error = extract(exc.logs, ERROR_MARKER)
        if error is None:
            return AirflowException(f"{self.task_id}: {exc}; the trainer printed no error, see the log above")
        if error.startswith((BAD_INPUT_PREFIX, SUPERSEDED_PREFIX)):
            return AirflowFailException(f"{self.task_id}: {error}")
        return AirflowException(f"{self.task_id}: {error}")

    def _docker_error(self, exc: DockerException) -> AirflowException:
        """Configuration errors fail at once, naming what to fix; anything else (409, 429, 5xx) is retried."""
        from docker.errors import APIError, ImageNotFound

        text = str(exc)
        if self._stopped_by_airflow:
            return AirflowException(f"{self.task_id}: its container was stopped by Airflow ({text})")
        if "could not select device driver" in text:
            return AirflowFailException(
                f"{self.task_id}: a GPU was requested (gpu: true), but the Docker engine at {self.docker_url} "
                "has no NVIDIA runtime: install the NVIDIA Container Toolkit on the GPU host, or run with gpu false"
            )
        status = exc.status_code if isinstance(exc, APIError) else None
        unpullable = (
            isinstance(exc, ImageNotFound)
            or status in (401, 403, 404)
            or any(
                hint in text.lower()
                for hint in ("no such image", "pull access denied", "manifest unknown", "no such host")
            )
        )
        if self.container is None and unpullable and not self._image_present():
            return AirflowFailException(
                f"{self.task_id}: the trainer image {self.image} is not on the Docker engine at {self.docker_url} "
                f"and cannot be pulled ({text}): build it there (make image) or set ABALONE_TRAINER_IMAGE"
            )
        return AirflowException(f"{self.task_id}: Docker error: {text}")

    def _image_present(self) -> bool:
        try:
            return bool(self.hook.api_client.images(name=self.image))
        except DockerException:
            return True  # the engine is unwell: not a missing image

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
