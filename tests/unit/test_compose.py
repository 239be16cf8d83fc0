"""docker-compose.yaml, checked statically (no image can be pulled here): valid compose, every service
the DAG needs, and settings that agree with the config module and the DAG."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from abalone_pipeline.config import PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
    "airflow-init",
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def resolved(value: str) -> str:
    """A value as compose resolves it with no .env: ``${NAME:-default}`` becomes ``default``."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def environment(service: dict) -> dict[str, str]:
    return {name: resolved(str(value)) for name, value in service["environment"].items()}


def reads_of_settings() -> set[str]:
    """The environment variables Settings.from_env reads."""

    class Recorder(dict):
        names: set[str] = set()

        def get(self, name, default=None):
            self.names.add(name)
            return default

    Settings.from_env(Recorder())
    return Recorder.names - {"MLFLOW_TRACKING_URI"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs Debian's docker-compose")
def test_the_file_is_valid_compose():
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_every_service_the_dag_needs_is_there(compose):
    services = compose["services"]
    assert {*AIRFLOW_SERVICES, "postgres", "redis", "mlflow", "minio", "minio-init"} <= set(services)
    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert "@postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert services[name]["image"] == services["airflow-scheduler"]["image"], "one Airflow image"
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert "postgresql" in " ".join(services["mlflow"]["command"]), "MLflow's backend store is Postgres"
    assert "--artifacts-destination=s3://" in " ".join(services["mlflow"]["command"])


def test_the_gpu_worker_alone_takes_the_training_queue_the_gpus_and_the_docker_socket(compose):
    settings = Settings.from_env(environment(compose["services"]["airflow-worker-gpu"]))
    gpu = compose["services"]["airflow-worker-gpu"]
    assert gpu["command"].split()[:2] == ["celery", "worker"]
    assert re.search(rf"--queues {settings.train_queue}\b", gpu["command"])
    assert "/var/run/docker.sock:/var/run/docker.sock" in gpu["volumes"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert settings.gpu, "the trainer containers get the host's GPUs"
    default = compose["services"]["airflow-worker"]
    assert "--queues default" in default["command"] and settings.train_queue not in default["command"]
    for name, service in compose["services"].items():
        if name != "airflow-worker-gpu":
            mounts = [str(volume) for volume in service.get("volumes", [])]
            assert not any("docker.sock" in mount for mount in mounts), f"{name} must not get the Docker socket"


def test_the_settings_agree_with_the_config_module(compose):
    env = environment(compose["services"]["airflow-worker"])
    assert {name for name in env if name.startswith("ABALONE_")} == reads_of_settings(), "every setting, no other"
    settings = Settings.from_env(env)
    default = Settings()
    # Wired to the services of this file:
    assert settings.tracking_uri == "http://mlflow:5000"
    assert settings.network_mode == compose["networks"]["default"]["name"], "trainer containers join the stack"
    init = compose["services"]["airflow-init"]["command"][-1]
    for pool in (settings.train_pool, settings.registry_pool):
        assert re.search(rf"airflow pools set {pool} 1\b", init), f"pool {pool} is created at start"
    bucket = settings.object_store_uri.removeprefix("s3://").split("/")[0]
    assert f"local/{bucket}" in compose["services"]["minio-init"]["command"][-1], "the staging bucket exists"
    assert env["AWS_ENDPOINT_URL_S3"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert '"endpoint_url": "http://minio:9000"' in env[f"AIRFLOW_CONN_{settings.aws_conn_id.upper()}"]
    assert settings.staging_dir in {str(v).split(":")[1] for v in compose["services"]["airflow-worker"]["volumes"]}
    # Everything else is the config module's default unless the .env says otherwise:
    for name in ("experiment", "model_name", "champion_alias", "gate_policy", "bootstrap_resamples", "train_queue"):
        assert getattr(settings, name) == getattr(default, name), name
    assert Path(settings.source_uri).parts[:3] == ("/", "opt", "abalone"), "the data bundled in the image"


def test_the_env_example_lists_every_setting(compose):
    listed = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text())) - {"HOSTNAME"}
    assert used <= listed, f"used in docker-compose.yaml, missing from .env.example: {used - listed}"
    wired = {"ABALONE_DOCKER_NETWORK_MODE", "ABALONE_TRAIN_QUEUE", "ABALONE_TRAIN_POOL", "ABALONE_REGISTRY_POOL"}
    wired |= {"ABALONE_STAGING_DIR"}
    assert reads_of_settings() - wired <= listed
    assert all(name in ENV_EXAMPLE.read_text() for name in wired), "the fixed ones are named, with why"


def test_the_airflow_image_installs_the_requirements_with_include_importable():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}", dockerfile, re.MULTILINE)
    assert "-r /opt/abalone/requirements.txt" in dockerfile and "-c /opt/abalone/constraints.txt" in dockerfile
    assert "COPY --chown=airflow:0 include /opt/abalone/include" in dockerfile
    assert "ENV PYTHONPATH=/opt/abalone/include" in dockerfile
    version = re.search(r"^apache-airflow==(\S+)", (PROJECT_ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert f"ARG AIRFLOW_VERSION={version[1]}" in dockerfile, "the image's Airflow is the tested one"
