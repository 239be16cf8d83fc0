from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from abalone_pipeline.operators import TrainerContainerOperator, as_bool, container_name
from abalone_pipeline.results import parse_train


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


def run_with_container_output(monkeypatch, context, *, logs=None, failure=None, gpu=False, parser=str):
    """Fake only the Docker boundary: what the container printed, or how it failed."""
    seen = {}

    def fake_execute(self, ctx):
        seen.update(name=self.container_name, devices=self.device_requests, env=dict(self.environment))
        if failure is not None:
            raise DockerContainerFailedException("Docker container failed: {'StatusCode': 1}", logs=failure)
        return logs

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    operator = TrainerContainerOperator(
        task_id="train", image="abalone-trainer:test", command=["train"], gpu=gpu, result_parser=parser
    )
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
