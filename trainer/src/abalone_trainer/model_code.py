"""Entry point MLflow runs when it loads the logged model ("models from code": no pickled objects)."""

from mlflow.models import set_model

from abalone_trainer.pyfunc import AbaloneRingsModel

set_model(AbaloneRingsModel())
