"""The numbers the gate compares: metrics per slice, a paired bootstrap, and sanity baselines.

Pure NumPy over arrays of labels and predictions, so every figure in a gate report can be recomputed
from the test split and the two models' predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from abalone_contract.constants import CONFIDENCE_LEVELS, EVAL_SLICES, LABEL, NUMERIC_FEATURES, SEXES, parse_slices

_DEFAULT_SLICES = parse_slices(EVAL_SLICES)
# Resamples per bootstrap block: bounds memory at BLOCK x rows indices whatever the resample count.
BLOCK = 256


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R² and MSE; NaN throughout when any prediction is not finite (the gate rejects NaN)."""
    y_true = np.asarray(y_true, dtype="float64").reshape(-1)
    y_pred = np.asarray(y_pred, dtype="float64").reshape(-1)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"cannot score {y_pred.shape} predictions against {y_true.shape} labels")
    if not np.all(np.isfinite(y_pred)):
        return dict.fromkeys(("rmse", "mae", "r2", "mse"), float("nan"))
    errors = y_pred - y_true
    mse = float(np.mean(errors**2))
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1.0 - float(np.sum(errors**2)) / total if total > 0 else 0.0
    return {"rmse": mse**0.5, "mae": float(np.mean(np.abs(errors))), "r2": r2, "mse": mse}


@dataclass(frozen=True)
class SliceSpec:
    """Which slices of the test rows to score: by Sex, and by age band of Rings.

    ``rings_bands`` are upper edges: ``(7, 11)`` gives Rings <= 7, 8-11 and >= 12.
    """

    by_sex: bool = _DEFAULT_SLICES[0]
    rings_bands: tuple[int, ...] = _DEFAULT_SLICES[1]

    def __post_init__(self) -> None:
        if list(self.rings_bands) != sorted(set(self.rings_bands)):
            raise ValueError(f"rings bands must be increasing, got {self.rings_bands}")

    def masks(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Boolean row masks, named as the reports show them; empty slices are left out."""
        masks: dict[str, np.ndarray] = {}
        if self.by_sex:
            sex = frame["Sex"].to_numpy()
            for value in SEXES:
                masks[f"sex={value}"] = sex == value
        rings = frame[LABEL].to_numpy()
        lower = None
        for upper in self.rings_bands:
            if lower is None:
                masks[f"rings<={upper}"] = rings <= upper
            else:
                masks[f"rings={lower + 1}-{upper}" if upper > lower + 1 else f"rings={upper}"] = (rings > lower) & (
                    rings <= upper
                )
            lower = upper
        if lower is not None:
            masks[f"rings>={lower + 1}"] = rings > lower
        return {name: mask for name, mask in masks.items() if mask.any()}


def sliced_metrics(y_true: np.ndarray, y_pred: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, dict]:
    """Metrics and row count of each slice."""
    return {
        name: {**regression_metrics(y_true[mask], y_pred[mask]), "rows": int(mask.sum())}
        for name, mask in masks.items()
    }


def paired_bootstrap(
    y_true: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
    levels: Sequence[float] = CONFIDENCE_LEVELS,
) -> dict[str, object]:
    """Bootstrap the difference RMSE(candidate) - RMSE(champion) over test rows, resampled in pairs.

    Both models are scored on the same resampled rows, so the row-to-row noise they share cancels:
    the interval is the noise of the *difference*, which is far narrower than either RMSE's own.
    Negative is better for the candidate. Returns the point estimate, percentile intervals at each of
    ``levels`` and the share of resamples where the candidate is better.
    """
    y_true = np.asarray(y_true, dtype="float64")
    sq_candidate = (np.asarray(candidate, dtype="float64") - y_true) ** 2
    sq_champion = (np.asarray(champion, dtype="float64") - y_true) ** 2
    point = float(np.sqrt(sq_candidate.mean()) - np.sqrt(sq_champion.mean()))
    if not np.isfinite(point):
        nan = float("nan")
        return {"rmse_diff": nan, "intervals": {str(level): [nan, nan] for level in levels}, "p_better": nan}
    rows = y_true.size
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for start in range(0, resamples, BLOCK):
        count = min(BLOCK, resamples - start)
        index = rng.integers(0, rows, size=(count, rows))
        diffs[start : start + count] = np.sqrt(sq_candidate[index].mean(axis=1)) - np.sqrt(
            sq_champion[index].mean(axis=1)
        )
    intervals = {
        str(level): [float(np.quantile(diffs, (1 - level) / 2)), float(np.quantile(diffs, (1 + level) / 2))]
        for level in levels
    }
    return {"rmse_diff": point, "intervals": intervals, "p_better": float(np.mean(diffs < 0))}


def _design(frame: pd.DataFrame) -> np.ndarray:
    """Intercept, the numeric measurements and a one-hot Sex (first level dropped): least squares' inputs."""
    numeric = frame[list(NUMERIC_FEATURES)].to_numpy(dtype="float64")
    sex = np.stack([(frame["Sex"] == value).to_numpy(dtype="float64") for value in SEXES[1:]], axis=1)
    return np.hstack([np.ones((len(frame), 1)), numeric, sex])


def baseline_predictions(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Predictions on ``test`` of the two baselines, fitted on ``train`` rows only.

    ``mean``: the training rows' mean Rings, for every row. ``linear``: ordinary least squares on the
    measurements and Sex. A model that does not beat them has learnt nothing worth serving.
    """
    labels = train[LABEL].to_numpy(dtype="float64")
    coefficients, *_ = np.linalg.lstsq(_design(train), labels, rcond=None)
    return {"mean": np.full(len(test), labels.mean()), "linear": _design(test) @ coefficients}
