"""Model behaviour on small real data: preprocessing inside the model, fitted on training rows only."""

from __future__ import annotations

import numpy as np
import pytest

from abalone_trainer.data import load_staged, to_features, to_labels
from abalone_trainer.defaults import NUMERIC_FEATURES, HyperParams, InvalidHyperParams
from abalone_trainer.model import build_model, predict, regression_metrics
from abalone_trainer.train import fit


@pytest.fixture(scope="module")
def data(small_manifest_uri):
    return load_staged(small_manifest_uri)


def test_normalisation_is_fitted_on_training_rows_only(data):
    train = to_features(data.frames["train"])
    model = build_model(train, HyperParams())
    normalizer = model.get_layer("normalize")
    stacked = np.concatenate([train[name] for name in NUMERIC_FEATURES], axis=1)
    np.testing.assert_allclose(np.ravel(normalizer.mean), stacked.mean(axis=0), rtol=1e-5)
    everything = np.concatenate([to_features(f)["Length"] for f in data.frames.values()])
    assert not np.isclose(np.ravel(normalizer.mean)[0], everything.mean(), rtol=1e-7)


def test_the_model_takes_raw_rows_with_the_sex_letter(data):
    model = build_model(to_features(data.frames["train"]), HyperParams())
    predictions = predict(model, to_features(data.frames["test"].head(4)))
    assert predictions.shape == (4,) and np.all(np.isfinite(predictions))
    assert model.get_layer("sex_one_hot").get_vocabulary()[1:] == ["M", "F", "I"]


def test_training_learns_and_is_repeatable(data):
    hparams = HyperParams(epochs=15, patience=5)
    model, history = fit(data, hparams)
    test = data.frames["test"]
    scores = regression_metrics(to_labels(test), predict(model, to_features(test)))
    baseline = regression_metrics(to_labels(test), np.full(len(test), to_labels(data.frames["train"]).mean()))
    assert history["loss"][-1] < history["loss"][0]
    assert scores["rmse"] < baseline["rmse"], "the model must beat predicting the training mean"
    again, _ = fit(data, hparams)
    np.testing.assert_allclose(predict(again, to_features(test)), predict(model, to_features(test)), atol=1e-6)


def test_regression_metrics_agree_with_their_definitions():
    scores = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert scores["mse"] == pytest.approx(4 / 3)
    assert scores["rmse"] == pytest.approx((4 / 3) ** 0.5)
    assert scores["mae"] == pytest.approx(2 / 3)
    assert scores["r2"] == pytest.approx(1 - 4 / 2)
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics(np.array([1.0]), np.array([np.nan]))


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"learning_rate": 0}, {"dropout": 1.0}, {"hidden_units": ()}])
def test_hyperparameters_are_checked(kwargs):
    with pytest.raises(InvalidHyperParams):
        HyperParams(**kwargs)
