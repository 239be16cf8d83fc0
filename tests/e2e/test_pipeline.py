"""The whole DAG, twice and again, against real services; then bad input on the same path."""

from __future__ import annotations

import hashlib
import json

import pytest
from mlflow.tracking import MlflowClient

from abalone_pipeline.config import BUNDLED_DATA

from .conftest import ARTIFACT_BUCKET, STAGING_BUCKET, free_port

MODEL = "abalone-e2e"
RUN_1 = "2026-11-01T02:00:00+00:00"
RUN_2 = "2026-11-02T02:00:00+00:00"
FAST = {"epochs": 40}


@pytest.fixture(scope="module")
def client(mlflow_server):
    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


def versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


def champion(client) -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL, "champion").version)
    except Exception:
        return None


def runs(client, experiment="abalone-e2e"):
    experiment = client.get_experiment_by_name(experiment)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def assert_succeeded(result):
    assert result.returncode == 0, result.output[-6000:]


@pytest.fixture(scope="module")
def first_run(airflow, s3):
    """Run 1 stages from an s3:// source; nothing is registered before it."""
    s3.put_object(Bucket=STAGING_BUCKET, Key="incoming/abalone.data", Body=BUNDLED_DATA.read_bytes())
    result = airflow.dags_test(RUN_1, {**FAST, "source_uri": f"s3://{STAGING_BUCKET}/incoming/abalone.data"})
    assert_succeeded(result)
    return result


@pytest.fixture(scope="module")
def second_run(first_run, airflow):
    result = airflow.dags_test(RUN_2, FAST)
    assert_succeeded(result)
    return result


def test_staged_objects_match_their_manifest(first_run, s3):
    listing = s3.list_objects_v2(Bucket=STAGING_BUCKET, Prefix="pipeline/datasets/abalone/")["Contents"]
    manifests = [o["Key"] for o in listing if o["Key"].endswith("manifest.json")]
    assert len(manifests) == 1
    manifest = json.loads(s3.get_object(Bucket=STAGING_BUCKET, Key=manifests[0])["Body"].read())
    assert manifest["source_uri"] == f"s3://{STAGING_BUCKET}/incoming/abalone.data"
    assert manifest["source_sha256"] == hashlib.sha256(BUNDLED_DATA.read_bytes()).hexdigest()
    for split in ("train", "validation", "test"):
        entry = manifest["splits"][split]
        assert entry["uri"] == f"s3://{STAGING_BUCKET}/pipeline/{entry['key']}"
        body = s3.get_object(Bucket=STAGING_BUCKET, Key=f"pipeline/{entry['key']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]


def test_the_mlflow_run_records_everything(first_run, client, s3):
    (run,) = runs(client)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "40" and run.data.params["batch_size"] == "32"
    assert {"test_rmse", "test_mae", "test_r2", "test_mse"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == run.data.metrics["epochs_run"] > 1
    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert {"training", "validation", "testing"} <= contexts
    assert all(STAGING_BUCKET in d.dataset.source for d in run.inputs.dataset_inputs)
    assert run.data.tags["airflow.run_id"] == f"manual__{RUN_1}"
    assert run.outputs.model_outputs, "the run logged no model"
    artifacts = s3.list_objects_v2(Bucket=ARTIFACT_BUCKET).get("KeyCount", 0)
    assert artifacts > 0, "the model's artifacts are not in the S3 artifact store"


def test_the_first_candidate_becomes_champion(first_run, client):
    assert versions(client) == ["1"] and champion(client) == "1"
    version = client.get_model_version(MODEL, "1")
    assert version.tags["airflow.run_id"] == f"manual__{RUN_1}"
    assert version.tags["abalone.gate.decision"] == "promoted"
    assert version.run_id == runs(client)[0].info.run_id


def test_the_second_run_is_judged_against_the_first_champion(second_run, client):
    first, second = runs(client)
    assert second.data.tags["abalone.dataset_id"] == first.data.tags["abalone.dataset_id"]
    reasons = second.data.tags["abalone.gate.reasons"]
    assert f"champion v1 test_rmse {first.data.metrics['test_rmse']:.4f}" in reasons
    assert second.data.tags["abalone.gate.decision"] in ("promoted", "rejected")


def test_rerunning_a_finished_run_adds_no_version(second_run, airflow, client):
    before_versions, before_runs, before_champion = versions(client), len(runs(client)), champion(client)
    assert_succeeded(airflow.dags_test(RUN_1, FAST))
    assert versions(client) == before_versions
    assert len(runs(client)) == before_runs
    assert champion(client) == before_champion


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing source", "does not exist"),
        ("wrong column count", "expected 9 columns"),
        ("unreachable MLflow", "Connection refused"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(case, message, second_run, airflow, client, tmp_path):
    before = versions(client), champion(client), len(runs(client))
    conf, env = dict(FAST), {}
    if case == "missing source":
        conf["source_uri"] = str(tmp_path / "nowhere" / "abalone.data")
    elif case == "wrong column count":
        bad = tmp_path / "eight-columns.csv"
        bad.write_text("M,0.455,0.365,0.095,0.514,0.2245,0.101,15\n")
        conf["source_uri"] = str(bad)
    else:
        env = {
            "ABALONE_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        }
    result = airflow.dags_test("2026-11-03T02:00:00+00:00", conf, **env)
    assert result.returncode != 0
    assert message in result.output
    assert (versions(client), champion(client), len(runs(client))) == before
