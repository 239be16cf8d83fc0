"""The live local stack behind ``make run``: Airflow (API server, scheduler, DAG processor, triggerer; LocalExecutor
on SQLite) and an MLflow server, started in the background, reused while healthy, stopped by pid file.

    python scripts/local_airflow.py run       up, then trigger (what make run does once the image is built)
    python scripts/local_airflow.py up        start what is not running, wait until healthy, unpause the DAG
    python scripts/local_airflow.py trigger   trigger one run through the REST API, follow it, print the result
    python scripts/local_airflow.py status    what runs, and where
    python scripts/local_airflow.py stop      stop every process started by ``up`` (whole process groups)

Settings come from the environment that ``scripts/env.sh`` sets (ports, directories, URLs). Only the standard
library is used, so ``stop`` works with any ``python3``; ``up`` and ``trigger`` run Airflow and the report with the
interpreter they are given (the project's venv).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import local_mlflow  # beside this file: the one way to start the local MLflow server

DAG_ID = "abalone_retraining"
ADMIN = "admin"
# Stopped in this order: the scheduler first, so that nothing new starts while the rest goes down.
AIRFLOW_COMPONENTS = ("scheduler", "triggerer", "dag-processor", "api-server")
# A reused stack must run with the settings of this call: tasks inherit the scheduler's environment.
FINGERPRINT_PREFIXES = ("ABALONE_", "AIRFLOW_", "MLFLOW_", "AWS_", "DOCKER_", "SAGEMAKER_")
# ... except those that only steer this script.
FINGERPRINT_IGNORED = frozenset({"ABALONE_START_TIMEOUT_SECONDS", "ABALONE_RUN_TIMEOUT_SECONDS", "ABALONE_VENV"})
ENDED = ("success", "failed")
# No proxy for the local services, whatever the environment says.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def links_to(tracking_uri: str) -> str:
    """What a browser opens for MLflow: the tracking server, or for a SageMaker ARN the console (see links.py)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    region = tracking_uri.split(":")[3] if tracking_uri.count(":") >= 5 else "us-east-1"
    return f"the SageMaker AI console ({region})"


class StackError(RuntimeError):
    """Something the operator must fix; the message says what and where to look."""


@dataclass(frozen=True)
class Stack:
    """Where everything lives and answers, read from the environment (``scripts/env.sh``)."""

    local_dir: Path
    airflow_home: Path
    airflow_port: int
    airflow_base_url: str
    mlflow_port: int
    tracking_uri: str
    mlflow_ui_url: str
    passwords_file: Path
    pools: tuple[tuple[str, str], ...]
    bin_dir: Path
    start_timeout: float
    run_timeout: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Stack:
        try:
            local_dir = Path(env["ABALONE_LOCAL_DIR"])
        except KeyError:
            raise StackError("ABALONE_LOCAL_DIR is not set: source scripts/env.sh first") from None
        airflow_port = int(env.get("ABALONE_AIRFLOW_PORT", "8080"))
        mlflow_port = int(env.get("ABALONE_MLFLOW_PORT", "5000"))
        tracking_uri = env.get("ABALONE_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{mlflow_port}").rstrip("/")
        airflow_home = Path(env.get("AIRFLOW_HOME", local_dir / "airflow"))
        return cls(
            local_dir=local_dir,
            airflow_home=airflow_home,
            airflow_port=airflow_port,
            airflow_base_url=env.get("ABALONE_AIRFLOW_BASE_URL", f"http://localhost:{airflow_port}").rstrip("/"),
            mlflow_port=mlflow_port,
            tracking_uri=tracking_uri,
            mlflow_ui_url=(env.get("ABALONE_MLFLOW_UI_URL") or links_to(tracking_uri)).rstrip("/"),
            passwords_file=Path(
                env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
                or airflow_home / "simple_auth_manager_passwords.json.generated"
            ),
            pools=(
                (env.get("ABALONE_TRAIN_POOL", "gpu"), "Trainer containers on the GPU host"),
                (env.get("ABALONE_REGISTRY_POOL", "mlflow_registry"), "Promotions and rollbacks, one at a time"),
            ),
            bin_dir=Path(env["ABALONE_VENV"]) / "bin" if env.get("ABALONE_VENV") else Path(sys.executable).parent,
            start_timeout=float(env.get("ABALONE_START_TIMEOUT_SECONDS", "180")),
            run_timeout=float(env.get("ABALONE_RUN_TIMEOUT_SECONDS", "3600")),
        )

    @property
    def state_dir(self) -> Path:
        """Pid files and logs of the Airflow processes."""
        return self.local_dir / "airflow"

    @property
    def mlflow_dir(self) -> Path:
        return self.local_dir / "mlflow"

    @property
    def api(self) -> str:
        """Where this script calls the API server (loopback, whatever name the UI links use)."""
        return f"http://127.0.0.1:{self.airflow_port}"

    def pid_file(self, name: str) -> Path:
        return self.mlflow_dir / "server.pid" if name == "mlflow" else self.state_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.mlflow_dir / "server.log" if name == "mlflow" else self.state_dir / f"{name}.log"

    def manages_mlflow(self) -> bool:
        """True when the tracking URI is the local server this script may start (not a remote one, not an ARN)."""
        parsed = urllib.parse.urlsplit(self.tracking_uri)
        local = parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "localhost")
        return local and parsed.port == self.mlflow_port


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


# --- processes -------------------------------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def running(stack: Stack, name: str) -> int | None:
    """The pid of component ``name`` when its pid file names a live process group that is still ours."""
    pid = read_pid(stack.pid_file(name))
    if pid is None or pid not in group_members(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return pid if ("mlflow" if name == "mlflow" else "airflow") in cmdline else None


def start(stack: Stack, name: str, command: list[str]) -> int:
    """Start ``command`` in its own session (its pid is its process group), logging to the component's log."""
    env = local_mlflow.environment() if name == "mlflow" else None
    return local_mlflow.start(command, stack.log_file(name), env=env, pid_file=stack.pid_file(name)).pid


def died(stack: Stack, name: str) -> StackError:
    log = stack.log_file(name)
    return StackError(
        f"{name} exited during start-up (make stop stops the rest); "
        f"the end of its log ({log}):\n{local_mlflow.tail(log)}"
    )


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def who_listens(port: int) -> str:
    """The listening process on ``port`` as ``ss`` reports it, when it can."""
    if shutil.which("ss") is None:
        return ""
    done = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def check_port_free(port: int, what: str, variable: str) -> None:
    if port_taken(port):
        owner = who_listens(port)
        raise StackError(
            f"port {port} ({what}) is already taken by another program{': ' + owner if owner else ''}. "
            f"Stop it, or pick another port: {variable}=<free port> make run"
        )


def stop_groups(stack: Stack, names: list[str], timeout: float = 60) -> list[str]:
    """SIGTERM each component's process group, wait for every member to exit, SIGKILL what is left."""
    groups = {name: pid for name in names if (pid := running(stack, name)) is not None}
    for pid in groups.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(group_members(pid) for pid in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for name, pid in groups.items():
        if group_members(pid):
            print(f"{name} (process group {pid}) did not stop within {timeout:.0f} s: killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while any(group_members(pid) for pid in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name in names:
        stack.pid_file(name).unlink(missing_ok=True)
    return [f"{name} ({pid})" for name, pid in groups.items()]


def fingerprint(env: Mapping[str, str]) -> dict[str, str]:
    """A hash of each setting a running stack depends on (hashes only: some are secrets)."""
    return {
        name: hashlib.sha256(value.encode()).hexdigest()[:16]
        for name, value in sorted(env.items())
        if name.startswith(FINGERPRINT_PREFIXES) and name not in FINGERPRINT_IGNORED
    }


def changed_settings(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    return sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))


@contextlib.contextmanager
def locked(stack: Stack) -> Generator[None, None, None]:
    """One ``up`` or ``stop`` at a time on one ABALONE_LOCAL_DIR."""
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    with (stack.state_dir / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another make run/stop on {stack.local_dir} ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- HTTP --------------------------------------------------------------------------------------------------------


def call(method: str, url: str, *, token: str | None = None, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    """One JSON request; (status, decoded body). Connection errors raise OSError."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _LOCAL.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def health(stack: Stack) -> dict[str, str] | None:
    """Each Airflow component's status from /api/v2/monitor/health; None while the API server does not answer."""
    try:
        status, body = call("GET", f"{stack.api}/api/v2/monitor/health", timeout=5)
    except OSError:
        return None
    if status != 200 or not isinstance(body, dict):
        return None
    return {name: (part or {}).get("status") or "unknown" for name, part in body.items()}


def unhealthy(report: dict[str, str] | None) -> list[str]:
    if report is None:
        return ["api-server (not answering)"]
    return [f"{name} ({status})" for name, status in report.items() if status != "healthy"]


def password(stack: Stack) -> str:
    try:
        return json.loads(stack.passwords_file.read_text())[ADMIN]
    except (OSError, ValueError, KeyError):
        raise StackError(f"no password for {ADMIN!r} in {stack.passwords_file}: run make run first") from None


def login(stack: Stack) -> str:
    """A JWT for the REST API, from the simple auth manager's /auth/token."""
    try:
        status, body = call("POST", f"{stack.api}/auth/token", body={"username": ADMIN, "password": password(stack)})
    except OSError as error:
        raise StackError(f"the local Airflow does not answer at {stack.api} ({error}): run make run") from None
    if status not in (200, 201):
        raise StackError(f"login as {ADMIN!r} failed ({status} {body}); passwords file: {stack.passwords_file}")
    return body["access_token"]


# --- up ----------------------------------------------------------------------------------------------------------


def ensure_password(stack: Stack) -> None:
    """Give ``admin`` a generated password, kept across runs (the simple auth manager reads this file)."""
    passwords: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        passwords = json.loads(stack.passwords_file.read_text())
    if passwords.get(ADMIN):
        return
    passwords[ADMIN] = secrets.token_urlsafe(12)
    stack.passwords_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(stack.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(json.dumps(passwords) + "\n")


def start_mlflow(stack: Stack) -> int | None:
    """Start the local MLflow server unless one answers already; its pid when started here (not yet healthy)."""
    if not stack.tracking_uri.startswith(("http://", "https://")):
        return None  # an ARN: SageMaker's managed MLflow, nothing to start
    if local_mlflow.healthy(stack.tracking_uri, timeout=5):
        pid = running(stack, "mlflow")
        print(
            f"MLflow server: reusing pid {pid}"
            if pid
            else f"MLflow server: one answers at {stack.tracking_uri} (not started here: make stop leaves it alone)"
        )
        return None
    if pid := running(stack, "mlflow"):
        return pid  # ours, still starting (or hung: the wait below says so)
    if not stack.manages_mlflow():
        raise StackError(
            f"ABALONE_MLFLOW_TRACKING_URI={stack.tracking_uri} does not answer, and it is not the local server "
            f"this script starts (http://127.0.0.1:{stack.mlflow_port}): start it, or unset the variable"
        )
    check_port_free(stack.mlflow_port, "MLflow", "ABALONE_MLFLOW_PORT")
    stack.mlflow_dir.mkdir(parents=True, exist_ok=True)
    print(f"MLflow server: starting on {stack.tracking_uri} (log: {stack.log_file('mlflow')})")
    return start(stack, "mlflow", local_mlflow.command(stack.mlflow_dir, stack.mlflow_port, bin_dir=stack.bin_dir))


def start_airflow(stack: Stack) -> list[str]:
    """Start each Airflow component that is not running (all of them when the settings changed); their names."""
    state = stack.state_dir / "settings.json"
    now = fingerprint(os.environ)
    alive = [name for name in AIRFLOW_COMPONENTS if running(stack, name)]
    if alive:
        before: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            before = json.loads(state.read_text())
        if changed := changed_settings(before, now):
            shown = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
            print(f"Airflow: settings changed since it started ({shown}): restarting it")
            stop_groups(stack, list(AIRFLOW_COMPONENTS))
            alive = []
    missing = [name for name in AIRFLOW_COMPONENTS if name not in alive]
    if not missing:
        print(f"Airflow: reusing {', '.join(f'{name} ({running(stack, name)})' for name in AIRFLOW_COMPONENTS)}")
        return []
    if "api-server" in missing:
        check_port_free(stack.airflow_port, "the Airflow API server", "ABALONE_AIRFLOW_PORT")
    airflow = str(stack.bin_dir / "airflow")
    migrate_log = stack.state_dir / "db-migrate.log"
    with migrate_log.open("w") as out:
        migrated = subprocess.run([airflow, "db", "migrate"], stdout=out, stderr=subprocess.STDOUT, check=False)
    if migrated.returncode != 0:
        raise StackError(f"airflow db migrate failed; the end of {migrate_log}:\n{local_mlflow.tail(migrate_log)}")
    commands = {
        "api-server": [airflow, "api-server", "--port", str(stack.airflow_port)],
        "scheduler": [airflow, "scheduler"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer"],
    }
    for name in missing:
        start(stack, name, commands[name])
    state.write_text(json.dumps(now, indent=1) + "\n")
    print(f"Airflow: started {', '.join(missing)} (logs: {stack.state_dir}/<name>.log)")
    return missing


def wait_healthy(stack: Stack, started: list[str]) -> None:
    """Wait until MLflow and every Airflow component report healthy; fail fast when one dies."""
    deadline = time.monotonic() + stack.start_timeout
    while True:
        for name in started:
            if not running(stack, name):
                raise died(stack, name)
        mlflow_ok = "mlflow" not in started or local_mlflow.healthy(stack.tracking_uri, timeout=5)
        problems = unhealthy(health(stack))
        if mlflow_ok and not problems:
            return
        if time.monotonic() > deadline:
            waiting = problems + ([] if mlflow_ok else [f"MLflow ({stack.tracking_uri}/health)"])
            raise StackError(
                f"not healthy after {stack.start_timeout:.0f} s (ABALONE_START_TIMEOUT_SECONDS): "
                f"{', '.join(waiting)}; logs in {stack.state_dir} and {stack.mlflow_dir}"
            )
        time.sleep(1)


def import_errors(stack: Stack, token: str) -> list[str]:
    status, body = call("GET", f"{stack.api}/api/v2/importErrors?limit=100", token=token)
    if status != 200:
        return []
    return [f"{error['filename']}:\n{error['stack_trace'].strip()[-1500:]}" for error in body["import_errors"]]


def wait_for_dag(stack: Stack, token: str, dag_id: str) -> dict:
    deadline = time.monotonic() + stack.start_timeout
    while time.monotonic() < deadline:
        status, body = call("GET", f"{stack.api}/api/v2/dags/{dag_id}", token=token)
        if status == 200:
            return body
        if errors := import_errors(stack, token):
            raise StackError(f"{dag_id} does not load:\n" + "\n".join(errors))
        if not running(stack, "dag-processor"):
            raise died(stack, "dag-processor")
        time.sleep(2)
    raise StackError(
        f"{dag_id} was not parsed within {stack.start_timeout:.0f} s; see {stack.log_file('dag-processor')}"
    )


def ensure_pools(stack: Stack, token: str) -> None:
    """The pools the DAG's tasks name: a scheduler never runs a task whose pool is missing."""
    for name, description in stack.pools:
        body = {"slots": 1, "description": description, "include_deferred": False}
        url = f"{stack.api}/api/v2/pools/{urllib.parse.quote(name, safe='')}"
        status, answer = call("PATCH", url, token=token, body={"pool": name, **body})
        if status == 404:
            status, answer = call("POST", f"{stack.api}/api/v2/pools", token=token, body={"name": name, **body})
        if status not in (200, 201):
            raise StackError(f"cannot create the pool {name!r} ({status} {answer})")


def up(stack: Stack, dag_id: str, *, unpause: bool = True) -> None:
    """Bring the stack up (or reuse it), then make sure the DAG is parsed, its pools exist and it is unpaused."""
    with locked(stack):
        ensure_password(stack)
        store = os.environ.get("ABALONE_OBJECT_STORE_URI", "")
        if store.startswith("file://"):
            Path(urllib.parse.unquote(urllib.parse.urlsplit(store).path)).mkdir(parents=True, exist_ok=True)
        if not running(stack, "api-server"):  # before anything starts: a taken port stops nothing half-way
            check_port_free(stack.airflow_port, "the Airflow API server", "ABALONE_AIRFLOW_PORT")
        mlflow = start_mlflow(stack)
        started = start_airflow(stack)
        wait_healthy(stack, started + (["mlflow"] if mlflow else []))
        token = login(stack)
        dag = wait_for_dag(stack, token, dag_id)
        ensure_pools(stack, token)
        if unpause and dag.get("is_paused"):
            set_paused(stack, token, dag)
    print_where(stack)


def set_paused(stack: Stack, token: str, dag: Mapping[str, Any], paused: bool = False) -> None:
    status, body = call("PATCH", f"{stack.api}/api/v2/dags/{dag['dag_id']}", token=token, body={"is_paused": paused})
    if status != 200:
        raise StackError(f"cannot {'pause' if paused else 'unpause'} {dag['dag_id']} ({status} {body})")
    print(f"{dag['dag_id']}: {'paused' if paused else 'unpaused'} (schedule: {dag.get('timetable_summary') or 'none'})")


def pending_slot(dag: Mapping[str, Any], now: datetime) -> str | None:
    """The logical date of the scheduled run that unpausing starts at once (None if no slot is due).

    With catchup=False a cron DAG still runs its latest past slot when it is unpaused.
    """
    run_after, logical_date = dag.get("next_dagrun_run_after"), dag.get("next_dagrun_logical_date")
    if not run_after or not logical_date:
        return None
    return logical_date if datetime.fromisoformat(run_after.replace("Z", "+00:00")) <= now else None


def scheduled_run(stack: Stack, token: str, dag_id: str, logical_date: str, timeout: float = 30) -> str | None:
    """The id of the run the scheduler creates for ``logical_date``, once it does (None if not within timeout)."""
    query = urllib.parse.urlencode({"logical_date_gte": logical_date, "logical_date_lte": logical_date})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = call("GET", f"{stack.api}/api/v2/dags/{dag_id}/dagRuns?{query}", token=token)
        if status == 200 and body["dag_runs"]:
            return body["dag_runs"][0]["dag_run_id"]
        time.sleep(1)
    return None


def print_where(stack: Stack) -> None:
    print(f"Airflow UI:      {stack.airflow_base_url}  (user {ADMIN}, password {password(stack)})")
    print(f"                 the password is kept in {stack.passwords_file}")
    print(f"MLflow UI:       {stack.mlflow_ui_url}")


# --- trigger -----------------------------------------------------------------------------------------------------


def run_url(stack: Stack, dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI (the same link the pipeline writes to MLflow as ``airflow.run_url``)."""
    quote = urllib.parse.quote
    return f"{stack.airflow_base_url}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def task_url(stack: Stack, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    url = f"{run_url(stack, dag_id, run_id)}/tasks/{urllib.parse.quote(task_id, safe='')}"
    return url + (f"/mapped/{map_index}" if map_index >= 0 else "")


def task_log_path(stack: Stack, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> Path:
    """Where the task's log lands on disk (Airflow's default ``log_filename_template``)."""
    mapped = f"map_index={map_index}/" if map_index >= 0 else ""
    relative = f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/{mapped}attempt={try_number}.log"
    return stack.airflow_home / "logs" / relative


def task_key(ti: Mapping[str, Any]) -> str:
    index = ti.get("map_index", -1)
    return ti["task_id"] if index is None or index < 0 else f"{ti['task_id']}[{index}]"


def state_changes(
    before: Mapping[str, tuple[str | None, int]], task_instances: list[Mapping[str, Any]]
) -> tuple[dict[str, tuple[str | None, int]], list[str]]:
    """The new (state, try) per task and one line per task whose state or try changed since ``before``."""
    now = dict(before)
    lines = []
    ordered = sorted(task_instances, key=lambda ti: (ti.get("start_date") or "9999", task_key(ti)))
    for ti in ordered:
        key, state, tries = task_key(ti), ti.get("state"), ti.get("try_number") or 0
        if state is None or before.get(key) == (state, tries):
            continue
        now[key] = (state, tries)
        lines.append(f"{key:<24} {state}" + (f" (try {tries})" if tries > 1 else ""))
    return now, lines


def elapsed(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes:3d}:{seconds:02d}"


def readable_log(path: Path, lines: int = 20) -> str:
    """The end of a task log: Airflow 3 writes JSON lines; show their level, event and any error."""
    try:
        raw = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    (no log at {path})"
    shown = []
    for line in raw:
        try:
            entry = json.loads(line)
        except ValueError:
            shown.append(line)
            continue
        if not isinstance(entry, dict):
            shown.append(line)
            continue
        text = f"{entry.get('level', '')}: {entry.get('event', '')}".strip(": ")
        for error in entry.get("error_detail") or []:
            if isinstance(error, dict):
                text += f"\n      {error.get('exc_type', '')}: {error.get('exc_value', '')}"
        shown.append(text)
    return "\n".join(f"    {line[:400]}" for line in shown[-lines:])


def follow(stack: Stack, token: str, dag_id: str, run_id: str) -> tuple[str, list[dict]]:
    """Print each task's state changes until the run ends; (the run's state, its task instances)."""
    base = f"{stack.api}/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    started = time.monotonic()
    seen: dict[str, tuple[str | None, int]] = {}
    run_state, task_instances, waited = None, [], False
    while True:
        status, run = call("GET", base, token=token)
        if status == 401:
            token = login(stack)
            continue
        if status != 200:
            raise StackError(f"cannot read run {run_id} ({status} {run})")
        status, body = call("GET", f"{base}/taskInstances?limit=1000", token=token)
        if status == 200:
            task_instances = body["task_instances"]
            seen, lines = state_changes(seen, task_instances)
            for line in lines:
                print(f"[{elapsed(time.monotonic() - started)}] {line}", flush=True)
        if run["state"] != run_state:
            run_state = run["state"]
            print(f"[{elapsed(time.monotonic() - started)}] {'run':<24} {run_state}", flush=True)
        if run_state == "queued" and not waited and time.monotonic() - started > 10:
            waited = True
            status, body = call("GET", f"{stack.api}/api/v2/dags/{dag_id}/dagRuns?state=running", token=token)
            others = [r["dag_run_id"] for r in (body or {}).get("dag_runs", []) if r["dag_run_id"] != run_id]
            if status == 200 and others:
                print(f"         waiting for {', '.join(others)} to end (max_active_runs)", flush=True)
        if run_state in ENDED:
            return run_state, task_instances
        if time.monotonic() - started > stack.run_timeout:
            raise StackError(
                f"run {run_id} has not ended after {stack.run_timeout:.0f} s (ABALONE_RUN_TIMEOUT_SECONDS); "
                f"it goes on: {run_url(stack, dag_id, run_id)}"
            )
        time.sleep(2)


def run_headline(stack: Stack, token: str, dag_id: str, run_id: str) -> str | None:
    """The followed run's own outcome (its summarize XCom's headline), or None if it has none (it failed first)."""
    url = f"{stack.api}/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    try:
        status, body = call("GET", f"{url}/taskInstances/summarize/xcomEntries/return_value", token=token)
    except OSError:
        return None
    value = body.get("value") if status == 200 and isinstance(body, dict) else None
    if isinstance(value, str):  # the API may give the JSON as a string
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value.get("headline") if isinstance(value, dict) else None


def trigger(stack: Stack, dag_id: str, conf: dict[str, Any], python: str, *, unpause: bool = False) -> int:
    """Trigger one run, follow it to its end, print the result and where to look; 0 when it succeeded.

    A paused DAG is an error, unless ``unpause``. Unpausing a nightly DAG makes the scheduler start the slot
    that is due; that run is followed instead of triggering a second one (unless ``conf`` asks for more).
    """
    if problems := unhealthy(health(stack)):
        raise StackError(f"the local Airflow at {stack.api} is not healthy ({', '.join(problems)}): run make run")
    token = login(stack)
    status, dag = call("GET", f"{stack.api}/api/v2/dags/{dag_id}", token=token)
    if status != 200:
        raise StackError(f"{dag_id} is not known to the local Airflow ({status}): run make run")
    paused = bool(dag.get("is_paused"))
    if paused and not unpause:
        raise StackError(f"{dag_id} is paused (in the UI?), so a run would never start: unpause it, or run make run")
    for error in import_errors(stack, token):
        print(f"warning: a DAG file does not load; the run uses the last parsed version:\n{error}", file=sys.stderr)
    run_id = None
    if paused:
        slot = None if conf else pending_slot(dag, datetime.now(UTC))
        set_paused(stack, token, dag)
        if slot and (run_id := scheduled_run(stack, token, dag_id, slot)):
            print(f"unpausing started the nightly run that was due ({slot}): following it rather than a second run")
    if run_id is None:
        body = {"logical_date": None, "conf": conf, "note": "make run"}
        status, run = call("POST", f"{stack.api}/api/v2/dags/{dag_id}/dagRuns", token=token, body=body)
        if status not in (200, 201):
            raise StackError(f"triggering {dag_id} failed ({status} {run})")
        run_id = run["dag_run_id"]
    say(f"{dag_id} run {run_id}: following its tasks ({run_url(stack, dag_id, run_id)})")
    try:
        state, task_instances = follow(stack, token, dag_id, run_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the run goes on: {run_url(stack, dag_id, run_id)}", file=sys.stderr)
        return 130
    say("result" if state == "success" else "result (this run failed: the last candidate may be an earlier run's)")
    if headline := run_headline(stack, token, dag_id, run_id):
        print(f"This run:        {headline}")
        if headline.startswith("not trained"):
            print("                 (no candidate tonight: the candidate below is an earlier night's)")
    sys.stdout.flush()
    subprocess.run([python, "-m", "abalone_pipeline.last_run"], check=False)
    print(f"Airflow run:     {run_url(stack, dag_id, run_id)}  ({state})")
    print_where(stack)
    if state == "success":
        return 0
    failed = [ti for ti in task_instances if ti.get("state") == "failed"]
    print(f"\nThe run failed{': ' + ', '.join(task_key(ti) for ti in failed) if failed else ''}.", file=sys.stderr)
    for ti in failed:
        index = ti.get("map_index", -1)
        log = task_log_path(stack, dag_id, run_id, ti["task_id"], ti.get("try_number") or 1, index)
        print(f"  {task_key(ti)}: {task_url(stack, dag_id, run_id, ti['task_id'], index)}", file=sys.stderr)
        print(f"  log: {log}\n{readable_log(log)}", file=sys.stderr)
    return 1


# --- status and stop ---------------------------------------------------------------------------------------------


def status(stack: Stack) -> int:
    for name in (*AIRFLOW_COMPONENTS, "mlflow"):
        pid = running(stack, name)
        print(f"{name:<14} {'running, pid ' + str(pid) if pid else 'not running'}  (log: {stack.log_file(name)})")
    report = health(stack)
    print(f"health         {report if report is not None else 'the API server does not answer'}")
    print(f"Airflow UI:    {stack.airflow_base_url}")
    print(f"MLflow UI:     {stack.mlflow_ui_url}")
    return 0 if report is not None and not unhealthy(report) else 1


def stop(stack: Stack) -> int:
    with locked(stack):
        stopped = stop_groups(stack, [*AIRFLOW_COMPONENTS, "mlflow"])
    print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing was running from {stack.local_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "up", "trigger", "status", "stop"))
    parser.add_argument("--dag", default=DAG_ID, help=f"the DAG to unpause and trigger (default {DAG_ID})")
    parser.add_argument("--conf", default="{}", help="the run's conf, a JSON object (trigger)")
    args = parser.parse_args(argv)
    try:
        stack = Stack.from_env()
        if args.command == "run":
            up(stack, args.dag, unpause=False)
            return trigger(stack, args.dag, json.loads(args.conf), sys.executable, unpause=True)
        if args.command == "up":
            up(stack, args.dag)
            return 0
        if args.command == "trigger":
            return trigger(stack, args.dag, json.loads(args.conf), sys.executable)
        return status(stack) if args.command == "status" else stop(stack)
    except StackError as error:
        print(f"\nmake run: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the API server went away mid-call (make stop from another shell, a crash)
        print(f"\nmake run: the local Airflow stopped answering ({error}); see make status", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
