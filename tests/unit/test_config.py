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
            "ABALONE_GATE_POLICY": '{"max_rmse": 2.3, "statistical_rule": "require_significantly_better"}',
            "ABALONE_PREVIOUS_ALIAS": "rollback-target",
            "ABALONE_TASK_RETRIES": "3",
        }
    )
    assert settings.tracking_uri == arn
    assert settings.object_store_uri == "s3://ml-data/abalone" and settings.local_store_root is None
    assert settings.gpu is True and settings.task_retries == 3
    assert settings.gate_policy.max_rmse == pytest.approx(2.3)
    assert settings.gate_policy.statistical_rule == "require_significantly_better"
    assert settings.gate_policy.slice_tolerance == Settings().gate_policy.slice_tolerance, "others keep defaults"
    assert settings.previous_alias == "rollback-target"


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
        ("ABALONE_GATE_POLICY", "{max_rmse: 2}", "ABALONE_GATE_POLICY is not a valid gate policy"),
        ("ABALONE_GATE_POLICY", '{"max_rmse": -1}', "max_rmse must be > 0"),
        ("ABALONE_GATE_POLICY", '{"ceiling": 2}', "unknown gate policy keys"),
        ("ABALONE_GATE_POLICY", '{"min_prior_runs": "3"}', "min_prior_runs must be a whole number, got '3'"),
        ("ABALONE_GATE_POLICY", "[1]", "expected a JSON object"),
        ("ABALONE_PREVIOUS_ALIAS", "champion", "must differ"),
        ("ABALONE_PREVIOUS_ALIAS", "prev alias", "not a valid alias"),
        ("ABALONE_BOOTSTRAP_RESAMPLES", "999", "between 1000 and 100000"),
        ("ABALONE_MAX_SOURCE_BYTES", "0", "must be positive"),
        ("ABALONE_MAX_SOURCE_BYTES", "1G", "not a whole number"),
        ("ABALONE_STAGING_WORKERS", "0", "between 1 and 64"),
        ("ABALONE_STAGING_WORKERS", "two", "not a whole number"),
        ("ABALONE_EVAL_SLICES", "sex,rings", "ABALONE_EVAL_SLICES='sex,rings'"),
        ("ABALONE_EVAL_SLICES", "rings:", "rings:<increasing upper edges>"),
        ("ABALONE_MLFLOW_TRACKING_URI", "sqlite:///x.db", "http\\(s\\)"),
        ("ABALONE_OBJECT_STORE_URI", "gs://bucket", "s3://bucket/prefix"),
        ("ABALONE_TASK_RETRIES", "many", "not a whole number"),
        ("ABALONE_CHAMPION_ALIAS", "v3", "reserved by MLflow"),
        ("ABALONE_SCHEDULE", "every night", "use a cron expression"),
        ("ABALONE_MAX_ACTIVE_RUNS", "0", "between 1 and 16"),
        ("ABALONE_SNS_TOPIC_ARN", "ml-alerts", "an SNS topic ARN"),
    ],
)
def test_malformed_settings_name_the_variable(name, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})


@pytest.mark.parametrize("slices", ["none", "sex", "rings:7,11", "sex;rings:5", "rings:9;sex"])
def test_slice_settings_the_trainer_accepts_pass(slices):
    assert Settings.from_env({"ABALONE_EVAL_SLICES": slices}).eval_slices == slices


def test_schedule_and_concurrency_are_configuration():
    assert (Settings().schedule, Settings().max_active_runs) == ("0 2 * * *", 1)
    settings = Settings.from_env({"ABALONE_SCHEDULE": "none", "ABALONE_MAX_ACTIVE_RUNS": "2"})
    assert (settings.schedule, settings.max_active_runs) == (None, 2)
    assert Settings.from_env({"ABALONE_SCHEDULE": "30 1 * * 1-5"}).schedule == "30 1 * * 1-5"
    assert Settings.from_env({"ABALONE_SCHEDULE": "@daily"}).schedule == "@daily"


def test_the_trainer_confinement_and_timeouts_are_settings():
    settings = Settings.from_env(
        {
            "ABALONE_TRAINER_USER": "image",
            "ABALONE_TRAINER_MEMORY": "none",
            "ABALONE_TRAINER_CPUS": "3.5",
            "ABALONE_TRAINER_READ_ONLY": "false",
            "ABALONE_TRAIN_TIMEOUT_MINUTES": "45",
            "ABALONE_STOP_GRACE_SECONDS": "2",
        }
    )
    hardening = settings.hardening
    assert hardening.user is None and hardening.memory is None and not hardening.read_only
    assert hardening.host_config()["nano_cpus"] == 3_500_000_000
    assert settings.train_timeout_minutes == 45 and settings.stop_grace_seconds == 2
    empty = Settings.from_env({"ABALONE_TRAINER_USER": "", "ABALONE_TRAINER_MEMORY": ""}).hardening
    assert (empty.user, empty.memory) == ("1000:1000", "8g"), "empty (as compose passes unset) means the default"


@pytest.mark.parametrize(
    ("name", "value"),
    [("ABALONE_TRAIN_TIMEOUT_MINUTES", "0"), ("ABALONE_STOP_GRACE_SECONDS", "600"), ("ABALONE_TRAINER_CPUS", "-1")],
)
def test_out_of_range_trainer_settings_are_refused(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
