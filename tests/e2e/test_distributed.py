"""The production topology with real processes on this machine: PostgreSQL and Redis from Debian, Airflow's
API server, scheduler and DAG processor with the CeleryExecutor, one Celery worker on the default queue and
two on the gpu queue (standing for two GPU hosts), the MLflow server, the S3 server and the Docker engine.
Runs are triggered through the REST API with a conf, as the UI's form does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from .conftest import AWS_ENV, BIN, ROOT, STAGING_BUCKET, TRAINER_IMAGE, free_port
from .invariants import (
    ContainerSampler,
    assert_nothing_left,
    task_instance,
    task_process,
    trigger,
    wait_for_end,
    wait_until_training,
)
from .processes import Processes, start_airflow, wait_for

DAG_ID = "abalone_retraining"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS = shutil.which("redis-server")
CONF = {"epochs": 3, "batch_size": 256, "force_training": True}  # both runs train, one at a time

if not ((PG_BIN / "initdb").exists() and REDIS) and not os.environ.get("CI"):
    pytest.skip("needs Debian's postgresql and redis-server (.ci/run installs them)", allow_module_level=True)


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, docker_engine, s3_endpoint, mlflow_server) -> Iterator[dict]:
    logs = tmp_path_factory.mktemp("distributed")
    processes = Processes(logs)
    pg_data = Path(tempfile.mkdtemp(prefix="abalone-pg-"))  # readable by the postgres user, unlike pytest's
    if os.geteuid() == 0:
        shutil.chown(pg_data, "postgres", "postgres")
    pg_port, redis_port, api_port = free_port(), free_port(), free_port()
    try:
        initdb = subprocess.run(
            as_postgres([str(PG_BIN / "initdb"), "-D", str(pg_data / "db"), "-U", "airflow", "--auth=trust"]),
            capture_output=True,
            text=True,
        )
        assert initdb.returncode == 0, initdb.stderr
        processes.start(
            "postgres",
            as_postgres(
                [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(pg_data / "db"),
                    "-p",
                    str(pg_port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={pg_data}",
                ]
            ),
        )
        wait_for(
            "PostgreSQL",
            lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg_port)]).returncode == 0,
            processes,
            timeout=60,
        )
        created = subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "airflow", "airflow"],
            capture_output=True,
            text=True,
        )
        assert created.returncode == 0, created.stderr
        processes.start(
            "redis", [REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        )

        database = f"postgresql+psycopg2://airflow@127.0.0.1:{pg_port}/airflow"
        api = f"http://127.0.0.1:{api_port}"
        env = {
            **os.environ,
            **AWS_ENV,
            "AWS_ENDPOINT_URL": s3_endpoint,
            "AIRFLOW_HOME": str(logs / "airflow-home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow@127.0.0.1:{pg_port}/airflow",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API_AUTH__JWT_SECRET": "abalone-distributed-test-secret",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.worker_identity.hostname",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "PYTHONPATH": str(ROOT),
            "GIT_PYTHON_REFRESH": "quiet",
            "C_FORCE_ROOT": "true",  # Celery refuses root otherwise; this test machine runs everything as root
            "ABALONE_MLFLOW_TRACKING_URI": mlflow_server,
            "ABALONE_OBJECT_STORE_URI": f"s3://{STAGING_BUCKET}/distributed",
            "ABALONE_TRAINER_IMAGE": TRAINER_IMAGE,
            "ABALONE_EXPERIMENT": "abalone-distributed",
            "ABALONE_MODEL_NAME": "abalone-distributed",
            # One retry, soon: a worker killed mid-training is retried on the other GPU worker.
            "ABALONE_TASK_RETRIES": "1",
            "ABALONE_RETRY_DELAY_SECONDS": "5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "ABALONE_TRAINER_EPOCH_DELAY_SECONDS": "1",
            # Manual runs only, two at a time: what caps training is then the gpu pool, not the DAG.
            "ABALONE_SCHEDULE": "none",
            "ABALONE_MAX_ACTIVE_RUNS": "2",
        }
        start_airflow(processes, env, api_port, DAG_ID)
        airflow = str(BIN / "airflow")
        for queue, name in (("default", "default-worker"), ("gpu", "gpu-worker"), ("gpu", "gpu-worker-2")):
            worker_env = {**env, "ABALONE_WORKER_NAME": name}
            command = [airflow, "celery", "worker", "--queues", queue, "--concurrency", "2"]
            processes.start(name, [*command, "--celery-hostname", f"{name}@%h"], worker_env)
        yield {
            "api": api,
            "processes": processes,
            "mlflow": mlflow_server,
            "client": MlflowClient(mlflow_server),
            "experiment": "abalone-distributed",
        }
    finally:
        processes.stop()
        shutil.rmtree(pg_data, ignore_errors=True)


def api_json(cluster: dict, path: str) -> dict:
    response = requests.get(f"{cluster['api']}/api/v2/dags/{DAG_ID}{path}", timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def two_runs(cluster) -> list[str]:
    """Two runs triggered through the REST API, as the form does, while the DAG is unpaused."""
    api = cluster["api"]
    unpaused = requests.patch(f"{api}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=30)
    assert unpaused.ok, unpaused.text
    run_ids = []
    for _ in range(2):
        response = requests.post(
            f"{api}/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": CONF}, timeout=30
        )
        assert response.ok, response.text
        run_ids.append(response.json()["dag_run_id"])

    def finished():
        states = [api_json(cluster, f"/dagRuns/{run_id}")["state"] for run_id in run_ids]
        return states if all(state in ("success", "failed") for state in states) else None

    wait_for("both runs to finish", finished, cluster["processes"], timeout=900, every=5)
    return run_ids


def task_instances(cluster: dict, run_id: str) -> dict[str, dict]:
    listing = api_json(cluster, f"/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {ti["task_id"]: ti for ti in listing}


def test_the_runs_succeed_with_their_conf(cluster, two_runs):
    processes = cluster["processes"]
    for run_id in two_runs:
        run = api_json(cluster, f"/dagRuns/{run_id}")
        states = {task: ti["state"] for task, ti in task_instances(cluster, run_id).items()}
        assert run["state"] == "success", f"{run_id}: {states}\n{processes.tail('gpu-worker')}"
        assert run["conf"]["epochs"] == 3 and run["triggered_by"] == "rest_api"


def test_training_runs_on_the_gpu_worker_and_the_rest_on_the_default_worker(cluster, two_runs):
    for run_id in two_runs:
        for task, ti in task_instances(cluster, run_id).items():
            if ti["state"] == "skipped":  # promote, for a rejected candidate: it never reached a worker
                continue
            expected = "gpu" if task in ("train", "evaluate", "clean_up") else "default"
            assert ti["queue"] == expected and ti["hostname"].startswith(f"{expected}-worker"), task


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_the_gpu_pool_trains_one_candidate_at_a_time(cluster, two_runs):
    trains = sorted(
        (task_instances(cluster, run_id)["train"] for run_id in two_runs), key=lambda ti: when(ti["start_date"])
    )
    assert all(ti["pool"] == "gpu" for ti in trains)
    first, second = trains
    assert when(second["start_date"]) >= when(first["end_date"]), "the one-slot gpu pool let two trainings overlap"
    # Both runs were active together (two may be), so it was the pool, not the DAG, that held the second back.
    second_stage = task_instances(cluster, second["dag_run_id"])["stage"]
    assert when(second_stage["end_date"]) < when(first["end_date"]), "the second run was not waiting on the pool"


def test_a_worker_killed_while_its_container_trains_is_retried_on_the_other(cluster, two_runs):
    run_id = "distributed-worker-killed"
    processes = cluster["processes"]
    with ContainerSampler(run_id) as sampler:
        # Longer than the heartbeat timeout and the retry delay: the orphan still trains when the retry starts.
        trigger(cluster, run_id, {"epochs": 90, "batch_size": 256})
        wait_until_training(cluster, run_id, 1)
        ti = task_instance(cluster, run_id, "train")
        victim, task = ti["hostname"], task_process(ti["id"])
        processes.kill(victim, signal.SIGKILL)  # the worker and its task supervisor, as a lost host
        os.kill(task, signal.SIGKILL)  # the task process has its own process group
        state = wait_for_end(cluster, run_id, timeout=900)
    train = task_instance(cluster, run_id, "train")
    assert (train["try_number"], train["state"]) == (2, "success"), train
    assert train["hostname"] != victim and train["hostname"].startswith("gpu-worker")
    assert state == "success"
    assert_nothing_left(cluster, run_id, sampler)
