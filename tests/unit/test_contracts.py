"""The Airflow side and the trainer image agree on their shared contract (both packages are installed here)."""

from __future__ import annotations

import pytest

from abalone_pipeline import gate, operators, results, staging
from abalone_pipeline.config import PROJECT_ROOT
from abalone_trainer import cli, defaults


def test_columns_agree():
    assert staging.COLUMNS == (*defaults.FEATURES, defaults.LABEL)


def test_result_and_error_markers_agree():
    assert results.RESULT_MARKER == cli.RESULT_MARKER
    assert results.ERROR_MARKER == cli.ERROR_MARKER


def test_bad_input_prefix_is_what_the_trainer_prints():
    source = open(cli.__file__).read()
    assert f"{{ERROR_MARKER}} {operators.BAD_INPUT_PREFIX} {{exc}}" in source


def test_test_metric_names_agree():
    assert set(results.TEST_METRICS) == {f"test_{name}" for name in ("rmse", "mae", "r2", "mse")}


def test_the_forms_hyperparameter_defaults_are_the_trainers():
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert dagbag.import_errors == {}
    params = dagbag.dags["abalone_retraining"].params
    trainer = defaults.HyperParams()
    assert (params["epochs"], params["batch_size"], params["learning_rate"]) == (
        trainer.epochs,
        trainer.batch_size,
        pytest.approx(trainer.learning_rate),
    )


def test_slice_and_confidence_settings_are_what_the_trainer_accepts():
    from abalone_pipeline.config import Settings
    from abalone_trainer import stats

    assert cli._slices(Settings().eval_slices) == stats.SliceSpec()
    assert gate.CONFIDENCE_LEVELS == stats.CONFIDENCE_LEVELS
