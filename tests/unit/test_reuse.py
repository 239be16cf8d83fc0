"""When a night skips training: the champion's recorded dataset, image and hyperparameters against tonight's,
compared against a real MLflow registry (SQLite store)."""

from __future__ import annotations

import dataclasses
import os

import pytest
from mlflow.tracking import MlflowClient

from abalone_contract.constants import TAG_DATASET_ID, TAG_IDEMPOTENCY_KEY
from abalone_contract.hyperparams import HyperParams
from abalone_pipeline.config import Settings
from abalone_pipeline.registry import TAG_TRAINER_IMAGE_ID
from abalone_pipeline.reuse import differences, unchanged_since_champion

IMAGE = {"name": "abalone-trainer:latest", "id": "sha256:" + "a" * 64}
TONIGHT = {
    "dataset_id": "7c4075e67892e879",
    "options": {"force_training": False, "force_reason": None, "dry_run": False},
    "idempotency_key": "abalone_retraining/scheduled__2026-11-02T02:00:00+00:00",
    "hyperparams": {"epochs": "40", "batch_size": "64", "learning_rate": "0.001"},  # rendered Params: strings
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """One SQLite registry for the module (creating one takes seconds); each test names its own model."""
    path = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{path}/mlflow.db"


_models = iter(range(1000))


@pytest.fixture
def settings(registry, tmp_path, monkeypatch) -> Settings:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    configured = Settings.from_env({"ABALONE_MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    return dataclasses.replace(configured, tracking_uri=registry, model_name=f"abalone-{next(_models)}")


def crown(settings: Settings, *, image_id: str | None = IMAGE["id"], key: str = "abalone_retraining/manual__1"):
    """A champion as promote leaves it: a run with the trainer's params, a version with the audit tags."""
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    name = settings.experiment
    experiment = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    run = client.create_run(experiment.experiment_id, tags={TAG_IDEMPOTENCY_KEY: key})
    for name, value in {**HyperParams(epochs=40).as_params(), "dataset_id": TONIGHT["dataset_id"]}.items():
        client.log_param(run.info.run_id, name, value)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(settings.model_name)
    tags = {TAG_DATASET_ID: TONIGHT["dataset_id"], **({TAG_TRAINER_IMAGE_ID: image_id} if image_id else {})}
    source = f"{run.info.artifact_uri}/model"
    version = client.create_model_version(settings.model_name, source, run.info.run_id, tags=tags)
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, version.version)
    return version


def test_the_same_dataset_image_and_hyperparameters_skip_with_the_reason(settings):
    crown(settings)
    reason = unchanged_since_champion(settings, TONIGHT, IMAGE)
    assert reason.startswith("unchanged since the champion v1 (run ")
    assert "7c4075e67892e879" in reason and "sha256:aaaaaaaaaaaa" in reason and "epochs 40" in reason
    assert "force_training" in reason, "it says how to train anyway"


@pytest.mark.parametrize(
    ("tonight", "image"),
    [
        ({**TONIGHT, "dataset_id": "00584a9df0248209"}, IMAGE),
        (TONIGHT, {**IMAGE, "id": "sha256:" + "b" * 64}),
        ({**TONIGHT, "hyperparams": {**TONIGHT["hyperparams"], "epochs": "41"}}, IMAGE),
        ({**TONIGHT, "hyperparams": {**TONIGHT["hyperparams"], "learning_rate": "0.0011"}}, IMAGE),
        ({**TONIGHT, "options": {**TONIGHT["options"], "force_training": True}}, IMAGE),
        ({**TONIGHT, "options": {**TONIGHT["options"], "force_reason": "the feed was bad"}}, IMAGE),
        ({**TONIGHT, "options": {**TONIGHT["options"], "dry_run": True}}, IMAGE),
        (TONIGHT, {**IMAGE, "id": None}),
    ],
    ids=["dataset", "image", "epochs", "learning-rate", "forced", "forced-promotion", "dry-run", "image-without-id"],
)
def test_any_change_or_forcing_trains(settings, tonight, image):
    crown(settings)
    assert unchanged_since_champion(settings, tonight, image) is None


def test_a_night_that_already_trained_trains_again_to_reuse_its_run(settings):
    """A cleared or re-run night whose candidate became the champion: its own run is found, not skipped."""
    crown(settings, key=TONIGHT["idempotency_key"])
    assert unchanged_since_champion(settings, TONIGHT, IMAGE) is None


def test_no_champion_a_champion_without_records_or_mlflow_down_trains(settings, monkeypatch):
    assert unchanged_since_champion(settings, TONIGHT, IMAGE) is None, "no registered model yet"
    crown(settings, image_id=None)  # registered by hand, not by this DAG's promote
    assert unchanged_since_champion(settings, TONIGHT, IMAGE) is None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = dataclasses.replace(settings, tracking_uri="http://127.0.0.1:9")
    assert unchanged_since_champion(down, TONIGHT, IMAGE) is None


def test_the_check_gives_up_on_mlflow_quickly_and_puts_the_workers_settings_back(monkeypatch):
    from abalone_pipeline.reuse import _brief_mlflow_retries

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")  # stricter than the check's 10: kept
    with _brief_mlflow_retries():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    with _brief_mlflow_retries():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_differences_name_each_change_champion_first():
    params = HyperParams(epochs=40).as_params()
    tags = {TAG_DATASET_ID: "d1", TAG_TRAINER_IMAGE_ID: "sha256:1"}
    found = differences(
        tags, params, dataset_id="d2", image_id="sha256:1", hyperparams=HyperParams(epochs=41).as_params()
    )
    assert found == ["dataset: d1 -> d2", "epochs: 40 -> 41"]
    assert differences({}, {}, dataset_id="d", image_id="i", hyperparams={})[0] == "dataset: not recorded -> d"
