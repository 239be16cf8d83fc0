"""Training and scoring log what the registry and the audit need, against a real MLflow store."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from abalone_contract.constants import FEATURES
from abalone_contract.hyperparams import HyperParams
from abalone_trainer import cli
from abalone_trainer.data import load_staged
from abalone_trainer.evaluate import evaluate
from abalone_trainer.train import train_and_log

HPARAMS = HyperParams(epochs=4, patience=2)


@pytest.fixture
def trained(small_manifest_uri, tracking_uri):
    data = load_staged(small_manifest_uri)
    result = train_and_log(
        data,
        HPARAMS,
        experiment="abalone-test",
        idempotency_key="dag/run-1",
        tracking_uri=tracking_uri,
        tags={"airflow.run_id": "run-1"},
    )
    return data, result


def test_the_run_holds_params_metrics_lineage_and_model(trained, tracking_uri):
    data, result = trained
    client = MlflowClient(tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.data.params["epochs"] == "4" and run.data.params["dataset_id"] == data.dataset_id
    assert set(result["metrics"]) == {"test_rmse", "test_mae", "test_r2", "test_mse"}
    assert run.data.metrics["test_rmse"] == pytest.approx(result["metrics"]["test_rmse"])
    assert len(client.get_metric_history(result["run_id"], "loss")) == run.data.metrics["epochs_run"] >= 2
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    test_input = inputs[f"abalone-{data.dataset_id}-test"]
    assert test_input.dataset.source and data.split_uri("test") in test_input.dataset.source
    assert test_input.dataset.digest == data.split_sha256("test")[:32]
    assert run.data.tags["airflow.run_id"] == "run-1"
    validation = data.manifest["validation"]
    assert run.data.metrics["data_valid_rows"] == validation["valid_rows"] == sum(len(f) for f in data.frames.values())
    assert run.data.metrics["data_quarantined_rows"] == validation["quarantined_rows"]
    model = mlflow.pyfunc.load_model(result["model_uri"])
    predictions = model.predict(data.frames["test"][list(FEATURES)].head(3))
    assert len(predictions) == 3
    assert model.metadata.get_input_schema().input_names() == list(FEATURES)
    plots = {artifact.path for artifact in client.list_artifacts(result["run_id"], "plots")}
    assert plots == {"plots/predicted_vs_true.png", "plots/residuals_by_slice.png"}


def test_the_same_key_on_new_data_trains_a_new_candidate(trained, tracking_uri, tmp_path, small_abalone):
    from abalone_pipeline.objectstore import LocalStore
    from abalone_pipeline.staging import stage

    _, first = trained
    fewer = b"\n".join(small_abalone.read_bytes().splitlines()[:-10]) + b"\n"
    other = load_staged(stage(fewer, "changed.data", LocalStore(tmp_path / "other")).manifest_uri)
    again = train_and_log(
        other, HPARAMS, experiment="abalone-test", idempotency_key="dag/run-1", tracking_uri=tracking_uri
    )
    assert not again["reused"] and again["run_id"] != first["run_id"] and again["dataset_id"] == other.dataset_id


def test_a_rerun_of_the_same_key_reuses_the_finished_run(trained, small_manifest_uri, tracking_uri):
    data, first = trained
    again = train_and_log(
        data, HPARAMS, experiment="abalone-test", idempotency_key="dag/run-1", tracking_uri=tracking_uri
    )
    assert again["reused"] and again["run_id"] == first["run_id"] and again["model_uri"] == first["model_uri"]
    assert len(MlflowClient(tracking_uri).search_runs([first["experiment_id"]])) == 1


def run_evaluate(data, result, tracking_uri, **kwargs):
    return evaluate(
        data,
        candidate_model_uri=result["model_uri"],
        candidate_run_id=result["run_id"],
        model_name="abalone-test",
        tracking_uri=tracking_uri,
        resamples=500,
        **kwargs,
    )


def test_evaluate_without_and_with_a_champion(trained, tracking_uri):
    data, result = trained
    alone = run_evaluate(data, result, tracking_uri)
    assert alone["champion"] is None and alone["comparison"] is None
    assert alone["candidate"]["metrics"]["test_rmse"] == pytest.approx(result["metrics"]["test_rmse"], rel=1e-6)
    assert set(alone["baselines"]) == {"mean", "linear"}
    assert alone["baselines"]["linear"]["test_rmse"] < alone["baselines"]["mean"]["test_rmse"]
    slices = alone["candidate"]["slices"]
    assert sum(slices[f"sex={s}"]["rows"] for s in "MFI") == alone["test_rows"]
    assert sum(slices[name]["rows"] for name in ("rings<=7", "rings=8-11", "rings>=12")) == alone["test_rows"]
    assert alone["prior_runs"]["count"] == 0, "the candidate is not its own history"

    client = MlflowClient(tracking_uri)
    client.create_registered_model("abalone-test")
    version = client.create_model_version("abalone-test", result["model_uri"], run_id=result["run_id"])
    client.set_registered_model_alias("abalone-test", "champion", version.version)
    both = run_evaluate(data, result, tracking_uri)
    assert both["champion"]["version"] == str(version.version)
    assert both["champion"]["metrics"] == pytest.approx(both["candidate"]["metrics"])
    assert both["comparison"]["overall"]["rmse_diff"] == pytest.approx(0.0, abs=0), (
        "the same model: every resample ties"
    )
    assert both["comparison"]["overall"]["intervals"]["0.95"] == [0.0, 0.0]
    assert set(both["comparison"]["slices"]) == set(slices)


def test_an_unloadable_champion_is_reported_not_raised(trained, tracking_uri):
    data, result = trained
    client = MlflowClient(tracking_uri)
    client.create_registered_model("abalone-test")
    version = client.create_model_version("abalone-test", "/nonexistent/model", run_id=result["run_id"])
    client.set_registered_model_alias("abalone-test", "champion", version.version)
    evaluation = run_evaluate(data, result, tracking_uri)
    assert evaluation["champion"]["version"] == str(version.version)
    assert evaluation["champion"]["error"] and "metrics" not in evaluation["champion"]
    assert evaluation["comparison"] is None


def test_prior_runs_prefer_the_same_dataset(trained, tracking_uri, tmp_path, small_abalone):
    from abalone_pipeline.objectstore import LocalStore
    from abalone_pipeline.staging import stage

    data, first = trained
    second = train_and_log(
        data, HPARAMS, experiment="abalone-test", idempotency_key="dag/run-2", tracking_uri=tracking_uri
    )
    prior = run_evaluate(data, second, tracking_uri)["prior_runs"]
    assert prior["basis"] == "same dataset" and prior["count"] == 1 and prior["run_ids"] == [first["run_id"]]
    fewer = b"\n".join(small_abalone.read_bytes().splitlines()[:-10]) + b"\n"
    other = load_staged(stage(fewer, "changed.data", LocalStore(tmp_path / "other")).manifest_uri)
    third = train_and_log(
        other, HPARAMS, experiment="abalone-test", idempotency_key="dag/run-3", tracking_uri=tracking_uri
    )
    prior = run_evaluate(other, third, tracking_uri)["prior_runs"]
    assert prior["basis"] == "any dataset" and prior["count"] == 2


def test_cli_prints_one_result_line(small_manifest_uri, tracking_uri, capsys):
    code = cli.main(
        [
            "--tracking-uri",
            tracking_uri,
            "--manifest-uri",
            small_manifest_uri,
            "train",
            "--idempotency-key",
            "k",
            "--epochs",
            "2",
            "--patience",
            "1",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[-1].startswith("ABALONE_RESULT ")
    assert json.loads(lines[-1].removeprefix("ABALONE_RESULT "))["metrics"]["test_rmse"] > 0


def test_cli_bad_input_exits_3_with_a_named_error(tmp_path, tracking_uri, capsys):
    code = cli.main(
        [
            "--tracking-uri",
            tracking_uri,
            "--manifest-uri",
            str(tmp_path / "missing.json"),
            "train",
            "--idempotency-key",
            "k",
        ]
    )
    assert code == cli.EXIT_BAD_INPUT
    assert "ABALONE_ERROR bad input: cannot read" in capsys.readouterr().out


def test_cli_without_a_tracking_uri_says_so_on_its_error_line(small_manifest_uri, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = cli.main(["--manifest-uri", small_manifest_uri, "train", "--idempotency-key", "k"])
    assert code == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().out.strip() == (
        "ABALONE_ERROR bad input: no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI"
    )


def test_cli_rejects_bad_arguments(small_manifest_uri):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--manifest-uri", small_manifest_uri, "train", "--idempotency-key", "k", "--epochs", "0"])
    assert caught.value.code == 2  # argparse's usage error, before anything runs


def test_a_killed_training_is_marked_and_the_retry_trains_afresh(small_manifest_uri, tracking_uri, tmp_path):
    """SIGKILL mid-training (as when a container is killed), then retry with the same key."""
    import os
    import signal
    import subprocess
    import sys
    import time

    client = MlflowClient(tracking_uri)
    command = [sys.executable, "-m", "abalone_trainer.cli", "--tracking-uri", tracking_uri,
               "--manifest-uri", small_manifest_uri, "train", "--experiment", "abalone-test",
               "--idempotency-key", "dag/run-killed", "--epochs", "1000", "--patience", "1000"]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("abalone-test")
            running = experiment and client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
            if running and client.get_metric_history(running[0].info.run_id, "loss"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the training subprocess never started logging epochs")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    killed_id = running[0].info.run_id

    data = load_staged(small_manifest_uri)
    result = train_and_log(
        data, HPARAMS, experiment="abalone-test", idempotency_key="dag/run-killed", tracking_uri=tracking_uri
    )
    assert not result["reused"] and result["run_id"] != killed_id
    assert client.get_run(killed_id).info.status == "KILLED"
    assert client.get_run(result["run_id"]).info.status == "FINISHED"


class NaNModel(mlflow.pyfunc.PythonModel):
    """A champion that loads but predicts NaN: as unusable as one that does not load."""

    def predict(self, context, model_input, params=None):
        return [float("nan")] * len(model_input)


def test_a_champion_predicting_nan_is_unscorable_and_a_nan_run_is_no_prior(trained, tracking_uri):
    data, result = trained
    client = MlflowClient(tracking_uri)
    with mlflow.start_run(experiment_id=result["experiment_id"]) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=NaNModel())
        mlflow.log_metric("test_rmse", float("nan"))
    client.create_registered_model("abalone-test")
    version = client.create_model_version("abalone-test", info.model_uri, run_id=run.info.run_id)
    client.set_registered_model_alias("abalone-test", "champion", version.version)
    evaluation = run_evaluate(data, result, tracking_uri)
    assert "non-finite values for" in evaluation["champion"]["error"] and evaluation["comparison"] is None
    assert evaluation["prior_runs"]["count"] == 0, "the NaN run must not count, nor make the median NaN"


def fence_at(tmp_path, attempt: str | None) -> str:
    path = tmp_path / "fence.json"
    path.write_text(json.dumps({"attempt": attempt}))
    return path.as_uri()


def runs_of(tracking_uri: str, key: str) -> list:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("abalone-test")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`abalone.idempotency_key` = '{key}'")


def test_a_superseded_attempt_stops_at_its_next_epoch_and_never_finishes_its_run(
    small_manifest_uri, tracking_uri, tmp_path, monkeypatch
):
    from abalone_trainer import train as train_module
    from abalone_trainer.fence import Fence, Superseded

    uri = fence_at(tmp_path, "try1-aaaa")
    epochs_seen = []
    original_fit = train_module.fit

    def fit_then_supersede(data, hparams, on_epoch_end=None):
        def hook(epoch, logs):
            epochs_seen.append(epoch)
            if epoch == 1:  # a newer try claims the task while this one trains
                fence_at(tmp_path, "try2-bbbb")
            on_epoch_end(epoch, logs)

        return original_fit(data, hparams, on_epoch_end=hook)

    monkeypatch.setattr(train_module, "fit", fit_then_supersede)
    with pytest.raises(Superseded, match="try1-aaaa was superseded by try2-bbbb"):
        train_and_log(
            load_staged(small_manifest_uri),
            HyperParams(epochs=50, patience=50),
            experiment="abalone-test",
            idempotency_key="dag/fenced",
            tracking_uri=tracking_uri,
            fence=Fence(uri, "try1-aaaa", interval=0),
        )
    assert epochs_seen == [0, 1], "it stopped at the first check after the fence moved"
    (run,) = runs_of(tracking_uri, "dag/fenced")
    assert run.info.status == "KILLED", "a superseded attempt never finishes its run"
    assert run.data.tags["abalone.attempt"] == "try1-aaaa"
    assert mlflow.active_run() is None


def test_a_run_marked_killed_while_training_is_never_finished(small_manifest_uri, tracking_uri, tmp_path, monkeypatch):
    from abalone_trainer import train as train_module
    from abalone_trainer.fence import Fence, Superseded

    original_fit = train_module.fit

    def fit_then_kill(data, hparams, on_epoch_end=None):
        model_and_history = original_fit(data, hparams, on_epoch_end=on_epoch_end)
        (run,) = runs_of(tracking_uri, "dag/killed")
        MlflowClient(tracking_uri).set_terminated(run.info.run_id, status="KILLED")  # as a newer attempt does
        return model_and_history

    monkeypatch.setattr(train_module, "fit", fit_then_kill)
    with pytest.raises(Superseded, match="marked KILLED"):
        train_and_log(
            load_staged(small_manifest_uri),
            HPARAMS,
            experiment="abalone-test",
            idempotency_key="dag/killed",
            tracking_uri=tracking_uri,
            fence=Fence(fence_at(tmp_path, "try1-aaaa"), "try1-aaaa"),
        )
    assert [run.info.status for run in runs_of(tracking_uri, "dag/killed")] == ["KILLED"]
    assert mlflow.active_run() is None


def test_sigterm_ends_the_run_killed(small_manifest_uri, tracking_uri, monkeypatch):
    from abalone_trainer import train as train_module
    from abalone_trainer.signals import Terminated

    def fit_stopped(data, hparams, on_epoch_end=None):
        raise Terminated("stopped by signal SIGTERM")

    monkeypatch.setattr(train_module, "fit", fit_stopped)
    with pytest.raises(Terminated):
        train_and_log(
            load_staged(small_manifest_uri),
            HPARAMS,
            experiment="abalone-test",
            idempotency_key="dag/terminated",
            tracking_uri=tracking_uri,
        )
    assert [run.info.status for run in runs_of(tracking_uri, "dag/terminated")] == ["KILLED"]


def test_a_fence_that_cannot_be_read_is_tolerated_between_epochs_not_at_the_end(tmp_path):
    from abalone_trainer.fence import Fence, FenceUnreadable

    fence = Fence((tmp_path / "missing.json").as_uri(), "try1-a", interval=0)
    fence.check()  # a periodic check shrugs it off
    with pytest.raises(FenceUnreadable):
        fence.check(required=True)
