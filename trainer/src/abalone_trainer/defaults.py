"""Model constants and hyperparameter defaults; the pipeline's settings live in the Airflow-side config."""

from __future__ import annotations

from dataclasses import dataclass, field

FEATURES: tuple[str, ...] = (
    "Sex",
    "Length",
    "Diameter",
    "Height",
    "Whole_weight",
    "Shucked_weight",
    "Viscera_weight",
    "Shell_weight",
)
NUMERIC_FEATURES: tuple[str, ...] = FEATURES[1:]
SEX_VOCABULARY: tuple[str, ...] = ("M", "F", "I")
LABEL = "Rings"


class InvalidHyperParams(ValueError):
    """A hyperparameter is out of range."""


@dataclass(frozen=True)
class HyperParams:
    """What one training run may vary; the defaults are the AWS sample's settings."""

    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    hidden_units: tuple[int, ...] = field(default=(64, 32, 16))
    dropout: float = 0.2
    # Ten epochs without a better validation loss is where the sample's curve has flattened.
    patience: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InvalidHyperParams(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InvalidHyperParams(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise InvalidHyperParams(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not self.hidden_units or any(units < 1 for units in self.hidden_units):
            raise InvalidHyperParams(f"hidden_units must be positive, got {self.hidden_units}")
        if not 0 <= self.dropout < 1:
            raise InvalidHyperParams(f"dropout must be in [0, 1), got {self.dropout}")
        if self.patience < 1:
            raise InvalidHyperParams(f"patience must be >= 1, got {self.patience}")

    def as_params(self) -> dict[str, str]:
        """Flat strings for ``mlflow.log_params``."""
        return {
            "epochs": str(self.epochs),
            "batch_size": str(self.batch_size),
            "learning_rate": str(self.learning_rate),
            "hidden_units": ",".join(str(units) for units in self.hidden_units),
            "dropout": str(self.dropout),
            "patience": str(self.patience),
            "seed": str(self.seed),
        }
