"""Faults under a real scheduler: Airflow's scheduler, DAG processor and API server with the LocalExecutor on
SQLite, the real Docker engine, MLflow server and S3 server. Each case kills, stops or times out a training
the way production does, and checks what must hold afterwards: at most one trainer container of the task
running at any moment (sampled while it runs), none left when the DAG run ends, no MLflow run of it left
RUNNING, at most one FINISHED candidate, and the registry unchanged unless the run promoted.

Training is slowed down (ABALONE_TRAINER_EPOCH_DELAY_SECONDS) to have time to strike mid-training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from .conftest import (
    ARTIFACT_BUCKET,
    AWS_ENV,
    ROOT,
    STAGING_BUCKET,
    TRAINER_IMAGE,
    free_port,
    mlflow_healthy,
    mlflow_server_command,
    mlflow_server_env,
)
from .invariants import (
    DAG_ID,
    RUN_LABEL,
    ContainerSampler,
    assert_nothing_left,
    containers,
    mlflow_runs,
    task_instance,
    task_process,
    trigger,
    wait_for_end,
    wait_until_training,
)
from .processes import Processes, start_airflow, wait_for

EXPERIMENT = MODEL = "abalone-chaos"
# About a second an epoch with the delay below: long enough that a killed try's orphan still trains when
# the retry starts (a few seconds later), short enough for the retry to finish inside the timeout.
SLOW = {"epochs": 20, "batch_size": 256, "force_training": True}  # trains even if a champion has these


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory, docker_engine, s3_endpoint) -> Iterator[dict]:
    logs = tmp_path_factory.mktemp("chaos")
    processes = Processes(logs)
    api_port, mlflow_port = free_port(), free_port()
    api, mlflow_server = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{mlflow_port}"
    env = {
        **os.environ,
        **AWS_ENV,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AIRFLOW_HOME": str(logs / "airflow-home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API_AUTH__JWT_SECRET": "abalone-chaos-test-secret",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # A task whose process is gone is failed (and retried) after this long without a heartbeat.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "GIT_PYTHON_REFRESH": "quiet",
        # Clients give up on an unreachable MLflow server within about 15 s (the trainer's included).
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        "ABALONE_MLFLOW_TRACKING_URI": mlflow_server,
        "ABALONE_OBJECT_STORE_URI": f"s3://{STAGING_BUCKET}/chaos",
        "ABALONE_TRAINER_IMAGE": TRAINER_IMAGE,
        "ABALONE_EXPERIMENT": EXPERIMENT,
        "ABALONE_MODEL_NAME": MODEL,
        # One retry, at once (while the killed try's orphan still trains): "killed with a retry left" is
        # try 1, "with none" is try 2.
        "ABALONE_TASK_RETRIES": "1",
        "ABALONE_RETRY_DELAY_SECONDS": "1",
        "ABALONE_SCHEDULE": "none",
        "ABALONE_TRAIN_TIMEOUT_MINUTES": "1.25",
        "ABALONE_TRAINER_EPOCH_DELAY_SECONDS": "1",
    }
    try:
        # Its own MLflow server, which a case stops and starts again (SQLite and S3 keep its state).
        home = logs / "mlflow"
        home.mkdir()
        artifacts = f"s3://{ARTIFACT_BUCKET}/chaos"
        processes.start("mlflow", mlflow_server_command(home, mlflow_port, artifacts), mlflow_server_env(s3_endpoint))
        start_airflow(processes, env, api_port, DAG_ID)
        wait_for("the MLflow server", lambda: mlflow_healthy(mlflow_server), processes)
        yield {
            "api": api,
            "processes": processes,
            "env": env,
            "mlflow": mlflow_server,
            "client": MlflowClient(mlflow_server),
            "experiment": EXPERIMENT,
        }
    finally:
        processes.stop()


def kill_task_process(scheduler: dict, run_id: str, try_number: int) -> None:
    wait_until_training(scheduler, run_id, try_number)
    ti = task_instance(scheduler, run_id, "train")
    assert ti["try_number"] == try_number, ti
    os.kill(task_process(ti["id"]), signal.SIGKILL)


def registry(scheduler: dict) -> tuple[list[str], str | None]:
    client = scheduler["client"]
    try:
        versions = sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'"))
        champion = client.get_model_version_by_alias(MODEL, "champion").version
    except Exception:
        return [], None
    return versions, champion


def test_the_task_process_killed_mid_training_with_a_retry_left(scheduler):
    run_id = "chaos-sigkill-retry"
    before = registry(scheduler)
    with ContainerSampler(run_id) as sampler:
        trigger(scheduler, run_id, SLOW)
        kill_task_process(scheduler, run_id, 1)
        state = wait_for_end(scheduler, run_id)
    assert state == "success", task_instance(scheduler, run_id, "train")
    assert task_instance(scheduler, run_id, "train")["try_number"] == 2
    assert_nothing_left(scheduler, run_id, sampler)
    statuses = Counter(run.info.status for run in mlflow_runs(scheduler, run_id))
    assert statuses == {"FINISHED": 1, "KILLED": 1}, "the killed try's run is KILLED, the retry's FINISHED"
    assert len(registry(scheduler)[0]) <= len(before[0]) + 1, "one DAG run registers at most one version"


def test_the_task_process_killed_mid_training_with_no_retry_left(scheduler):
    run_id = "chaos-sigkill-final"
    before = registry(scheduler)
    with ContainerSampler(run_id) as sampler:
        trigger(scheduler, run_id, SLOW)
        kill_task_process(scheduler, run_id, 1)
        kill_task_process(scheduler, run_id, 2)
        state = wait_for_end(scheduler, run_id)
    assert state == "failed"
    assert task_instance(scheduler, run_id, "clean_up")["state"] == "success", "the teardown ran after the failure"
    assert_nothing_left(scheduler, run_id, sampler)
    assert registry(scheduler) == before


def test_marking_the_training_failed_stops_it_and_leaves_nothing(scheduler):
    run_id = "chaos-mark-failed"
    before = registry(scheduler)
    with ContainerSampler(run_id) as sampler:
        trigger(scheduler, run_id, SLOW)
        wait_until_training(scheduler, run_id, 1)
        assert_confined(run_id)
        url = f"{scheduler['api']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train"
        marked = requests.patch(url, json={"new_state": "failed"}, timeout=30)
        assert marked.ok, marked.text
        state = wait_for_end(scheduler, run_id)
    assert state == "failed"
    assert_nothing_left(scheduler, run_id, sampler)
    # The trainer ended its own run on SIGTERM, inside Airflow's kill escalation.
    assert [run.info.status for run in mlflow_runs(scheduler, run_id)] == ["KILLED"]
    assert registry(scheduler) == before


def test_a_training_past_its_timeout_is_stopped_and_reported_as_a_timeout(scheduler):
    run_id = "chaos-timeout"
    before = registry(scheduler)
    url = f"{scheduler['api']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train"
    with ContainerSampler(run_id) as sampler:
        trigger(scheduler, run_id, {**SLOW, "epochs": 300})  # 300 s of training against a 75 s timeout
        wait_for(
            "try 1 of train to time out",
            lambda: task_instance(scheduler, run_id, "train")["try_number"] == 2,
            scheduler["processes"],
            timeout=240,
        )
        # A timeout is retried like any transient failure; the retry is not needed to see it, so stop it.
        marked = requests.patch(url, json={"new_state": "failed"}, timeout=30)
        assert marked.ok, marked.text
        state = wait_for_end(scheduler, run_id)
    assert state == "failed"
    log = task_log(scheduler, run_id, "train", 1)
    assert "train timed out after 0:01:15 (ABALONE_TRAIN_TIMEOUT_MINUTES)" in log, log[-3000:]
    assert "No such container" not in log
    assert_nothing_left(scheduler, run_id, sampler)
    assert registry(scheduler) == before


def test_a_stale_container_with_the_next_trys_name_does_not_fail_the_try(scheduler):
    run_id = "chaos-stale-name"
    name = f"{DAG_ID}-train-{run_id}-try1"
    labels = ["io.abalone.project=abalone-retraining", f"io.abalone.dag_id={DAG_ID}", f"{RUN_LABEL}={run_id}"]
    labels += ["io.abalone.task_id=train", "io.abalone.try_number=1"]  # what an earlier `dags test` leaves
    stale = ["docker", "run", "-d", "--name", name, "--entrypoint", "sleep"]
    stale += [arg for label in labels for arg in ("--label", label)]
    created = subprocess.run([*stale, TRAINER_IMAGE, "600"], capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    with ContainerSampler(run_id) as sampler:
        trigger(scheduler, run_id, {"epochs": 2, "batch_size": 256, "force_training": True})
        state = wait_for_end(scheduler, run_id)
    assert state == "success"
    assert task_instance(scheduler, run_id, "train")["try_number"] == 1, "no retry burnt on a name conflict"
    assert_nothing_left(scheduler, run_id, sampler)


def task_log(scheduler: dict, run_id: str, task_id: str, try_number: int) -> str:
    """The task's log file, as the worker wrote it (what the UI shows)."""
    logs = Path(scheduler["env"]["AIRFLOW_HOME"]) / "logs"
    (path,) = logs.glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id={task_id}/attempt={try_number}.log")
    return path.read_text(errors="replace")


def assert_confined(run_id: str) -> None:
    """``docker inspect`` of the running trainer shows the hardening (docs/failure-modes.md, "Confinement")."""
    (running,) = containers(run_id, running_only=True)
    inspected = json.loads(subprocess.run(["docker", "inspect", running["ID"]], capture_output=True).stdout)[0]
    config, host = inspected["Config"], inspected["HostConfig"]
    assert config["User"] == "1000:1000", "not root"
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Init"] is True and host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"]
    assert host["Memory"] == 8 * 1024**3 and host["MemorySwap"] == host["Memory"]
    assert host["PidsLimit"] == 4096 and host["ShmSize"] == 1024**3
    assert config["StopTimeout"] == 3, "stopped with its grace period, inside Airflow's 5 s escalation"
    top = subprocess.run(["docker", "top", running["ID"], "-o", "pid,user,args"], capture_output=True, text=True)
    assert "docker-init" in top.stdout, top.stdout


def test_the_mlflow_server_down_past_the_clients_retries_during_training(scheduler):
    run_id = "chaos-mlflow-down"
    processes = scheduler["processes"]
    with ContainerSampler(run_id) as sampler:
        trigger(scheduler, run_id, SLOW)
        wait_until_training(scheduler, run_id, 1)
        processes.kill("mlflow")
        # The trainer gives up after its retries; the try fails and waits for its retry.
        wait_for(
            "try 1 of train to fail",
            lambda: task_instance(scheduler, run_id, "train")["state"] == "up_for_retry",
            processes,
            timeout=180,
        )
        processes.start("mlflow", *processes.commands["mlflow"])
        wait_for("the MLflow server", lambda: mlflow_healthy(scheduler["mlflow"]), processes)
        state = wait_for_end(scheduler, run_id)
    assert state == "success"
    assert_nothing_left(scheduler, run_id, sampler)
    statuses = Counter(run.info.status for run in mlflow_runs(scheduler, run_id))
    assert statuses == {"FINISHED": 1, "KILLED": 1}, "the run the outage left RUNNING was closed by the retry"


def test_the_scheduler_restarted_mid_run(scheduler):
    run_id = "chaos-scheduler-restart"
    with ContainerSampler(run_id) as sampler:
        trigger(scheduler, run_id, SLOW)
        wait_until_training(scheduler, run_id, 1)
        scheduler["processes"].restart("scheduler")
        state = wait_for_end(scheduler, run_id)
    assert state == "success", task_instance(scheduler, run_id, "train")
    assert_nothing_left(scheduler, run_id, sampler)
