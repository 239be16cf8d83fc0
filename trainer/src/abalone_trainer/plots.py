"""Diagnostic plots of a trained candidate on its test rows, logged on its MLflow run under ``plots/``.

No learning curve: the per-epoch ``loss``, ``val_loss`` and ``val_rmse`` are logged as step metrics, and
MLflow's own charts show them per run and overlaid across runs, which a static image cannot.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from abalone_contract.constants import LABEL
from abalone_trainer.stats import SliceSpec

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
PREDICTED_VS_TRUE = f"{PLOTS_DIR}/predicted_vs_true.png"
RESIDUALS_BY_SLICE = f"{PLOTS_DIR}/residuals_by_slice.png"
# Small and light: the figures are read on screen in the MLflow UI, and each one is an upload.
DPI = 100


def _figure(width: float, height: float, bottom: float = 0.6):
    """A figure drawn by Agg, outside pyplot: no global figure registry to leak into, no GUI backend.

    Fixed margins (inches), not a layout engine: constrained layout measures every label again, which
    made drawing both plots about 1.5 times as slow.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=bottom / height, top=1 - 0.4 / height)
    return figure


def predicted_vs_true(labels: np.ndarray, predictions: np.ndarray):
    """Predicted against true Rings, one point per test row, with the identity line."""
    figure = _figure(5.5, 5.5)
    axes = figure.add_subplot()
    axes.scatter(labels, predictions, s=10, alpha=0.4, linewidths=0)
    low, high = min(labels.min(), predictions.min()), max(labels.max(), predictions.max())
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = true")
    rmse = float(np.sqrt(np.mean((predictions - labels) ** 2)))
    axes.set(xlabel="true Rings", ylabel="predicted Rings", title=f"{labels.size} test rows, RMSE {rmse:.3f}")
    axes.set_aspect("equal", adjustable="datalim")
    axes.legend(loc="upper left")
    return figure


def residuals_by_slice(labels: np.ndarray, predictions: np.ndarray, masks: dict[str, np.ndarray]):
    """Residuals (predicted - true) of all test rows and of each evaluation slice, as box plots."""
    residuals = predictions - labels
    groups = {"all": np.ones(labels.size, dtype=bool), **{name: mask for name, mask in masks.items() if mask.any()}}
    figure = _figure(1.2 + 0.9 * len(groups), 4.5, bottom=0.55)
    axes = figure.add_subplot()
    axes.boxplot(
        [residuals[mask] for mask in groups.values()],
        tick_labels=[f"{name}\n({int(mask.sum())})" for name, mask in groups.items()],
        showmeans=True,
        flierprops={"markersize": 3, "alpha": 0.5},
    )
    axes.axhline(0, color="black", linewidth=1)
    axes.set(ylabel="predicted - true Rings", title="Residuals by slice (rows); line: median, triangle: mean")
    axes.tick_params(axis="x", labelsize=8)
    return figure


def log_test_plots(test: pd.DataFrame, predictions: np.ndarray, slices: SliceSpec | None = None) -> list[str]:
    """Log the plots of ``predictions`` on the ``test`` rows on the active MLflow run; return their paths.

    ``slices``: those the gate scores by default (``stats.SliceSpec()``) unless given.

    Never raises: a missing plot is worth a warning, never a failed training (a stop signal still goes
    through: ``signals.Terminated`` is no ``Exception``). Rows predicted non-finite are left out.
    """
    started = time.monotonic()
    logged: list[str] = []
    try:
        import mlflow

        labels = test[LABEL].to_numpy(dtype="float64")
        predictions = np.asarray(predictions, dtype="float64").reshape(-1)
        masks = (slices or SliceSpec()).masks(test)
        finite = np.isfinite(predictions)
        if not finite.all():
            log.warning("the plots leave out %d test rows predicted non-finite", int((~finite).sum()))
        if not finite.any():
            return logged
        labels, predictions = labels[finite], predictions[finite]
        masks = {name: mask[finite] for name, mask in masks.items()}
        plots = {
            PREDICTED_VS_TRUE: lambda: predicted_vs_true(labels, predictions),
            RESIDUALS_BY_SLICE: lambda: residuals_by_slice(labels, predictions, masks),
        }
        for path, draw in plots.items():
            mlflow.log_figure(draw(), path)
            logged.append(path)
    except Exception as exc:
        log.warning("plots not logged (%d were); training goes on: %s: %s", len(logged), type(exc).__name__, exc)
    else:
        log.info("logged %s in %.2f s", ", ".join(logged), time.monotonic() - started)
    return logged
