"""Real local services for the end-to-end tests: an S3 server, an MLflow server storing its artifacts in
that S3, Airflow on SQLite, and the Docker engine running the trainer image."""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parents[2]
# The one way the project starts a local MLflow server (make run, the benchmarks, these tests): a stdlib
# module beside scripts/local_airflow.py, imported as that script imports it.
if str(ROOT / "scripts") not in sys.path:
    sys.path.append(str(ROOT / "scripts"))
local_mlflow = importlib.import_module("local_mlflow")
BIN = Path(sys.executable).parent
STAGING_BUCKET = "abalone-staging"
ARTIFACT_BUCKET = "mlflow-artifacts"
TRAINER_IMAGE = os.environ.get("ABALONE_TRAINER_IMAGE", "abalone-trainer:latest")
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# moto's server logs every request through werkzeug; the tests' own assertions say what matters.
logging.getLogger("werkzeug").setLevel(logging.WARNING)
# sagemaker-mlflow warns on every request to an http:// server (see abalone_contract.tracking.mlflow_client).
logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def chromium(profile: Path, width: int, height: int):
    """Debian's headless Chromium through its chromedriver (``.ci/run`` installs both), a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait_until(browser, condition, timeout: float = 60):
    """Poll ``condition(browser)`` until it is truthy. The UI is a React app: an element read between a
    lookup and its ``.text`` may have been re-rendered (or the page navigated), which is a retry, not a failure."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


free_port = local_mlflow.free_port


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker engine is reachable: start dockerd (docs/testing.md) before the end-to-end tests")
    if subprocess.run(["docker", "image", "inspect", TRAINER_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"the trainer image {TRAINER_IMAGE} is missing: run `make image` first")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        **{k.lower(): v for k, v in AWS_ENV.items() if k != "AWS_DEFAULT_REGION"},
        region_name="us-east-1",
    )
    for bucket in (STAGING_BUCKET, ARTIFACT_BUCKET):
        client.create_bucket(Bucket=bucket)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def mlflow_server_command(home: Path, port: int, artifacts: str) -> list[str]:
    """``mlflow server`` with a SQLite backend in ``home`` and proxied artifacts at ``artifacts``, as in production.

    For tests that run it themselves (``Processes``, which can kill and restart it); ``mlflow_server`` is the
    session's own."""
    return local_mlflow.command(home, port, artifacts=artifacts, bin_dir=BIN)


def mlflow_server_env(s3_endpoint: str) -> dict[str, str]:
    """Its environment, with artifacts in the test S3 server."""
    return local_mlflow.environment({**os.environ, **AWS_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint})


mlflow_healthy = local_mlflow.healthy


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_endpoint) -> Iterator[str]:
    """``mlflow server`` with a SQLite backend and proxied artifacts in the S3 bucket, as in production."""
    home = tmp_path_factory.mktemp("mlflow")
    env = mlflow_server_env(s3_endpoint)
    try:
        with local_mlflow.server(home, env=env, artifacts=f"s3://{ARTIFACT_BUCKET}/") as uri:
            yield uri
    except local_mlflow.MlflowServerError as error:
        pytest.fail(str(error))


@dataclass
class Airflow:
    """Runs the DAG as ``airflow dags test`` does, in its own SQLite home, with the pipeline's settings in the
    environment; the run id is ``manual__<logical date>``, so a second call re-runs the same DAG run."""

    env: dict[str, str]
    runs: list[subprocess.CompletedProcess] = field(default_factory=list)

    def dags_test(
        self, logical_date: str, conf: dict | None = None, dag_id: str = "abalone_retraining", **env: str
    ) -> subprocess.CompletedProcess:
        command = [sys.executable, str(Path(__file__).with_name("dag_test_runner.py")), logical_date]
        command += [json.dumps(conf or {}), "--dag-id", dag_id]
        return self._run(command, env)

    def airflow(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """The ``airflow`` CLI in this home, e.g. ``tasks test`` to retry one task of a finished DAG run."""
        return self._run([str(BIN / "airflow"), *args], env)

    def _run(self, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env={**self.env, **env}, capture_output=True, text=True, timeout=900, cwd=ROOT)
        result.output = result.stdout + result.stderr  # type: ignore[attr-defined]
        self.runs.append(result)
        return result


@pytest.fixture(scope="session")
def airflow(tmp_path_factory, docker_engine, s3_endpoint, mlflow_server) -> Airflow:
    home = tmp_path_factory.mktemp("airflow")
    env = {
        **os.environ,
        **AWS_ENV,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "ABALONE_MLFLOW_TRACKING_URI": mlflow_server,
        "ABALONE_OBJECT_STORE_URI": f"s3://{STAGING_BUCKET}/pipeline",
        "ABALONE_TRAINER_IMAGE": TRAINER_IMAGE,
        "ABALONE_EXPERIMENT": "abalone-e2e",
        "ABALONE_MODEL_NAME": "abalone-e2e",
        "ABALONE_TASK_RETRIES": "0",
        # The tests stage from the bundled data, the bucket, and files they write under pytest's temp dir.
        "ABALONE_ALLOWED_SOURCES": ",".join(
            [str(ROOT / "include" / "data"), f"s3://{STAGING_BUCKET}", str(tmp_path_factory.getbasetemp())]
        ),
    }
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    for pool in ("gpu", "mlflow_registry"):  # as scripts/run-local.sh and docker-compose.yaml create them
        created = subprocess.run([str(BIN / "airflow"), "pools", "set", pool, "1", pool], env=env, capture_output=True)
        assert created.returncode == 0, created.stderr[-3000:]
    return Airflow(env=env)


# SageMaker managed MLflow, emulated: the sagemaker-mlflow plugin resolves this ARN, signs every request with
# SigV4 for the service "sagemaker-mlflow" in the ARN's region and, because SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT
# is set, sends it to the recording proxy in front of `mlflow_server` instead of AWS.
SAGEMAKER_ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/abalone-e2e"
ARN_EXPERIMENT = "abalone-e2e-arn"
ARN_MODEL = "abalone-e2e-arn"
# A SageMaker tracking server keeps artifacts in its S3 artifact store, which clients read and write
# directly; an mlflow-artifacts:/ (proxied) URI cannot be used with an ARN tracking URI at all.
ARN_ARTIFACT_ROOT = f"s3://{ARTIFACT_BUCKET}/sagemaker-arn"
ARN_SESSION_TOKEN = "testing-session-token"


@pytest.fixture(scope="session")
def sigv4_proxy(mlflow_server):
    """A recording reverse proxy in front of ``mlflow_server``: what a SageMaker tracking server would receive."""
    from .sigv4_proxy import SigV4RecordingProxy

    with SigV4RecordingProxy(mlflow_server) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def arn_airflow(airflow, sigv4_proxy, mlflow_server) -> Airflow:
    """``airflow`` with a SageMaker MLflow ARN as the tracking URI, in its own experiment and model."""
    from mlflow.tracking import MlflowClient

    # As on SageMaker, where the tracking server's ArtifactStoreUri is an s3:// location.
    client = MlflowClient(tracking_uri=mlflow_server)
    if client.get_experiment_by_name(ARN_EXPERIMENT) is None:
        client.create_experiment(ARN_EXPERIMENT, artifact_location=ARN_ARTIFACT_ROOT)
    return Airflow(
        env={
            **airflow.env,
            "ABALONE_MLFLOW_TRACKING_URI": SAGEMAKER_ARN,
            "SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT": sigv4_proxy.url,
            "AWS_SESSION_TOKEN": ARN_SESSION_TOKEN,
            "ABALONE_EXPERIMENT": ARN_EXPERIMENT,
            "ABALONE_MODEL_NAME": ARN_MODEL,
        }
    )
