"""The diagnostic plots land on the run under plots/, and no plotting failure fails a training."""

from __future__ import annotations

import logging
import sys

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from abalone_contract.constants import LABEL
from abalone_contract.hyperparams import HyperParams
from abalone_trainer import plots, tracking
from abalone_trainer.data import load_staged
from abalone_trainer.train import train_and_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plot_artifacts(tracking_uri: str, run_id: str) -> set[str]:
    return {artifact.path for artifact in MlflowClient(tracking_uri).list_artifacts(run_id, plots.PLOTS_DIR)}


@pytest.fixture
def test_rows(small_manifest_uri):
    return load_staged(small_manifest_uri, splits=("test",)).frames["test"]


@pytest.fixture
def active_run(tracking_uri):
    tracking.configure(tracking_uri)
    with mlflow.start_run() as run:
        yield run.info.run_id


def test_both_plots_are_valid_pngs_on_the_run(test_rows, active_run, tracking_uri, tmp_path):
    predictions = test_rows[LABEL].to_numpy(dtype="float64") + np.random.default_rng(0).normal(0, 2, len(test_rows))
    logged = plots.log_test_plots(test_rows, predictions)
    assert logged == [plots.PREDICTED_VS_TRUE, plots.RESIDUALS_BY_SLICE]
    assert plot_artifacts(tracking_uri, active_run) == set(logged)
    for path in logged:
        local = mlflow.artifacts.download_artifacts(run_id=active_run, artifact_path=path, dst_path=str(tmp_path))
        with open(local, "rb") as png:
            assert png.read(8) == PNG_MAGIC


def test_rows_predicted_non_finite_are_left_out(test_rows, active_run, tracking_uri, caplog):
    predictions = test_rows[LABEL].to_numpy(dtype="float64")
    predictions[:3] = [np.nan, np.inf, -np.inf]
    assert len(plots.log_test_plots(test_rows, predictions)) == 2
    assert "leave out 3 test rows predicted non-finite" in caplog.text
    assert plots.log_test_plots(test_rows, np.full(len(test_rows), np.nan)) == []


def test_a_missing_matplotlib_is_a_warning_and_the_training_finishes(
    small_manifest_uri, tracking_uri, monkeypatch, caplog
):
    # As if the image lacked matplotlib: every figure's import fails.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with caplog.at_level(logging.WARNING, logger="abalone_trainer.plots"):
        result = train_and_log(
            load_staged(small_manifest_uri),
            HyperParams(epochs=2, patience=1),
            experiment="abalone-test",
            idempotency_key="dag/no-plots",
            tracking_uri=tracking_uri,
        )
    assert MlflowClient(tracking_uri).get_run(result["run_id"]).info.status == "FINISHED"
    assert result["model_uri"] and result["metrics"]["test_rmse"] > 0
    assert plot_artifacts(tracking_uri, result["run_id"]) == set()
    assert "plots not logged (0 were); training goes on: ModuleNotFoundError" in caplog.text


def test_a_container_starts_from_the_font_list_the_image_built(tmp_path, monkeypatch):
    from abalone_trainer.cli import seed_matplotlib_cache

    baked = tmp_path / "image" / "matplotlib"
    baked.mkdir(parents=True)
    (baked / "fontlist-v390.json").write_text("{}")
    target = tmp_path / "tmpfs" / "matplotlib"
    monkeypatch.setenv("ABALONE_MATPLOTLIB_CACHE", str(baked))
    monkeypatch.setenv("MPLCONFIGDIR", str(target))
    seed_matplotlib_cache()
    assert (target / "fontlist-v390.json").read_text() == "{}"
    (target / "fontlist-v390.json").write_text('{"rebuilt": true}')
    seed_matplotlib_cache()  # a directory already there is matplotlib's own: left alone
    assert (target / "fontlist-v390.json").read_text() == '{"rebuilt": true}'
