"""Model behaviour on small real data: preprocessing inside the model, fitted on training rows only."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from abalone_contract.constants import NUMERIC_FEATURES
from abalone_contract.hyperparams import HyperParams, InvalidHyperParams
from abalone_trainer.data import load_staged, to_features, to_labels
from abalone_trainer.model import build_model, predict
from abalone_trainer.stats import regression_metrics
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


def test_dropout_layers_follow_the_hyperparameter(data):
    train = to_features(data.frames["train"])
    layer_types = {type(layer).__name__ for layer in build_model(train, HyperParams(dropout=0.0)).layers}
    assert "Dense" in layer_types and not layer_types & {"Dropout", "BatchNormalization"}
    with_dropout = build_model(train, HyperParams(hidden_units=(8, 4), dropout=0.3))
    rates = [layer.rate for layer in with_dropout.layers if type(layer).__name__ == "Dropout"]
    assert rates == pytest.approx([0.3, 0.3])


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


def test_the_learning_rate_halves_when_validation_stalls(data):
    hparams = HyperParams(epochs=12, patience=4, learning_rate=0.05)  # a rate this high soon stalls
    _, history = fit(data, hparams)
    rates = history["learning_rate"]
    assert rates[0] == pytest.approx(hparams.learning_rate)
    changes = [(earlier, later) for earlier, later in itertools.pairwise(rates) if later != earlier]
    assert changes, "the validation loss stalled, so the learning rate should have dropped"
    assert all(later == pytest.approx(earlier / 2) for earlier, later in changes)


def test_the_saved_model_predicts_the_same_after_loading(data, tmp_path):
    import keras

    model, _ = fit(data, HyperParams(epochs=2, patience=1))
    features = to_features(data.frames["test"])
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(predict(loaded, features), predict(model, features), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"learning_rate": 0}, {"dropout": 1.0}, {"hidden_units": ()}])
def test_hyperparameters_are_checked(kwargs):
    with pytest.raises(InvalidHyperParams):
        HyperParams(**kwargs)
