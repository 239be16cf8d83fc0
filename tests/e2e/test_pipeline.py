"""The whole DAG, twice and again, against real services; then bad input on the same path."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow.tracking import MlflowClient

from abalone_pipeline.config import BUNDLED_DATA

from .conftest import ARTIFACT_BUCKET, STAGING_BUCKET, free_port

MODEL = "abalone-e2e"
RUN_1 = "2026-11-01T02:00:00+00:00"
RUN_2 = "2026-11-02T02:00:00+00:00"
UNCHANGED = "2026-11-02T12:00:00+00:00"
RUN_3 = "2026-11-03T02:00:00+00:00"
RUN_4 = "2026-11-04T02:00:00+00:00"
RUN_5 = "2026-11-05T02:00:00+00:00"
ROLLBACK = "2026-11-05T12:00:00+00:00"
FAST = {"epochs": 40}
# The champion's dataset, image and hyperparameters would skip training: runs that test training force it.
RETRAIN = {**FAST, "force_training": True}


@pytest.fixture(scope="module")
def client(mlflow_server):
    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


def versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


def champion(client, alias: str = "champion") -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL, alias).version)
    except Exception:
        return None


def previous_champion(client) -> str | None:
    return champion(client, "previous_champion")


def artifact(client, run_id: str, path: str) -> str:
    return Path(client.download_artifacts(run_id, path)).read_text()


def summary_of(output: str) -> dict:
    """The summarize task's JSON, as its log shows it."""
    start = output.index("run summary: {") + len("run summary: ")
    return json.JSONDecoder().raw_decode(output[start:])[0]


def task_state(airflow, run_id: str, task_id: str) -> str:
    with sqlite3.connect(Path(airflow.env["AIRFLOW_HOME"]) / "airflow.db") as connection:
        (state,) = connection.execute(
            "select state from task_instance where dag_id = 'abalone_retraining' and run_id = ? and task_id = ?",
            (f"manual__{run_id}", task_id),
        ).fetchone()
    return state


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
def web_source():
    """The bundled data on a local web server: run 2 stages the same rows from an http(s) source."""
    directory = BUNDLED_DATA.parent
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{BUNDLED_DATA.name}"
    server.shutdown()


@pytest.fixture(scope="module")
def second_run(first_run, airflow, web_source):
    allowed = f"{airflow.env['ABALONE_ALLOWED_SOURCES']},{web_source.rsplit('/', 1)[0]}/"
    result = airflow.dags_test(RUN_2, {**RETRAIN, "source_uri": web_source}, ABALONE_ALLOWED_SOURCES=allowed)
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


def test_the_mlflow_run_records_everything(first_run, client, s3, mlflow_server):
    (run,) = runs(client)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "40" and run.data.params["batch_size"] == "64"
    assert {"test_rmse", "test_mae", "test_r2", "test_mse"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == run.data.metrics["epochs_run"] > 1
    contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert {"training", "validation", "testing"} <= contexts
    assert all(STAGING_BUCKET in d.dataset.source for d in run.inputs.dataset_inputs)
    assert run.data.tags["airflow.run_id"] == f"manual__{RUN_1}"
    # The way back from MLflow to the Airflow run's page.
    assert (
        run.data.tags["airflow.run_url"]
        == f"http://localhost:8080/dags/abalone_retraining/runs/manual__{quote(RUN_1, safe='')}"
    )
    # ... clickable in MLflow's UI: the run's description links to it.
    assert run.data.tags["mlflow.note.content"].endswith(f"]({run.data.tags['airflow.run_url']}).")
    # The night at a glance: JSON in the summarize task's log, the links alone on their lines.
    summary = summary_of(first_run.output)
    assert (summary["outcome"], summary["promoted_version"], summary["champion_now"]) == ("promoted", "1", "1")
    assert summary["dataset_id"] == run.data.tags["abalone.dataset_id"]
    assert summary["headline"].startswith("promoted v1: test RMSE ")
    # A link alone: nothing glued to it that a terminal would open with it.
    page = f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert re.search(rf"mlflow_run: {re.escape(page)}\s", first_run.output)
    # The numbers the model page draws its trend from.
    assert {"gate.baseline_mean_rmse", "gate.baseline_linear_rmse"} <= set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "gate")} >= {"gate/report.md", "gate/slices.png"}
    # The bundled data's two rows with Height 0 are quarantined next to the staged splits, and counted.
    assert run.data.metrics["data_quarantined_rows"] == 2 == run.data.metrics["data_quarantined.Height.greater_than"]
    assert run.data.metrics["data_valid_rows"] == 4175
    assert run.data.tags["abalone.quarantine_uri"].endswith(f"{run.data.tags['abalone.dataset_id']}/quarantine.csv")
    assert run.outputs.model_outputs, "the run logged no model"
    artifacts = s3.list_objects_v2(Bucket=ARTIFACT_BUCKET).get("KeyCount", 0)
    assert artifacts > 0, "the model's artifacts are not in the S3 artifact store"


def test_the_first_candidate_becomes_champion_with_an_audit_trail(first_run, client, s3):
    assert versions(client) == ["1"] and champion(client) == "1"
    version = client.get_model_version(MODEL, "1")
    (run,) = runs(client)
    assert version.run_id == run.info.run_id
    tags = version.tags
    assert tags["abalone.airflow_run"] == f"abalone_retraining/manual__{RUN_1}"
    assert tags["airflow.run_id"] == f"manual__{RUN_1}" and tags["airflow.try_number"] == "1"
    assert tags["abalone.gate.decision"] == "promoted" and tags["abalone.previous_champion"] == "none"
    assert tags["abalone.dataset_id"] == run.data.tags["abalone.dataset_id"]
    assert tags["abalone.source_uri"] == f"s3://{STAGING_BUCKET}/incoming/abalone.data"
    assert tags["abalone.source_sha256"] == hashlib.sha256(BUNDLED_DATA.read_bytes()).hexdigest()
    assert tags["abalone.trainer_image_id"].startswith("sha256:")
    assert tags["abalone.code_revision"] not in ("", "unknown")
    assert run.data.tags["abalone.code_revision"] == tags["abalone.code_revision"]
    # The report the version points at says why it is in production.
    assert tags["abalone.gate.report"] == f"runs:/{run.info.run_id}/gate/report.md"
    report = artifact(client, run.info.run_id, "gate/report.md")
    assert report.startswith("# Gate decision: PROMOTED")
    assert "| baseline:linear | pass |" in report and "| champion | n/a |" in report


def test_drift_is_computed_against_the_previous_staged_dataset(first_run, second_run, client):
    assert "drift: not computed (no earlier staged dataset)" in first_run.output
    # Run 2 found run 1's dataset through the Asset's last event: the same rows, so nothing to compare.
    assert "drift: not computed (the same dataset as the previous run)" in second_run.output
    second = runs(client)[1]
    assert json.loads(artifact(client, second.info.run_id, "data/drift.json"))["against"] is None


def test_the_second_run_is_judged_against_the_first_by_the_policy(second_run, client):
    first, second = runs(client)
    assert second.data.tags["abalone.dataset_id"] == first.data.tags["abalone.dataset_id"], "same rows, other source"
    decision = json.loads(artifact(client, second.info.run_id, "gate/decision.json"))
    assert decision["champion_version"] == "1"
    rules = {check["rule"]: check for check in decision["checks"]}
    assert {"improvement", "significance", "slice:sex=M", "slice:rings>=12", "baseline:linear"} <= set(rules)
    # Same data, same settings and a deterministic CPU trainer: the same model, which a tie does not replace.
    assert second.data.metrics["test_rmse"] == pytest.approx(first.data.metrics["test_rmse"], abs=1e-6)
    assert not rules["improvement"].get("passed") and "tie" in rules["improvement"]["detail"]
    assert decision["verdict"] == second.data.tags["abalone.gate.decision"] == "rejected"
    assert versions(client) == ["1"] and champion(client) == "1"


@pytest.fixture(scope="module")
def unchanged_run(second_run, airflow):
    """The champion's dataset (the bundled file's rows), trainer image and hyperparameters again."""
    result = airflow.dags_test(UNCHANGED, FAST)
    assert_succeeded(result)
    return result


def test_an_unchanged_night_skips_training_and_says_why(unchanged_run, airflow, client):
    states = {task: task_state(airflow, UNCHANGED, task) for task in ("train", "evaluate", "gate", "promote")}
    assert states == {"train": "skipped", "evaluate": "skipped", "gate": "success", "promote": "skipped"}
    assert task_state(airflow, UNCHANGED, "summarize") == task_state(airflow, UNCHANGED, "clean_up") == "success"
    assert "train skipped: unchanged since the champion v1 (run " in unchanged_run.output, "the reason in train's log"
    summary = summary_of(unchanged_run.output)
    assert summary["outcome"] == "unchanged" and summary["headline"].startswith("not trained: unchanged since"), summary
    assert summary["dataset_id"] == runs(client)[0].data.tags["abalone.dataset_id"] and summary["champion_now"] == "1"
    assert "mlflow_run" not in summary["links"], "no MLflow run was made"
    assert len(runs(client)) == 2 and versions(client) == ["1"]


@pytest.fixture(scope="module")
def worse_run(unchanged_run, airflow):
    result = airflow.dags_test(RUN_3, {"epochs": 1})
    assert_succeeded(result)  # a rejection is an outcome, not a failure
    return result


def test_a_worse_candidate_is_rejected_and_the_champion_stays(worse_run, client, airflow):
    worse = runs(client)[-1]
    assert worse.data.tags["abalone.gate.decision"] == worse.data.tags["abalone.outcome"] == "rejected"
    # Push only when blessed: the registry task is skipped, so the grid tells this night from a promotion.
    assert task_state(airflow, RUN_3, "promote") == "skipped"
    summary = summary_of(worse_run.output)
    assert summary["outcome"] == "rejected" and summary["champion_now"] == "1" and summary["promoted_version"] is None
    assert "gate/slices.png" in {a.path for a in client.list_artifacts(worse.info.run_id, "gate")}, "drawn aside"
    assert summary["headline"].startswith("rejected: failed ") and "improvement" in summary["headline"]
    decision = json.loads(artifact(client, worse.info.run_id, "gate/decision.json"))
    failed = [check["rule"] for check in decision["checks"] if not check["passed"]]
    assert "improvement" in failed, decision["summary"]
    assert "gate decision: REJECT" in worse_run.output
    assert versions(client) == ["1"] and champion(client) == "1"


@pytest.fixture(scope="module")
def dry_run(worse_run, airflow):
    result = airflow.dags_test(RUN_4, {"epochs": 1, "dry_run": True, "force_promote": True, "force_reason": "try"})
    assert_succeeded(result)
    return result


def test_a_dry_run_evaluates_and_gates_but_never_touches_the_registry(dry_run, client, airflow):
    candidate = runs(client)[-1]
    assert candidate.data.tags["abalone.gate.dry_run"] == "forced"
    assert candidate.data.tags["abalone.outcome"] == "dry_run"
    assert "abalone.gate.decision" not in candidate.data.tags
    assert task_state(airflow, RUN_4, "promote") == "skipped"
    summary = summary_of(dry_run.output)
    # What it would do, and the champion as it really is.
    assert summary["headline"].startswith("dry run: would promote") and summary["champion_now"] == "1"
    assert artifact(client, candidate.info.run_id, "gate/report.md").startswith("# Gate decision: FORCED")
    assert versions(client) == ["1"] and champion(client) == "1"
    assert "DRY RUN" in dry_run.output


@pytest.fixture(scope="module")
def forced_run(dry_run, airflow):
    result = airflow.dags_test(
        RUN_5, {"epochs": 1, "force_promote": True, "force_reason": "e2e: exercising the forced path"}
    )
    assert_succeeded(result)
    return result


def test_a_forced_promotion_is_recorded_with_its_reason(forced_run, client):
    assert versions(client) == ["1", "2"] and champion(client) == "2" and previous_champion(client) == "1"
    assert summary_of(forced_run.output)["headline"].startswith("forced v2 by ")
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["abalone.gate.decision"] == "forced"
    assert tags["abalone.force_reason"] == "e2e: exercising the forced path"
    assert tags["abalone.forced_by"] and tags["abalone.previous_champion"] == "1"
    assert tags["abalone.gate.reasons"].startswith("FORCED by")
    decision = json.loads(artifact(client, client.get_model_version(MODEL, "2").run_id, "gate/decision.json"))
    failed = {check["rule"] for check in decision["checks"] if not check["passed"]}
    assert "improvement" in failed, "forcing does not hide what failed"


def test_forcing_without_a_reason_fails_before_training(forced_run, airflow, client):
    before = len(runs(client))
    result = airflow.dags_test("2026-11-06T02:00:00+00:00", {"force_promote": True})
    assert result.returncode != 0 and "force_promote needs a force_reason" in result.output
    assert len(runs(client)) == before


@pytest.fixture(scope="module")
def rolled_back(forced_run, airflow):
    conf = {"reason": "v2 was forced by the end-to-end test"}
    result = airflow.dags_test(ROLLBACK, conf, dag_id="abalone_rollback")
    assert_succeeded(result)
    again = airflow.dags_test(ROLLBACK, conf, dag_id="abalone_rollback")  # the same DAG run, re-run
    assert_succeeded(again)
    return result


def test_rollback_restores_the_previous_champion_once(rolled_back, client):
    assert champion(client) == "1" and previous_champion(client) is None, "v1 replaced nothing"
    model = client.get_registered_model(MODEL)
    (plan,) = [json.loads(v) for k, v in model.tags.items() if k.startswith("abalone.rollback.")]
    assert (plan["from"], plan["to"], plan["status"]) == ("2", "1", "done")
    assert plan["reason"] == "v2 was forced by the end-to-end test"


def test_retrying_the_promote_task_of_a_finished_run_adds_no_version(rolled_back, airflow, client):
    result = airflow.airflow("tasks", "test", "abalone_retraining", "promote", f"manual__{RUN_5}")
    assert result.returncode == 0, result.output[-4000:]
    assert "was already forced; not acting on it again" in result.output
    assert versions(client) == ["1", "2"] and champion(client) == "1", "the retry must not undo the rollback"


def test_the_history_command_shows_all_of_it(rolled_back, airflow):
    result = subprocess.run(
        [sys.executable, "-m", "abalone_pipeline.history"], env=airflow.env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split()[:4] for line in result.stdout.splitlines()[1:] if line.strip() and "@" not in line]
    assert [row[1:4] for row in rows] == [["promoted", "1", "none"], ["forced", "2", "1"], ["rollback", "1", "2"]]
    assert "e2e: exercising the forced path" in result.stdout and "v2 was forced" in result.stdout
    assert f"{MODEL}@champion = v1" in result.stdout


def test_each_stage_updates_the_staged_dataset_asset(second_run, airflow, client):
    database = Path(airflow.env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(database) as connection:
        events = connection.execute(
            "select a.name, e.extra from asset_event e join asset a on a.id = e.asset_id order by e.id"
        ).fetchall()
    assert [name for name, _ in events[:2]] == ["abalone_staged_dataset"] * 2
    extra = json.loads(events[0][1])
    assert extra["dataset_id"] == runs(client)[0].data.tags["abalone.dataset_id"]
    assert extra["manifest_uri"].endswith(f"{extra['dataset_id']}/manifest.json")


def test_rerunning_a_finished_run_adds_no_version(second_run, airflow, client):
    before_versions, before_runs, before_champion = versions(client), len(runs(client)), champion(client)
    # Without force_training: the champion is this run's own candidate, which a re-run reuses, not skips.
    result = airflow.dags_test(RUN_1, FAST)
    assert_succeeded(result)
    # The night's own decision, not the candidate judged again against itself (it may be the champion now).
    summary = summary_of(result.output)
    assert summary["headline"].startswith("promoted v1: ") and summary["gate_verdict"] == "promoted", summary
    assert versions(client) == before_versions
    assert len(runs(client)) == before_runs
    assert champion(client) == before_champion


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing source", "does not exist"),
        ("disallowed source", "source /etc/passwd is not allowed"),
        ("gpu without the NVIDIA runtime", "has no NVIDIA runtime"),
        ("wrong column count", "expected 9 columns"),
        ("unreachable MLflow", "Connection refused"),
        ("staged data altered", "changed after staging"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(case, message, second_run, airflow, client, tmp_path, s3):
    before = versions(client), champion(client), len(runs(client))
    conf, env = dict(RETRAIN), {}  # forced: the champion's own settings would skip the training that fails
    restore = None
    if case == "staged data altered":
        # The bundled data's dataset is staged; someone edits its train split in the bucket afterwards.
        listing = s3.list_objects_v2(Bucket=STAGING_BUCKET, Prefix="pipeline/datasets/abalone/")["Contents"]
        (key,) = [o["Key"] for o in listing if o["Key"].endswith("/train.csv")]
        original = s3.get_object(Bucket=STAGING_BUCKET, Key=key)["Body"].read()
        s3.put_object(Bucket=STAGING_BUCKET, Key=key, Body=original.replace(b"\nM,", b"\nF,", 1))
        restore = (key, original)
    elif case == "disallowed source":
        conf["source_uri"] = "/etc/passwd"
    elif case == "gpu without the NVIDIA runtime":
        runtimes = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
        if "nvidia" in runtimes.stdout:
            pytest.skip("this Docker engine has the NVIDIA runtime")
        conf["gpu"] = True
    elif case == "missing source":
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
    try:
        result = airflow.dags_test("2026-11-09T02:00:00+00:00", conf, **env)
    finally:
        if restore:
            s3.put_object(Bucket=STAGING_BUCKET, Key=restore[0], Body=restore[1])
    assert result.returncode != 0
    assert message in result.output
    assert "root:" not in result.output, "a refused source is named, never read"
    assert 'ABALONE_FAILURE {"dag_id": "abalone_retraining"' in result.output, "the run's failure notifier fired"
    # The failed task's own notification carries the reason, in one line (the same text goes to SNS).
    failures = [line for line in result.output.splitlines() if "ABALONE_FAILURE {" in line]
    assert any('"task_id": "' in line and message in line for line in failures), failures
    assert (versions(client), champion(client), len(runs(client))) == before
