"""The whole DAG with a SageMaker managed MLflow ARN as the tracking URI.

The sagemaker-mlflow plugin, installed on the Airflow side and in the trainer image, turns the ARN into a
SigV4-signed REST client; SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT sends its requests to a recording proxy in front
of the local MLflow server, so the test sees what SageMaker would receive, and from which process.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .conftest import (
    ARN_ARTIFACT_ROOT,
    ARN_EXPERIMENT,
    ARN_MODEL,
    ARN_SESSION_TOKEN,
    ARTIFACT_BUCKET,
    AWS_ENV,
    SAGEMAKER_ARN,
)

LOGICAL_DATE = "2026-10-01T02:00:00+00:00"
RUN_ID = f"manual__{LOGICAL_DATE}"
# As test_pipeline.py's first run: enough epochs for the first candidate of a new model to be promoted, so
# the promote task's registry writes (model, version, alias) go through the plugin too, not only run tags.
CONF = {"epochs": 40}
REGION = SAGEMAKER_ARN.split(":")[3]
REGISTRY_PATHS = ("/api/2.0/mlflow/registered-models", "/api/2.0/mlflow/model-versions")


@pytest.fixture(scope="module")
def arn_run(arn_airflow, sigv4_proxy, tmp_path_factory):
    """One DAG run; the requests the proxy recorded during it (also written to requests.jsonl beside the log)."""
    mark = len(sigv4_proxy.requests)
    result = arn_airflow.dags_test(LOGICAL_DATE, CONF)
    recorded = sigv4_proxy.requests_since(mark)
    out = tmp_path_factory.mktemp("sagemaker-arn")
    (out / "dag-test.log").write_text(result.output)
    with (out / "requests.jsonl").open("w") as lines:
        for r in recorded:
            summary = {"method": r.method, "path": r.path, "status": r.status, "headers": r.headers}
            lines.write(json.dumps({**summary, "pid": r.peer.pid, "container": r.peer.container_id}) + "\n")
    assert result.returncode == 0, f"see {out}/dag-test.log\n{result.output[-8000:]}"
    return recorded


@pytest.fixture(scope="module")
def upstream(mlflow_server):
    """The MLflow server itself, not through the proxy or the plugin."""
    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


def calls(requests) -> Counter:
    return Counter(f"{r.method} {r.path}" for r in requests)


def test_the_run_and_the_promotion_reached_the_tracking_server(arn_run, upstream, s3):
    experiment = upstream.get_experiment_by_name(ARN_EXPERIMENT)
    (run,) = upstream.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["airflow.run_id"] == RUN_ID
    assert run.data.params["epochs"] == str(CONF["epochs"])
    assert {"test_rmse", "test_mae", "test_r2"} <= set(run.data.metrics)
    assert run.info.artifact_uri.startswith(f"{ARN_ARTIFACT_ROOT}/")
    assert run.data.tags["abalone.gate.decision"] == "promoted"

    version = upstream.get_model_version_by_alias(ARN_MODEL, "champion")
    assert version.run_id == run.info.run_id
    assert run.data.tags["abalone.registered_version"] == str(version.version)
    # The model was written straight to the S3 artifact store, as SageMaker's clients do.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACT_BUCKET, Prefix="sagemaker-arn/").get("Contents", [])]
    assert any(key.endswith("/MLmodel") for key in keys), keys


def test_the_trainer_containers_and_the_airflow_worker_both_went_through_the_proxy(arn_run):
    unknown = [f"{r.method} {r.path}" for r in arn_run if r.peer.pid is None]
    assert not unknown, f"the proxy could not tell which process sent {unknown}"
    containers = [r for r in arn_run if r.peer.in_container]
    worker = [r for r in arn_run if not r.peer.in_container]

    # train and evaluate each run in a container of their own.
    assert len({r.peer.container_id for r in containers}) == 2
    trainer_calls = calls(containers)
    for call in (
        "POST /api/2.0/mlflow/runs/create",
        "POST /api/2.0/mlflow/runs/log-batch",
        "POST /api/2.0/mlflow/runs/log-inputs",
        "POST /api/2.0/mlflow/logged-models",
        "POST /api/2.0/mlflow/runs/update",
    ):
        assert trainer_calls[call], (call, trainer_calls)

    worker_calls = calls(worker)
    for call in (
        "POST /api/2.0/mlflow/registered-models/create",
        "POST /api/2.0/mlflow/model-versions/create",
        "POST /api/2.0/mlflow/registered-models/alias",
        "POST /api/2.0/mlflow/runs/log-batch",
    ):
        assert worker_calls[call], (call, worker_calls)
    # The candidate's decision tags go in one batch, straight after the alias move.
    batches = [json.loads(r.body) for r in worker if r.path == "/api/2.0/mlflow/runs/log-batch" and r.status == 200]
    assert {"key": "abalone.gate.decision", "value": "promoted"} in batches[-1]["tags"]
    # Only the promote task writes to the registry; the trainer reads the champion.
    registry_writes = [
        f"{r.method} {r.path}" for r in containers if r.method != "GET" and r.path.startswith(REGISTRY_PATHS)
    ]
    assert not registry_writes


def test_every_api_request_is_signed_for_sagemaker_mlflow(arn_run):
    api = [r for r in arn_run if r.path.startswith(("/api/", "/ajax-api/"))]
    assert api
    for request in api:
        what = f"{request.method} {request.path} from pid {request.peer.pid}"
        signature = request.sigv4()
        assert signature is not None, f"{what}: Authorization={request.headers.get('Authorization')!r}"
        assert signature["key"] == AWS_ENV["AWS_ACCESS_KEY_ID"], what
        assert signature["service"] == "sagemaker-mlflow", what
        assert signature["region"] == REGION, what
        assert request.headers["X-Amz-Date"].startswith(signature["date"]), what
        assert {"host", "x-amz-date", "x-amz-security-token"} <= set(signature["signed"].split(";")), what
        assert request.headers["X-Amz-Security-Token"] == ARN_SESSION_TOKEN, what
        # SageMaker routes a request to its tracking server by this header.
        assert request.headers.get("x-mlflow-sm-tracking-server-arn") == SAGEMAKER_ARN, what
        assert request.status is not None and request.status < 500, f"{what}: HTTP {request.status}"


def test_artifacts_bypass_the_tracking_server(arn_run):
    """With an ARN, artifacts go to the run's s3:// artifact URI directly (SigV4 for s3, not sagemaker-mlflow):
    MLflow refuses mlflow-artifacts:/ URIs unless the tracking URI is http(s), so nothing may use the proxy."""
    assert not [r.path for r in arn_run if r.path.startswith("/api/2.0/mlflow-artifacts/")]


def test_a_proxied_artifact_uri_cannot_be_used_with_an_arn():
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    with pytest.raises(MlflowException, match="tracking URI must be a valid http or https URI"):
        MlflowArtifactsRepository("mlflow-artifacts:/1/abc/artifacts", tracking_uri=SAGEMAKER_ARN)
