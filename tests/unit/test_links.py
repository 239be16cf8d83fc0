"""The links people click: MLflow pages from the browser-facing UI URL, never from the tracking URI."""

from __future__ import annotations

import pytest

from abalone_pipeline.config import ConfigError, Settings
from abalone_pipeline.links import airflow_run_url, run_link, sagemaker_console_url, version_link

ARN = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/abalone"


def test_locally_the_ui_is_the_tracking_server():
    settings = Settings.from_env({"ABALONE_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000/"})
    assert settings.mlflow_ui_url == "http://127.0.0.1:5000"
    assert run_link(settings, "abc") == "http://127.0.0.1:5000/#/runs/abc"
    assert run_link(settings, "abc", "7", "artifacts/gate/report.md") == (
        "http://127.0.0.1:5000/#/experiments/7/runs/abc/artifacts/gate/report.md"
    )
    assert version_link(settings, "4") == "http://127.0.0.1:5000/#/models/abalone-rings/versions/4"
    assert version_link(settings, None) is None


def test_in_compose_links_use_the_published_ui_not_the_service_name():
    settings = Settings.from_env(
        {"ABALONE_MLFLOW_TRACKING_URI": "http://mlflow:5000", "ABALONE_MLFLOW_UI_URL": "http://localhost:5000/"}
    )
    assert run_link(settings, "abc") == "http://localhost:5000/#/runs/abc"


def test_with_a_sagemaker_arn_links_go_to_the_console_unless_a_ui_is_set():
    settings = Settings.from_env({"ABALONE_MLFLOW_TRACKING_URI": ARN})
    assert settings.mlflow_ui_url is None
    console = "https://eu-west-1.console.aws.amazon.com/sagemaker/home?region=eu-west-1#/mlflow"
    assert run_link(settings, "abc") == version_link(settings, "4") == console
    with_ui = Settings.from_env({"ABALONE_MLFLOW_TRACKING_URI": ARN, "ABALONE_MLFLOW_UI_URL": "https://mlflow.example"})
    assert run_link(with_ui, "abc") == "https://mlflow.example/#/runs/abc"
    assert sagemaker_console_url("arn:aws-cn:sagemaker:cn-north-1:1:mlflow-tracking-server/x").startswith(
        "https://cn-north-1.console.amazonaws.cn/"
    )
    assert sagemaker_console_url("http://mlflow:5000") is None


def test_a_ui_url_must_be_one_a_browser_opens():
    with pytest.raises(ConfigError, match="ABALONE_MLFLOW_UI_URL"):
        Settings.from_env({"ABALONE_MLFLOW_UI_URL": "mlflow:5000"})


def test_the_airflow_run_link_quotes_the_run_id():
    url = airflow_run_url("http://localhost:8080", "abalone_retraining", "manual__2026-12-01T02:00:00+00:00")
    assert url == "http://localhost:8080/dags/abalone_retraining/runs/manual__2026-12-01T02%3A00%3A00%2B00%3A00"
