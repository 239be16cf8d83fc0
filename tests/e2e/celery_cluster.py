"""The production topology as real processes on this machine: PostgreSQL and Redis from Debian, Airflow's API
server, scheduler and DAG processor with the CeleryExecutor, and Celery workers on named queues.

Used by tests/e2e/test_distributed.py and by ``bench/scheduler_overhead.py --executor celery``; the caller
brings the rest of the environment (MLflow, the object store, the trainer image, the project's settings).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .conftest import BIN, ROOT, free_port
from .processes import Processes, start_airflow, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS = shutil.which("redis-server")
# (queue, worker name): one worker on the default queue, two on the gpu queue (standing for two GPU hosts).
WORKERS = (("default", "default-worker"), ("gpu", "gpu-worker"), ("gpu", "gpu-worker-2"))


def available() -> bool:
    """Whether Debian's postgresql and redis-server are installed (.ci/run installs them)."""
    return (PG_BIN / "initdb").exists() and REDIS is not None


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _postgres(processes: Processes, pg_data: Path, port: int) -> str:
    """Start PostgreSQL with an ``airflow`` database; its SQLAlchemy URL."""
    initdb = subprocess.run(
        as_postgres([str(PG_BIN / "initdb"), "-D", str(pg_data / "db"), "-U", "airflow", "--auth=trust"]),
        capture_output=True,
        text=True,
    )
    assert initdb.returncode == 0, initdb.stderr
    postgres = [str(PG_BIN / "postgres"), "-D", str(pg_data / "db"), "-p", str(port)]
    postgres += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={pg_data}"]
    processes.start("postgres", as_postgres(postgres))
    ready = [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
    wait_for("PostgreSQL", lambda: subprocess.run(ready).returncode == 0, processes, timeout=60)
    created = subprocess.run(
        [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "airflow", "airflow"],
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    return f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow"


@contextmanager
def celery_cluster(
    logs: Path, env: Mapping[str, str], dag_id: str, workers: tuple[tuple[str, str], ...] = WORKERS
) -> Generator[dict, None, None]:
    """Start the cluster with ``env`` (the caller's settings) and the CeleryExecutor's own; yield its API URL,
    its processes and the environment its Airflow processes run with; stop everything on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    processes = Processes(logs)
    pg_data = Path(tempfile.mkdtemp(prefix="abalone-pg-"))  # readable by the postgres user, unlike pytest's
    if os.geteuid() == 0:
        shutil.chown(pg_data, "postgres", "postgres")
    pg_port, redis_port, api_port = free_port(), free_port(), free_port()
    try:
        database = _postgres(processes, pg_data, pg_port)
        redis = [REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        processes.start("redis", redis)
        api = f"http://127.0.0.1:{api_port}"
        airflow_env = {
            **env,
            "AIRFLOW_HOME": str(logs / "airflow-home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow@127.0.0.1:{pg_port}/airflow",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API_AUTH__JWT_SECRET": "abalone-celery-cluster-secret",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "PYTHONPATH": str(ROOT),
            "GIT_PYTHON_REFRESH": "quiet",
            "C_FORCE_ROOT": "true",  # Celery refuses root otherwise; the test machines run everything as root
        }
        start_airflow(processes, airflow_env, api_port, dag_id)
        airflow = str(BIN / "airflow")
        for queue, name in workers:
            command = [airflow, "celery", "worker", "--queues", queue, "--concurrency", "2"]
            worker_env = {**airflow_env, "ABALONE_WORKER_NAME": name}
            processes.start(name, [*command, "--celery-hostname", f"{name}@%h"], worker_env)
        yield {"api": api, "processes": processes, "env": airflow_env}
    finally:
        processes.stop()
        shutil.rmtree(pg_data, ignore_errors=True)
