"""The production stack as users run it: docker-compose.yaml brought up by docker-compose from a .env made
from .env.example, exactly as docs/production.md says, with images built from the project's
Dockerfile on local stand-ins (standins/) where the official images cannot be pulled.

Three runs go through it, triggered through the REST API with a conf: the first trains on the stack's GPU
worker and promotes a champion; for the second (forced to train), the stack's GPU worker is stopped and a
GPU worker of a second compose project (the gpu-worker-remote profile, as on a GPU host of its own) takes
the `gpu` queue, reaching the first project only through its published ports; the third, with nothing
changed since the champion, does not train. `docker-compose down -v` must leave nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
import yaml
from mlflow import MlflowClient

from .conftest import AWS_ENV, ROOT, TRAINER_IMAGE, free_port

DAG_ID = "abalone_retraining"
PROJECT = "abalone-compose-test"
REMOTE_PROJECT = "abalone-compose-test-gpu"
CONF = {"epochs": 100, "batch_size": 64}
RETRAIN = {**CONF, "force_training": True}  # the champion's dataset, image and settings: trained only if forced
MODEL_NAME = "abalone-rings"
ADMIN = {"username": "airflow", "password": "airflow"}  # .env.example's _AIRFLOW_WWW_USER_*

if shutil.which("docker-compose") is None and not os.environ.get("CI"):
    pytest.skip("needs Debian's docker-compose (.ci/run installs it)", allow_module_level=True)


def standin(kind: str) -> str:
    """The stand-in image for KIND, built once per change of its inputs (standins/build.sh prints its tag)."""
    env = {**os.environ, "PYTHON": sys.executable}
    built = subprocess.run([str(ROOT / "standins" / "build.sh"), kind], capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    return built.stdout.strip().splitlines()[-1]


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {name.strip(): value for name, value in pairs}


@dataclass
class Compose:
    """docker-compose for one project, with its own .env file, run from the project's root."""

    project: str
    env_file: Path
    logs: Path

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        command = ["docker-compose", "--env-file", str(self.env_file), "-p", self.project, *args]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def containers(self) -> dict[str, dict]:
        """The project's containers by service name (running or not), as `docker inspect` shows them."""
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not ids:
            return {}
        inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, check=True).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    def wait_healthy(self, timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {
                name: (c["State"]["Status"], (c["State"].get("Health") or {}).get("Status"))
                for name, c in self.containers().items()
            }
            failed = {
                name: state
                for name, state in states.items()
                if (state[0] == "exited" and not name.endswith("-init")) or state[1] == "unhealthy"
            }
            if failed:
                self.save_logs()
                pytest.fail(f"{self.project}: services exited or unhealthy: {failed}")
            if states and all(health in (None, "healthy") for status, health in states.values()):
                return
            time.sleep(5)
        self.save_logs()
        pytest.fail(f"{self.project}: not healthy after {timeout:.0f} s: {states}")

    def save_logs(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / f"{self.project}.log").write_text(self("logs", "--no-color", check=False).stdout)


PORTS = ("AIRFLOW_PORT", "MLFLOW_PORT", "MINIO_PORT", "MINIO_CONSOLE_PORT", "POSTGRES_PORT", "REDIS_PORT")


def distinct_free_ports(count: int) -> list[str]:
    ports: set[str] = set()
    while len(ports) < count:
        ports.add(str(free_port()))
    return sorted(ports)


def write_env(path: Path, settings: dict[str, str]) -> dict[str, str]:
    """`cp .env.example .env`, then edit: the example's values, with `settings` in place of some."""
    values = {**dotenv(ROOT / ".env.example"), **settings}
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return values


@dataclass
class Stack:
    compose: Compose
    remote: Compose
    env: dict[str, str]

    def url(self, port_setting: str) -> str:
        return f"http://127.0.0.1:{self.env[port_setting]}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_engine) -> Iterator[Stack]:
    from cryptography.fernet import Fernet

    work = tmp_path_factory.mktemp("compose")
    logs = Path(os.environ.get("ABALONE_TEST_ARTIFACTS", ROOT / ".local" / "test-artifacts")) / "compose"
    env = {
        # The control plane publishes Redis and PostgreSQL too, for the GPU worker of the second project.
        "COMPOSE_FILE": "docker-compose.yaml:docker-compose.control-plane.yaml",
        "AIRFLOW_IMAGE_NAME": "abalone-airflow:compose-test",
        "AIRFLOW_BASE_IMAGE": standin("airflow"),
        "POSTGRES_IMAGE": standin("postgres"),
        "REDIS_IMAGE": standin("redis"),
        "MINIO_IMAGE": standin("s3"),
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "ABALONE_NETWORK": PROJECT,
        "ABALONE_TRAINER_IMAGE": TRAINER_IMAGE,
        "ABALONE_SCHEDULE": "none",
        "ABALONE_TASK_RETRIES": "0",
        **dict(zip(PORTS, distinct_free_ports(len(PORTS)), strict=True)),
    }
    env["ABALONE_AIRFLOW_BASE_URL"] = f"http://localhost:{env['AIRFLOW_PORT']}"
    env["ABALONE_MLFLOW_UI_URL"] = f"http://localhost:{env['MLFLOW_PORT']}"
    env = write_env(work / ".env", env)
    # The GPU host's .env: the control plane's settings, its address, and only the base file.
    remote_env = {**env, "COMPOSE_FILE": "docker-compose.yaml", "ABALONE_CONTROL_PLANE": "127.0.0.1"}
    remote_env["ABALONE_NETWORK"] = REMOTE_PROJECT
    write_env(work / "gpu-host.env", remote_env)
    compose = Compose(PROJECT, work / ".env", logs)
    remote = Compose(REMOTE_PROJECT, work / "gpu-host.env", logs)
    tear_down(compose, remote)  # what a crashed earlier run left would be reused: its registry, say
    try:
        compose("build")
        compose("up", "-d")
        compose.wait_healthy()
        yield Stack(compose, remote, env)
    finally:
        for project in (compose, remote):
            if project.containers():
                project.save_logs()
        tear_down(compose, remote)


def tear_down(compose: Compose, remote: Compose) -> None:
    """Both projects down with their volumes; first any trainer container still attached to the stack's
    network (a run cut short), which no compose project owns and which would keep the network."""
    attached = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"network={PROJECT}", "--filter", f"ancestor={TRAINER_IMAGE}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if attached:
        subprocess.run(["docker", "rm", "-f", *attached], capture_output=True)
    remote("--profile", "gpu-worker-remote", "down", "-v", "--remove-orphans", check=False)
    compose("down", "-v", "--remove-orphans", check=False)


class Api:
    """Airflow's REST API with a token of the admin user, as a client of the FAB auth manager gets it."""

    def __init__(self, base: str) -> None:
        self.base = base
        token = requests.post(f"{base}/auth/token", json=ADMIN, timeout=30)
        token.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def __call__(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.base}/api/v2/dags/{DAG_ID}{path}", timeout=30, **kwargs)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def trigger(self, conf: dict) -> str:
        return self("POST", "/dagRuns", json={"logical_date": None, "conf": conf})["dag_run_id"]

    def wait(self, run_id: str, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self("GET", f"/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(5)
        pytest.fail(f"{run_id} did not finish in {timeout:.0f} s: {self.states(run_id)}")

    def task_instances(self, run_id: str) -> dict[str, dict]:
        listing = self("GET", f"/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in listing}

    def states(self, run_id: str) -> dict[str, str]:
        return {task: ti["state"] for task, ti in self.task_instances(run_id).items()}

    def xcom(self, run_id: str, task_id: str, key: str = "return_value"):
        value = self("GET", f"/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")["value"]
        return json.loads(value) if isinstance(value, str) else value


def hostname(container: dict) -> str:
    return container["Config"]["Hostname"]


@pytest.fixture(scope="module")
def runs(stack, tmp_path_factory) -> Iterator[dict]:
    """Run 1 on the stack's GPU worker; then that worker stopped, run 2 on the second project's. The
    engine's container starts and network connections meanwhile are recorded (the engine itself keeps
    only its last 256 events, and the stack's healthchecks alone make more than that)."""
    api = Api(stack.url("AIRFLOW_PORT"))
    deadline = time.monotonic() + 180
    while api.session.get(f"{api.base}/api/v2/dags/{DAG_ID}", timeout=30).status_code == 404:
        assert time.monotonic() < deadline, "the DAG processor never parsed abalone_retraining"
        time.sleep(3)
    events = (tmp_path_factory.mktemp("events") / "docker-events.jsonl").open("w")
    watch = ["docker", "events", "--format", "{{json .}}", "--filter", "type=container", "--filter", "type=network"]
    recorder = subprocess.Popen([*watch, "--filter", "event=start", "--filter", "event=connect"], stdout=events)
    try:
        api("PATCH", "", json={"is_paused": False})
        first = api.trigger(CONF)
        api.wait(first)
        gpu_worker = stack.compose.containers()["airflow-worker-gpu"]
        stack.compose("stop", "airflow-worker-gpu")
        stack.remote("--profile", "gpu-worker-remote", "up", "-d", "airflow-worker-gpu-remote")
        stack.remote.wait_healthy()
        second = api.trigger(RETRAIN)
        api.wait(second)
        third = api.trigger(CONF)
        api.wait(third)
        remote_worker = stack.remote.containers()["airflow-worker-gpu-remote"]
    finally:
        recorder.terminate()
        recorder.wait(timeout=30)
        events.close()
    yield {
        "api": api,
        "first": first,
        "second": second,
        "third": third,
        "gpu_hosts": {first: hostname(gpu_worker), second: hostname(remote_worker)},
        "events": [json.loads(line) for line in Path(events.name).read_text().splitlines()],
    }


def test_published_ports_listen_on_loopback_only(stack):
    published = [
        binding
        for container in stack.compose.containers().values()
        for bindings in (container["NetworkSettings"]["Ports"] or {}).values()
        for binding in bindings or ()
    ]
    assert {b["HostPort"] for b in published} == {stack.env[name] for name in PORTS}
    assert {b["HostIp"] for b in published} == {"127.0.0.1"}


def test_mlflow_answers_api_calls_by_its_service_name_inside_the_stack(stack):
    """MLflow 3 refuses Host headers it does not know; /health is exempt, so only an API call shows it."""
    call = "from mlflow import MlflowClient; print(len(MlflowClient('http://mlflow:5000').search_experiments()))"
    done = stack.compose("exec", "-T", "airflow-worker", "python", "-c", call, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_gpu_worker_can_start_containers(stack):
    ping = "import docker; print(docker.from_env().ping())"
    done = stack.compose("exec", "-T", "airflow-worker-gpu", "python", "-c", ping, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr[-2000:]


def test_the_gpu_workers_healthcheck_fails_without_the_sockets_group(stack):
    """A wrong DOCKER_GID gave a worker that reported healthy but could not start a trainer."""
    compose_file = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    healthcheck = compose_file["services"]["airflow-worker-gpu"]["healthcheck"]["test"][-1]
    docker_part = healthcheck.split("&&", 1)[1].strip()  # the part after Celery's ping
    socket_group, image = stack.env["DOCKER_GID"], stack.env["AIRFLOW_IMAGE_NAME"]
    if socket_group == "0":
        pytest.skip("the socket's group is root's, which the worker (gid 0) always has")
    for group, healthy in ((socket_group, True), (str(int(socket_group) + 1), False)):
        run = ["docker", "run", "--rm", "--network", "none", "--user", "50000:0", "--group-add", group]
        run += ["-v", "/var/run/docker.sock:/var/run/docker.sock", "--entrypoint", "bash", image]
        done = subprocess.run([*run, "-c", docker_part], capture_output=True, text=True)
        assert (done.returncode == 0) == healthy, (group, done.stderr[-1500:])


def test_both_runs_succeed_with_their_conf(stack, runs):
    api = runs["api"]
    for run_id in (runs["first"], runs["second"]):
        run = api("GET", f"/dagRuns/{run_id}")
        assert run["state"] == "success", f"{run_id}: {api.states(run_id)} (logs in {stack.compose.logs})"
        assert (run["conf"]["epochs"], run["triggered_by"]) == (CONF["epochs"], "rest_api")


def test_a_night_with_nothing_changed_since_the_champion_does_not_train(stack, runs):
    """Run 3: the champion's dataset, trainer image and hyperparameters. train is skipped on the remote GPU
    worker (it reads the image there and the champion from MLflow) and starts no container (the events test)."""
    api, third = runs["api"], runs["third"]
    assert api("GET", f"/dagRuns/{third}")["state"] == "success"
    states = api.states(third)
    assert {task: states[task] for task in ("train", "evaluate", "gate", "promote", "summarize")} == {
        "train": "skipped",
        "evaluate": "skipped",
        "gate": "success",
        "promote": "skipped",
        "summarize": "success",
    }, states
    summary = api.xcom(third, "summarize")
    assert summary["outcome"] == "unchanged" and summary["champion_now"] == "1", summary
    assert summary["reasons"].startswith("unchanged since the champion v1 (run "), summary
    assert summary["dataset_id"] == api.xcom(runs["first"], "stage")["dataset_id"]


def test_training_runs_on_a_gpu_worker_and_the_rest_on_the_default_worker(stack, runs):
    api = runs["api"]
    default_worker = hostname(stack.compose.containers()["airflow-worker"])
    for run_id in (runs["first"], runs["second"]):
        for task, ti in api.task_instances(run_id).items():
            if ti["state"] == "skipped":  # promote, for the rejected second run: it never reached a worker
                continue
            on_gpu = task in ("train", "evaluate", "clean_up")  # clean_up removes containers there
            expected = runs["gpu_hosts"][run_id] if on_gpu else default_worker
            assert (ti["queue"], ti["hostname"].split(".")[0]) == ("gpu" if on_gpu else "default", expected), task


def test_the_trainer_containers_were_started_by_the_gpu_workers_and_removed(stack, runs):
    """One trainer container per task and run, named for it; run 1's joined the stack's network (started
    through the socket by its GPU worker), run 2's the host network of the remote GPU worker. None is left."""
    from abalone_pipeline.operators import container_name

    starts = [e for e in runs["events"] if e["Type"] == "container" and e["from"] == TRAINER_IMAGE]
    names = sorted(e["Actor"]["Attributes"]["name"] for e in starts)
    expected = [
        container_name(DAG_ID, task, run, 1)
        for run in (runs["first"], runs["second"])
        for task in ("train", "evaluate")
    ]
    assert names == sorted(expected)
    joined = {
        e["Actor"]["Attributes"]["name"]
        for e in runs["events"]
        if e["Type"] == "network" and e["Actor"]["Attributes"].get("container") in {start["id"] for start in starts}
    }
    assert joined == {PROJECT, "host"}, joined
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={TRAINER_IMAGE}"], capture_output=True)
    assert not left.stdout.split(), "trainer containers were left behind"


def test_staged_data_and_mlflow_artifacts_are_in_the_s3_service(stack, runs):
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.url("MINIO_PORT"),
        aws_access_key_id=stack.env["MINIO_ROOT_USER"],
        aws_secret_access_key=stack.env["MINIO_ROOT_PASSWORD"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
    )
    staged = runs["api"].xcom(runs["first"], "stage")
    manifest = f"pipeline/datasets/abalone/{staged['dataset_id']}/manifest.json"
    assert staged["manifest_uri"] == f"s3://abalone-staging/{manifest}"
    assert json.loads(s3.get_object(Bucket="abalone-staging", Key=manifest)["Body"].read())
    candidate = runs["api"].xcom(runs["first"], "train")["run_id"]
    artifacts = s3.list_objects_v2(Bucket="abalone-mlflow", Prefix="artifacts/")
    assert any(candidate in obj["Key"] for obj in artifacts.get("Contents", [])), "the model is not in S3"


def test_the_first_run_promotes_a_champion_and_the_second_is_judged_against_it(stack, runs):
    api = runs["api"]
    client = MlflowClient(stack.url("MLFLOW_PORT"))
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.version == "1"
    assert champion.run_id == api.xcom(runs["first"], "train")["run_id"]
    assert api.xcom(runs["first"], "promote")["promoted"] is True
    first = api.xcom(runs["first"], "summarize")
    assert (first["outcome"], first["promoted_version"], first["champion_now"]) == ("promoted", "1", "1")
    # The links a browser opens: the published MLflow port and the Airflow UI, not the services' names.
    assert first["links"]["mlflow_run"].startswith(stack.env["ABALONE_MLFLOW_UI_URL"] + "/#/"), first["links"]
    assert first["links"]["airflow_run"].startswith(stack.env["ABALONE_AIRFLOW_BASE_URL"] + "/dags/"), first["links"]
    second = api.xcom(runs["second"], "gate", "decision")
    rules = {check["rule"] for check in second["checks"]}
    # Scored beside the champion: no "champion_scorable" failure, and the comparison rules were applied.
    assert second["champion_version"] == "1" and "champion_scorable" not in rules, second["summary"]
    assert {"improvement", "significance"} <= rules, second["summary"]
    # Same rows, same settings, the same CPU trainer: the second model ties the champion, which stays.
    assert second["outcome"] == api.xcom(runs["second"], "summarize")["outcome"] == "rejected"
    assert api.states(runs["second"])["promote"] == "skipped", "a rejection does not touch the registry"
    # The model page, served by the stack's API server (FAB auth) from the stack's MLflow.
    for _ in range(30):  # its first read loads the MLflow client, which may outlast the page's 5 s deadline
        page = api.session.get(f"{api.base}/abalone/api/summary", timeout=60)
        if page.status_code != 503:
            break
        time.sleep(2)
    assert page.ok, page.text[:500]
    assert page.json()["champion"]["version"] == "1"
    assert [row["outcome"] for row in page.json()["decisions"] if row.get("outcome") != "rollback"][:2] == [
        "rejected",
        "promoted",
    ]
    assert requests.get(f"{api.base}/abalone/api/summary", timeout=30).status_code == 401, "no anonymous access"
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == "1"


def test_down_leaves_nothing(stack, runs):
    stack.remote("--profile", "gpu-worker-remote", "down", "-v", "--remove-orphans")
    stack.compose("down", "-v", "--remove-orphans")
    for project in (PROJECT, REMOTE_PROJECT):
        label = f"label=com.docker.compose.project={project}"
        for kind in ("ps -a", "volume ls", "network ls"):
            listed = subprocess.run(
                ["docker", *kind.split(), "-q", "--filter", label], capture_output=True, text=True, check=True
            )
            assert not listed.stdout.split(), f"{kind} still lists {project}'s {listed.stdout.split()}"
    assert PROJECT not in subprocess.run(["docker", "network", "ls"], capture_output=True, text=True).stdout
