"""The logged MLflow model: a pyfunc that takes raw abalone rows (a DataFrame) and returns predicted Rings.

The Keras model is stored as a ``.keras`` artifact. The pyfunc wrapper exists because MLflow's
TensorFlow flavor accepts only tensor signatures, while the users of this model send table rows with
a string column (Sex).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from abalone_contract.constants import FEATURES
from abalone_trainer.data import to_features

KERAS_ARTIFACT = "keras_model"


class AbaloneRingsModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import keras

        self.model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from abalone_trainer.model import predict

        missing = [name for name in FEATURES if name not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks columns {missing}; expected {list(FEATURES)}")
        return predict(self.model, to_features(model_input))


def package_dirs() -> list[str]:
    """This package's and the contract's directories, shipped with the model so that loading it needs only
    MLflow and TensorFlow."""
    import abalone_contract

    return [str(Path(__file__).resolve().parent), str(Path(abalone_contract.__file__).resolve().parent)]


def model_code_path() -> str:
    """The file MLflow executes to rebuild the pyfunc (see ``model_code.py``)."""
    return str(Path(__file__).resolve().parent / "model_code.py")
