from __future__ import annotations

import pytest

from abalone_pipeline.config import ConfigError, Settings


def test_defaults_are_the_embedded_stack():
    settings = Settings.from_env({})
    assert settings.tracking_uri == "http://127.0.0.1:5000"
    assert settings.object_store_uri.startswith("file://") and settings.local_store_root is not None
    assert settings.gpu is False and settings.train_queue == "gpu"


def test_production_settings_come_from_the_environment():
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/prod"
    settings = Settings.from_env(
        {
            "ABALONE_MLFLOW_TRACKING_URI": arn,
            "ABALONE_OBJECT_STORE_URI": "s3://ml-data/abalone/",
            "ABALONE_TRAINER_IMAGE": "123.dkr.ecr.eu-west-1.amazonaws.com/abalone-trainer:gpu",
            "ABALONE_GPU": "true",
            "ABALONE_GATE_MAX_TEST_RMSE": "2.3",
            "ABALONE_TASK_RETRIES": "3",
        }
    )
    assert settings.tracking_uri == arn
    assert settings.object_store_uri == "s3://ml-data/abalone" and settings.local_store_root is None
    assert settings.gpu is True and settings.max_test_rmse == pytest.approx(2.3) and settings.task_retries == 3


def test_a_local_store_path_with_spaces_is_decoded(tmp_path):
    root = tmp_path / "my store"
    assert Settings.from_env({"ABALONE_OBJECT_STORE_URI": root.as_uri()}).local_store_root == root


def test_mlflow_tracking_uri_is_a_fallback():
    assert (
        Settings.from_env({"MLFLOW_TRACKING_URI": "https://mlflow.internal"}).tracking_uri == "https://mlflow.internal"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ABALONE_GPU", "maybe", "ABALONE_GPU='maybe' is not a boolean"),
        ("ABALONE_GATE_MAX_TEST_RMSE", "high", "is not a number"),
        ("ABALONE_GATE_MAX_TEST_RMSE", "-1", "must be positive"),
        ("ABALONE_MLFLOW_TRACKING_URI", "sqlite:///x.db", "http\\(s\\)"),
        ("ABALONE_OBJECT_STORE_URI", "gs://bucket", "s3://bucket/prefix"),
        ("ABALONE_TASK_RETRIES", "many", "not a whole number"),
        ("ABALONE_CHAMPION_ALIAS", "v3", "reserved by MLflow"),
    ],
)
def test_malformed_settings_name_the_variable(name, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})
