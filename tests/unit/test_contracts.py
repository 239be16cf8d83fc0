"""The Airflow side and the trainer image agree on their shared contract (both packages are installed here)."""

from __future__ import annotations

from abalone_pipeline import operators, results, staging
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
