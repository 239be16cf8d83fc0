"""The production topology with real processes on this machine: PostgreSQL and Redis from Debian, Airflow's
API server, scheduler and DAG processor with the CeleryExecutor, one Celery worker on the default queue and
two on the gpu queue (standing for two GPU hosts), the MLflow server, the S3 server and the Docker engine.
Runs are triggered through the REST API with a conf, as the UI's form does."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import datetime

import pytest
import requests
from mlflow.tracking import MlflowClient

from . import celery_cluster
from .conftest import AWS_ENV, STAGING_BUCKET, TRAINER_IMAGE
from .invariants import (
    ContainerSampler,
    assert_nothing_left,
    task_instance,
    task_process,
    trigger,
    wait_for_end,
    wait_until_training,
)
from .processes import wait_for

DAG_ID = "abalone_retraining"
CONF = {"epochs": 3, "batch_size": 256, "force_training": True}  # both runs train, one at a time

if not celery_cluster.available() and not os.environ.get("CI"):
    pytest.skip("needs Debian's postgresql and redis-server (.ci/run installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, docker_engine, s3_endpoint, mlflow_server) -> Iterator[dict]:
    env = {
        **os.environ,
        **AWS_ENV,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.worker_identity.hostname",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
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
    with celery_cluster.celery_cluster(tmp_path_factory.mktemp("distributed"), env, DAG_ID) as started:
        yield {
            **started,
            "mlflow": mlflow_server,
            "client": MlflowClient(mlflow_server),
            "experiment": "abalone-distributed",
        }


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
