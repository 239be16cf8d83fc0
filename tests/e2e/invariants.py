"""What the fault tests drive and check, on any of the test topologies (a dict with the API server's URL,
its processes, an MLflow client and the experiment): trigger and follow runs through the REST API, sample
the trainer containers of a run while it runs, and assert the invariants of docs/failure-modes.md."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from pathlib import Path

import requests

from .processes import wait_for

DAG_ID = "abalone_retraining"
RUN_LABEL = "io.abalone.run_id"


class ContainerSampler:
    """Counts the running trainer containers of one DAG run, per task, twice a second, while a case runs."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.most: Counter = Counter()
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ContainerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _sample(self) -> None:
        while not self._stop.is_set():
            running = containers(self.run_id, running_only=True)
            for task, count in Counter(c["task"] for c in running).items():
                self.most[task] = max(self.most[task], count)
            self.seen.update(c["name"] for c in running)
            self._stop.wait(0.5)


def containers(run_id: str, *, running_only: bool = False) -> list[dict]:
    command = ["docker", "ps", "--filter", f"label={RUN_LABEL}={run_id}", "--format", "{{json .}}"]
    listed = subprocess.run([*command[:2], *([] if running_only else ["-a"]), *command[2:]], capture_output=True)
    rows = [json.loads(line) for line in listed.stdout.decode().splitlines() if line.strip()]
    for row in rows:
        labels = dict(item.split("=", 1) for item in row.get("Labels", "").split(",") if "=" in item)
        row["task"], row["name"] = labels.get("io.abalone.task_id"), row["Names"]
    return rows


def trigger(stack: dict, run_id: str, conf: dict) -> None:
    response = requests.post(
        f"{stack['api']}/api/v2/dags/{DAG_ID}/dagRuns",
        json={"dag_run_id": run_id, "logical_date": None, "conf": conf},
        timeout=30,
    )
    assert response.ok, response.text


def task_instance(stack: dict, run_id: str, task_id: str) -> dict:
    url = f"{stack['api']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
    return requests.get(url, timeout=30).json()


def run_state(stack: dict, run_id: str) -> str:
    return requests.get(f"{stack['api']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=30).json()["state"]


def wait_for_end(stack: dict, run_id: str, timeout: float = 600) -> str:
    return wait_for(
        f"run {run_id} to end",
        lambda: (state := run_state(stack, run_id)) in ("success", "failed") and state,
        stack["processes"],
        timeout=timeout,
        every=2,
    )


def mlflow_runs(stack: dict, run_id: str) -> list:
    client = stack["client"]
    experiment = client.get_experiment_by_name(stack["experiment"])
    if experiment is None:
        return []
    key = f"{DAG_ID}/{run_id}"
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`abalone.idempotency_key` = '{key}'")


def training(stack: dict, run_id: str, try_number: int) -> bool:
    """True once try ``try_number`` of train has logged two epochs to its MLflow run."""
    client = stack["client"]
    for run in mlflow_runs(stack, run_id):
        if run.info.status == "RUNNING" and run.data.tags.get("abalone.attempt", "").startswith(f"try{try_number}-"):
            return len(client.get_metric_history(run.info.run_id, "loss")) >= 2
    return False


def wait_until_training(stack: dict, run_id: str, try_number: int) -> None:
    wait_for(
        f"try {try_number} of train in {run_id} to train",
        lambda: training(stack, run_id, try_number),
        stack["processes"],
        timeout=300,
    )


def assert_nothing_left(stack: dict, run_id: str, sampler: ContainerSampler) -> None:
    assert sampler.seen, "no trainer container was ever seen running: the case did not exercise anything"
    assert max(sampler.most.values()) == 1, f"two containers of one task ran at once: {sampler.most}"
    assert containers(run_id) == [], f"containers left behind: {containers(run_id)}"
    statuses = Counter(run.info.status for run in mlflow_runs(stack, run_id))
    assert statuses["RUNNING"] == 0, f"MLflow runs left RUNNING: {statuses}"
    assert statuses["FINISHED"] <= 1, f"more than one FINISHED candidate: {statuses}"


def task_process(ti_id: str) -> int:
    """The pid of the process running task instance ``ti_id`` (its title is ``airflow worker -- <id>``)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"airflow worker -- {ti_id}" in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    return int(proc.name)
            except OSError:
                continue
    raise LookupError(ti_id)
