"""Long-running processes for the tests that bring up Airflow's own services (scheduler, API server, workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from .conftest import BIN, ROOT


class Processes:
    """Long-running processes, each in its own session; everything started here is stopped here."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []
        self.commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("a")
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
        self.started.append((name, process))
        self.commands[name] = (command, env)
        return process

    def kill(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one process and everything it started (its session), as a crash or a restart does."""
        (process,) = [process for started, process in self.started if started == name]
        self.started.remove((name, process))
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def restart(self, name: str) -> subprocess.Popen:
        self.kill(name)
        return self.start(name, *self.commands[name])

    def check(self) -> None:
        for name, process in self.started:
            if process.poll() is not None:
                pytest.fail(f"{name} exited ({process.returncode}): {self.tail(name)}")

    def tail(self, name: str, chars: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def wait_for(what: str, check, processes: Processes, timeout: float = 180, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check()
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, OSError):
            pass
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def start_airflow(processes: Processes, env: dict[str, str], api_port: int, dag_id: str) -> str:
    """Migrate the metadata database, create the pools, start the API server, scheduler and DAG processor,
    and wait until ``dag_id`` is parsed; the API server's URL."""
    airflow = str(BIN / "airflow")
    for command in (
        ["db", "migrate"],
        ["pools", "set", "gpu", "1", "Trainer containers on the GPU host"],
        ["pools", "set", "mlflow_registry", "1", "Promotions and rollbacks, one at a time"],
    ):
        done = subprocess.run([airflow, *command], env=env, capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = f"http://127.0.0.1:{api_port}"
    processes.start("api-server", [airflow, "api-server", "--port", str(api_port)], env)
    processes.start("scheduler", [airflow, "scheduler"], env)
    processes.start("dag-processor", [airflow, "dag-processor"], env)
    wait_for("the API server", lambda: requests.get(f"{api}/api/v2/version", timeout=5).ok, processes)
    wait_for("the DAG to be parsed", lambda: requests.get(f"{api}/api/v2/dags/{dag_id}", timeout=5).ok, processes)
    return api
