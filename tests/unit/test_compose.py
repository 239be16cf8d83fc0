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
GPU_OVERRIDE = PROJECT_ROOT / "docker-compose.gpu.yaml"
CONTROL_PLANE_OVERRIDE = PROJECT_ROOT / "docker-compose.control-plane.yaml"
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
    """A value as compose resolves it with no .env: ``${NAME:-default}`` and ``${NAME-default}`` become ``default``."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*)|:\?[^}]*)?\}", lambda m: m[1] or "", value)


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


def compose_config(
    tmp_path: Path, *files: Path, env: dict[str, str], profile: str | None = None
) -> subprocess.CompletedProcess:
    """`docker-compose config` with exactly ``env``: not the caller's environment, nor a .env beside the file."""
    (tmp_path / "empty.env").touch()
    command = ["docker-compose", "--env-file", str(tmp_path / "empty.env")]
    command += [arg for f in files for arg in ("-f", str(f))] + (["--profile", profile] if profile else [])
    return subprocess.run([*command, "config"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs Debian's docker-compose")
def test_the_files_are_valid_compose_and_the_secrets_and_dockers_group_are_required(tmp_path):
    env = {"DOCKER_GID": "105", "AIRFLOW__API_AUTH__JWT_SECRET": "s3cret"}
    for missing, why in (("DOCKER_GID", "a wrong default gid looks healthy"), ("AIRFLOW__API_AUTH__JWT_SECRET", "")):
        refused = compose_config(tmp_path, COMPOSE, env={k: v for k, v in env.items() if k != missing})
        assert refused.returncode != 0 and f"set {missing}" in refused.stderr, why or refused.stderr
    for files in ((COMPOSE,), (COMPOSE, GPU_OVERRIDE), (COMPOSE, CONTROL_PLANE_OVERRIDE)):
        done = compose_config(tmp_path, *files, env=env, profile="gpu-worker-remote")
        assert done.returncode == 0, (files, done.stderr)
    with_gpus = yaml.safe_load(compose_config(tmp_path, COMPOSE, GPU_OVERRIDE, env=env).stdout)
    (device,) = with_gpus["services"]["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == "all"


def test_the_base_file_runs_on_any_host():
    """No GPU reservation in the base file (an override can add one, never remove it), and none whose count
    comes from a variable: docker-compose 1.29 gets it as a string and crashes, though `config` accepts it."""
    assert "deploy" not in COMPOSE.read_text()
    reservations = yaml.safe_load(GPU_OVERRIDE.read_text())["services"]
    assert set(reservations) == {"airflow-worker-gpu", "airflow-worker-gpu-remote"}
    assert "${" not in GPU_OVERRIDE.read_text()


def test_every_published_port_is_on_the_bind_address_and_its_own_variable(compose):
    control_plane = yaml.safe_load(CONTROL_PLANE_OVERRIDE.read_text())["services"]
    ports = [
        port
        for services in (compose["services"], control_plane)
        for service in services.values()
        for port in service.get("ports", [])
    ]
    assert len(ports) == 6
    variables = set()
    for port in ports:
        match = re.fullmatch(r"\$\{ABALONE_BIND_ADDRESS:-127\.0\.0\.1\}:\$\{([A-Z_]+):-\d+\}:\d+", port)
        assert match, f"{port}: bind to ${{ABALONE_BIND_ADDRESS:-127.0.0.1}} with a host port of its own"
        variables.add(match[1])
    assert len(variables) == 6


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
    assert not settings.gpu, "GPUs only where ABALONE_GPU=true says the host has them"
    assert "docker.DockerClient" in gpu["healthcheck"]["test"][-1], "healthy only when it can use Docker"
    remote = compose["services"]["airflow-worker-gpu-remote"]
    assert remote["command"] == gpu["command"] and remote["profiles"] == ["gpu-worker-remote"]
    assert remote["network_mode"] == "host" and not remote["depends_on"], "by address, not by service name"
    default = compose["services"]["airflow-worker"]
    assert "--queues default" in default["command"] and settings.train_queue not in default["command"]
    for name, service in compose["services"].items():
        if name not in ("airflow-worker-gpu", "airflow-worker-gpu-remote"):
            mounts = [str(volume) for volume in service.get("volumes", [])]
            assert not any("docker.sock" in mount for mount in mounts), f"{name} must not get the Docker socket"


def test_the_settings_agree_with_the_config_module(compose):
    env = environment(compose["services"]["airflow-worker"])
    assert {name for name in env if name.startswith("ABALONE_")} == reads_of_settings(), "every setting, no other"
    settings = Settings.from_env(env)
    default = Settings()
    # Wired to the services of this file:
    assert settings.tracking_uri == "http://mlflow:5000"
    assert settings.network_mode == resolved(compose["networks"]["default"]["name"]), "trainers join the stack"
    init = compose["services"]["airflow-init"]["command"][-1]
    assert init.count("/entrypoint") == 1, "the entrypoint (wait, migrate, create the user) runs once"
    for pool in (settings.train_pool, settings.registry_pool):
        assert re.search(rf"airflow pools set {pool} 1\b", init), f"pool {pool} is created at start"
    bucket = settings.object_store_uri.removeprefix("s3://").split("/")[0]
    assert f'"{bucket}"' in compose["services"]["minio-init"]["command"][-1], "the staging bucket exists"
    assert env["AWS_ENDPOINT_URL_S3"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert '"endpoint_url": "http://minio:9000"' in env[f"AIRFLOW_CONN_{settings.aws_conn_id.upper()}"]
    for name in ("airflow-worker", "airflow-init"):  # airflow-init makes the spool the workers' own
        assert settings.staging_dir in {str(v).split(":")[1] for v in compose["services"][name]["volumes"]}, name
    allowed = environment(compose["services"]["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow:5000" in allowed, "MLflow refuses API calls to a Host it does not know"
    # Everything else is the config module's default unless the .env says otherwise:
    for name in ("experiment", "model_name", "champion_alias", "gate_policy", "bootstrap_resamples", "train_queue"):
        assert getattr(settings, name) == getattr(default, name), name
    assert Path(settings.source_uri).parts[:3] == ("/", "opt", "abalone"), "the data bundled in the image"


def test_the_env_example_lists_every_setting(compose):
    listed = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    files = (COMPOSE, GPU_OVERRIDE, CONTROL_PLANE_OVERRIDE)
    used = {name for f in files for name in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", f.read_text())} - {"HOSTNAME"}
    assert used <= listed, f"used in docker-compose.yaml, missing from .env.example: {used - listed}"
    wired = {"ABALONE_DOCKER_NETWORK_MODE", "ABALONE_TRAIN_QUEUE", "ABALONE_TRAIN_POOL", "ABALONE_REGISTRY_POOL"}
    wired |= {"ABALONE_STAGING_DIR"}
    assert reads_of_settings() - wired <= listed
    assert all(name in ENV_EXAMPLE.read_text() for name in wired), "the fixed ones are named, with why"


def test_the_airflow_image_installs_the_requirements_with_include_importable():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG AIRFLOW_BASE_IMAGE=(apache/airflow:(\S+)-python3\S*)$", dockerfile, re.MULTILINE)
    assert base, "the official image by default"
    assert f"AIRFLOW_BASE_IMAGE=${{AIRFLOW_BASE_IMAGE:-{base[1]}}}" in COMPOSE.read_text().replace(": ", "=")
    assert f"\nAIRFLOW_BASE_IMAGE={base[1]}\n" in ENV_EXAMPLE.read_text()
    assert re.search(r"^FROM \$\{AIRFLOW_BASE_IMAGE\}$", dockerfile, re.MULTILINE)
    assert "&& pip check" in dockerfile
    assert "-r /opt/abalone/requirements.txt" in dockerfile and "-c /opt/abalone/constraints.txt" in dockerfile
    assert "COPY --chown=airflow:0 include /opt/abalone/include" in dockerfile
    assert "ENV PYTHONPATH=/opt/abalone/include" in dockerfile
    version = re.search(r"^apache-airflow==(\S+)", (PROJECT_ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert f"ARG AIRFLOW_VERSION={version[1]}" in dockerfile, "the image's Airflow is the tested one"
    assert base[2] == version[1], "the base image's Airflow is the tested one"


def test_the_auth_manager_the_stack_uses_is_installed_and_pinned(compose):
    auth_manager = environment(compose["services"]["airflow-apiserver"])["AIRFLOW__CORE__AUTH_MANAGER"]
    assert auth_manager.startswith("airflow.providers.fab.")
    requirements = (PROJECT_ROOT / "requirements.txt").read_text()
    assert re.search(r"^apache-airflow-providers-fab==\S+$", requirements, re.MULTILINE), "pin the FAB provider"
