from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from docker.errors import APIError, NotFound

from abalone_contract.results import parse_train
from abalone_pipeline.config import Hardening
from abalone_pipeline.operators import TrainerContainerOperator, as_bool, container_labels, container_name


def test_container_names_are_docker_legal_and_unique_per_try():
    first = container_name("abalone_retraining", "train", "manual__2026-11-26T07:17:58.392560+00:00", 1)
    second = container_name("abalone_retraining", "train", "manual__2026-11-26T07:17:58.392560+00:00", 2)
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", first)
    assert first != second


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("True", True), ("false", False), ("0", False)])
def test_rendered_gpu_flag(value, expected):
    assert as_bool(value) is expected


def test_a_malformed_gpu_flag_fails_the_task():
    with pytest.raises(AirflowFailException, match="gpu must be true or false"):
        as_bool("sometimes")


@pytest.fixture
def context():
    ti = SimpleNamespace(dag_id="abalone_retraining", task_id="train", run_id="manual__1", try_number=1)
    return {"ti": ti}


class FakeDocker:
    """The Docker boundary: containers that exist, and what was stopped and removed."""

    def __init__(self, containers=()):
        self.existing = list(containers)
        self.stopped, self.removed, self.queries = [], [], []

    def containers(self, all=False, filters=None):
        self.queries.append(filters)
        if "name" in filters:
            return [c for c in self.existing if re.fullmatch(filters["name"], "/" + c["Names"][0].lstrip("/"))]
        wanted = dict(item.split("=", 1) for item in filters["label"])
        return [c for c in self.existing if wanted.items() <= c["Labels"].items()]

    def images(self, name=None):
        return []  # the image is not on this engine (only consulted when Docker reports an error)

    def stop(self, container_id, timeout=None):
        if container_id not in {c["Id"] for c in self.existing}:
            raise NotFound("No such container")
        self.stopped.append((container_id, timeout))

    def remove_container(self, container_id, force=False):
        if container_id not in {c["Id"] for c in self.existing}:
            raise NotFound("No such container")
        self.existing = [c for c in self.existing if c["Id"] != container_id]
        self.removed.append(container_id)


def operator_on(monkeypatch, docker: FakeDocker, **kwargs) -> TrainerContainerOperator:
    hook = SimpleNamespace(api_client=docker, client_created=True)
    monkeypatch.setattr(TrainerContainerOperator, "hook", property(lambda self: hook))
    kwargs.setdefault("result_parser", str)
    return TrainerContainerOperator(task_id="train", image="abalone-trainer:test", command=["train"], **kwargs)


def run_with_container_output(
    monkeypatch, context, *, logs=None, failure=None, gpu=False, parser=str, docker=None, raises=None
):
    """Fake only the Docker boundary: what the container printed, or how it failed."""
    seen = {}

    def fake_execute(self, ctx):
        seen.update(name=self.container_name, devices=self.device_requests, env=dict(self.environment))
        seen.update(labels=dict(self.labels), command=list(self.command))
        if raises is not None:
            raise raises
        if failure is not None:
            raise DockerContainerFailedException("Docker container failed: {'StatusCode': 1}", logs=failure)
        return logs

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    operator = operator_on(monkeypatch, docker or FakeDocker(), gpu=gpu, result_parser=parser)
    return operator.execute(context), seen


def test_the_result_line_is_parsed(monkeypatch, context):
    payload = (
        '{"run_id": "r", "model_uri": "models:/m-1", "dataset_id": "d", "reused": false, "metrics": '
        '{"test_rmse": 2.1, "test_mae": 1.5, "test_r2": 0.5, "test_mse": 4.41}}'
    )
    result, seen = run_with_container_output(
        monkeypatch, context, logs=["noise", f"ABALONE_RESULT {payload}"], parser=parse_train
    )
    assert result["model_uri"] == "models:/m-1"
    assert seen["name"] == "abalone_retraining-train-manual__1-try1" and seen["devices"] is None


def test_gpu_on_requests_the_hosts_gpus(monkeypatch, context):
    _, seen = run_with_container_output(monkeypatch, context, logs=["ABALONE_RESULT {}"], gpu="True")
    assert seen["devices"][0]["Capabilities"] == [["gpu"]] and seen["devices"][0]["Count"] == -1


def test_worker_environment_reaches_the_container(monkeypatch, context):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    _, seen = run_with_container_output(monkeypatch, context, logs=["ABALONE_RESULT {}"])
    assert seen["env"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"


def test_bad_input_fails_without_retries(monkeypatch, context):
    with pytest.raises(AirflowFailException, match=r"bad input: manifest .* is not valid JSON"):
        run_with_container_output(
            monkeypatch, context, failure=["ABALONE_ERROR bad input: manifest s3://x is not valid JSON"]
        )


def test_other_failures_name_the_trainers_error_and_stay_retryable(monkeypatch, context):
    with pytest.raises(AirflowException, match="train failed: ConnectionError") as caught:
        run_with_container_output(
            monkeypatch, context, failure=["ABALONE_ERROR train failed: ConnectionError: refused"]
        )
    assert not isinstance(caught.value, AirflowFailException)


def test_an_invalid_result_fails_the_task(monkeypatch, context):
    with pytest.raises(AirflowFailException, match="result is invalid"):
        run_with_container_output(monkeypatch, context, logs=["ABALONE_RESULT {}"], parser=parse_train)
    with pytest.raises(AirflowException, match="printed no ABALONE_RESULT"):
        run_with_container_output(monkeypatch, context, logs=["just noise"])


def labelled(container_id: str, name: str, try_number: int, run_id: str = "manual__1") -> dict:
    labels = container_labels("abalone_retraining", run_id, "train", try_number)
    return {"Id": container_id, "Names": [f"/{name}"], "Labels": labels, "Status": "Up 2 minutes"}


def test_a_try_removes_earlier_tries_containers_found_by_labels(monkeypatch, context):
    context["ti"].try_number = 3
    docker = FakeDocker(
        [
            labelled("a", "renamed-by-someone", 1),
            labelled("b", "abalone_retraining-train-manual__1-try2", 2),
            labelled("c", "abalone_retraining-train-manual__2-try1", 1, run_id="manual__2"),  # another DAG run's
        ]
    )
    _, seen = run_with_container_output(monkeypatch, context, logs=["ABALONE_RESULT {}"], docker=docker)
    assert sorted(docker.removed) == ["a", "b"], "only this task's containers in this DAG run, whatever their names"
    assert seen["labels"]["io.abalone.try_number"] == "3" and seen["labels"]["io.abalone.run_id"] == "manual__1"


def test_a_name_held_by_a_stranger_does_not_fail_the_try(monkeypatch, context):
    name = container_name("abalone_retraining", "train", "manual__1", 1)
    docker = FakeDocker([{"Id": "x", "Names": [f"/{name}"], "Labels": {}, "Status": "Exited (0)"}])
    _, seen = run_with_container_output(monkeypatch, context, logs=["ABALONE_RESULT {}"], docker=docker)
    assert seen["name"].startswith(name + "-") and docker.removed == [], "a container not made by this task is kept"


def test_the_container_is_removed_however_the_try_ends(monkeypatch, context):
    docker = FakeDocker()

    def fake_execute(self, ctx):
        self.container = {"Id": "mine"}
        docker.existing.append({"Id": "mine", "Names": ["/mine"], "Labels": self.labels})
        raise DockerContainerFailedException("failed", logs=["ABALONE_ERROR train failed: boom"])

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    operator = operator_on(monkeypatch, docker, stop_grace_seconds=2)
    with pytest.raises(AirflowException, match="boom"):
        operator.execute(context)
    assert docker.stopped == [("mine", 2)] and docker.removed == ["mine"], "stopped with its grace, then removed"
    operator.on_kill()  # after a timeout Airflow calls on_kill too: the container is already gone
    assert docker.removed == ["mine"]


def test_on_kill_tolerates_a_container_that_is_already_gone(monkeypatch):
    operator = operator_on(monkeypatch, FakeDocker())
    operator.container = {"Id": "gone"}
    operator.on_kill()  # no 404


def test_a_timeout_is_reported_with_its_limit(monkeypatch, context):
    from datetime import timedelta

    from airflow.sdk.exceptions import AirflowTaskTimeout

    def fake_execute(self, ctx):
        raise AirflowTaskTimeout()

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    operator = operator_on(
        monkeypatch,
        FakeDocker(),
        execution_timeout=timedelta(minutes=7),
        timeout_setting="ABALONE_TRAIN_TIMEOUT_MINUTES",
    )
    with pytest.raises(AirflowTaskTimeout, match=r"timed out after 0:07:00 \(ABALONE_TRAIN_TIMEOUT_MINUTES\)"):
        operator.execute(context)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            APIError("500 Server Error", explanation='could not select device driver "" with capabilities: [[gpu]]'),
            "has no NVIDIA runtime",
        ),
        (NotFound("404 Client Error: No such image: abalone-trainer:test"), "is not on the Docker engine"),
    ],
)
def test_configuration_errors_fail_at_once_naming_the_fix(monkeypatch, context, error, expected):
    with pytest.raises(AirflowFailException, match=expected):
        run_with_container_output(monkeypatch, context, raises=error, gpu=True)


def test_an_unreachable_engine_fails_at_once(monkeypatch, context):
    class Unreachable:
        client_created = False

        @property
        def api_client(self):
            raise AirflowException("Failed to establish connection to any given Docker hosts.")

    monkeypatch.setattr(TrainerContainerOperator, "hook", property(lambda self: Unreachable()))
    operator = TrainerContainerOperator(task_id="train", image="i", command=["train"])
    with pytest.raises(AirflowFailException, match=r"cannot reach the Docker engine at \S+ \(ABALONE_DOCKER_URL\)"):
        operator.execute(context)


def test_a_superseded_attempt_is_not_retried(monkeypatch, context):
    with pytest.raises(AirflowFailException, match="superseded"):
        run_with_container_output(monkeypatch, context, failure=["ABALONE_ERROR superseded: attempt try1-x by try2-y"])


def test_each_try_claims_the_fence_before_its_container_starts(monkeypatch, context, tmp_path):
    import json

    monkeypatch.setattr(DockerOperator, "execute", lambda self, ctx: ["ABALONE_RESULT {}"])
    operator = operator_on(monkeypatch, FakeDocker(), fence_store=tmp_path.as_uri())
    operator.execute(context)
    (fence,) = tmp_path.glob("attempts/abalone_retraining/manual__1-*/train.json")
    assert operator.command[:2] == ["--fence-uri", fence.as_uri()]
    attempt = operator.command[3]
    assert attempt.startswith("try1-")
    assert json.loads(fence.read_text())["attempt"] == attempt


def test_the_container_is_confined():
    extra = Hardening().host_config()
    assert extra["init"] and extra["cap_drop"] == ["ALL"] and extra["security_opt"] == ["no-new-privileges:true"]
    assert extra["read_only"] and "/tmp" in extra["tmpfs"] and extra["pids_limit"] > 0
    assert "tmpfs" not in Hardening(read_only=False).host_config()


def test_a_mounted_credentials_file_replaces_the_workers_keys(monkeypatch, context, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-LONG-LIVED")
    monkeypatch.setenv("ABALONE_TRAINER_AWS_CREDENTIALS_FILE", str(credentials))
    seen = {}

    def fake_execute(self, ctx):
        seen.update(private=dict(self._private_environment), env=dict(self.environment), mounts=list(self.mounts))
        return ["ABALONE_RESULT {}"]

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    operator_on(monkeypatch, FakeDocker()).execute(context)
    assert "AWS_ACCESS_KEY_ID" not in seen["private"]
    assert seen["env"]["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/aws-credentials"
    assert seen["mounts"][-1]["ReadOnly"] is True and seen["mounts"][-1]["Source"] == str(credentials)


def test_a_task_stopped_by_airflow_mid_run_says_so(monkeypatch, context):
    docker = FakeDocker()

    def fake_execute(self, ctx):
        self.container = {"Id": "mine"}
        docker.existing.append({"Id": "mine", "Names": ["/mine"], "Labels": self.labels})
        self.on_kill()  # Airflow's SIGTERM handler runs while execute waits on the container
        raise NotFound("404 Client Error: No such container: mine")  # what the provider's wait then gets

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    with pytest.raises(AirflowException, match="stopped by Airflow") as caught:
        operator_on(monkeypatch, docker).execute(context)
    assert not isinstance(caught.value, AirflowFailException)
    assert docker.removed == ["mine"], "removed once, by on_kill"


def test_a_container_created_after_the_task_was_stopped_never_starts(monkeypatch):
    docker = FakeDocker()
    docker.create_container = lambda **kwargs: (
        docker.existing.append({"Id": "late", "Names": ["/late"]}) or {"Id": "late"}
    )
    operator = operator_on(monkeypatch, docker)
    operator.on_kill()
    with pytest.raises(AirflowException, match="before its container started"):
        operator.cli.create_container(image="i")
    assert docker.removed == ["late"]


def test_a_skip_check_skips_before_this_trys_container_or_fence(monkeypatch, context):
    pushed, seen = {}, []
    context["ti"].xcom_push = lambda key, value: pushed.update({key: value})
    monkeypatch.setattr(DockerOperator, "execute", lambda self, ctx: pytest.fail("a container was started"))
    docker = FakeDocker()
    docker.inspect_image = lambda name: {"Id": "sha256:abc", "RepoDigests": [], "Config": {"Labels": {}}}

    def check(inputs, image):
        seen.append((inputs, image["id"]))
        return "unchanged since the champion v1"

    operator = operator_on(
        monkeypatch, docker, skip_check=check, skip_inputs={"dataset_id": "d1"}, fence_store="s3://never/read"
    )
    with pytest.raises(AirflowSkipException, match="unchanged since the champion v1"):
        operator.execute(context)
    assert seen == [({"dataset_id": "d1"}, "sha256:abc")]
    assert pushed == {"skipped": "unchanged since the champion v1"}
    assert [set(query) for query in docker.queries] == [{"label"}], "only the earlier tries' containers were looked up"


def test_a_skip_check_without_a_reason_runs_the_container(monkeypatch, context):
    context["ti"].xcom_push = lambda key, value: pytest.fail("nothing is pushed when the task runs")
    monkeypatch.setattr(DockerOperator, "execute", lambda self, ctx: ["ABALONE_RESULT {}"])
    docker = FakeDocker()
    docker.inspect_image = lambda name: {"Id": "sha256:abc"}
    operator = operator_on(monkeypatch, docker, skip_check=lambda inputs, image: None, skip_inputs={})
    assert operator.execute(context) == "{}"
