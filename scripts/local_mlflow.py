"""The local MLflow server, started one way for ``make run`` (scripts/local_airflow.py), the tests and the benchmarks.

``mlflow server`` with a SQLite backend (``HOME/mlflow.db``) and proxied artifacts (``mlflow-artifacts:``) stored at
a destination (``HOME/artifacts`` unless told: a directory, or ``s3://BUCKET/...``), on loopback, one worker.

    command(home, port, ...)               its command line
    environment(base)                      its environment: ``base`` (os.environ) with the settings it needs
    start(command, log, env, pid_file)     detached, in its own session (process group), appending to ``log``
    wait_healthy(uri, process, log)        until /health answers; MlflowServerError naming the log otherwise
    stop(process)                          the whole process group: SIGTERM, then SIGKILL what is left
    server(home, port, env, artifacts)     all of it as a context manager that yields the server's URI

Callers that manage the lifecycle themselves (``make run`` by pid file, the chaos tests' ``Processes``, which
kill and restart it) take ``command`` and ``environment`` and wait with ``healthy`` or ``wait_healthy``.

Only the standard library is used: ``make stop`` runs scripts/local_airflow.py, which imports this, with any
``python3``. Import it with scripts/ on ``sys.path`` (where a script there runs from), then ``import local_mlflow``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"
WORKERS = 1
HEALTH_TIMEOUT_SECONDS = 120.0
# Always: MLflow's job runner serves GenAI features this pipeline does not use; it costs a process per queue.
FORCED_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# Unless the caller's environment says otherwise: the telemetry thread cannot reach its endpoint here.
DEFAULT_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}
# No proxy for a local server, whatever the environment says.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MlflowServerError(RuntimeError):
    """The server exited or did not answer /health in time; the message names its log and quotes its end."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def uri(port: int, host: str = HOST) -> str:
    return f"http://{host}:{port}"


def command(
    home: Path,
    port: int,
    *,
    artifacts: str | Path | None = None,
    host: str = HOST,
    workers: int = WORKERS,
    allowed_hosts: Sequence[str] = (),
    bin_dir: Path | None = None,
) -> list[str]:
    """``mlflow server`` on ``home/mlflow.db``, proxying artifacts to ``artifacts`` (default ``home/artifacts``).

    ``allowed_hosts``: the Host headers MLflow accepts besides localhost and private IPs (its DNS-rebinding
    check; /health is exempt), e.g. a compose service name. ``bin_dir``: the venv's bin (default: this
    interpreter's).
    """
    home = Path(home)
    line = [
        str((bin_dir or Path(sys.executable).parent) / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "artifacts" if artifacts is None else artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return line + (["--allowed-hosts", ",".join(allowed_hosts)] if allowed_hosts else [])


def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with the settings the server needs."""
    return {**DEFAULT_ENV, **(os.environ if base is None else base), **FORCED_ENV}


def start(
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    pid_file: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start ``command`` detached in its own session (its pid is its process group), appending to ``log``.

    Writes its pid to ``pid_file`` when given. Nothing else is MLflow-specific: scripts/local_airflow.py starts
    the Airflow components with it too.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(
            list(command),
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{process.pid}\n")
    return process


def healthy(server_uri: str, timeout: float = 2.0) -> bool:
    """True when ``server_uri/health`` answers 200 (it is exempt from MLflow's Host-header check)."""
    try:
        with _LOCAL.open(f"{server_uri.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def tail(path: Path, lines: int = 25) -> str:
    """The end of a log, indented, for an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    (no log at {path})"
    return "\n".join(f"    {line[:300]}" for line in text[-lines:])


def wait_healthy(
    server_uri: str,
    *,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
    timeout: float = HEALTH_TIMEOUT_SECONDS,
    interval: float = 0.5,
) -> None:
    """Wait until /health answers; MlflowServerError, naming ``log``, when ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not healthy(server_uri):
        if process is not None and process.poll() is not None:
            problem = f"mlflow server for {server_uri} exited ({process.returncode}) during start-up"
        elif time.monotonic() > deadline:
            problem = f"mlflow server did not answer {server_uri}/health within {timeout:.0f} s"
        else:
            time.sleep(interval)
            continue
        where = f"; the end of its log ({log}):\n{tail(log)}" if log is not None else ""
        raise MlflowServerError(problem + where)


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the server's process group, wait for it, SIGKILL the group if it is still there (or lingers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # a worker that outlived its parent, or a hung server
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def server(
    home: Path,
    port: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    artifacts: str | Path | None = None,
    timeout: float = HEALTH_TIMEOUT_SECONDS,
) -> Generator[str, None, None]:
    """Start the server in ``home`` (log ``home/server.log``), yield its URI once healthy, stop it on exit.

    ``port``: a free one when not given. ``env``: the base of its environment (default ``os.environ``).
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = home / "server.log"
    process = start(command(home, port, artifacts=artifacts), log, env=environment(env))
    try:
        wait_healthy(uri(port), process=process, log=log, timeout=timeout)
        yield uri(port)
    finally:
        stop(process)
