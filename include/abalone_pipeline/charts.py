"""The gate's evaluation as a picture: candidate vs champion RMSE per slice, with the bootstrap intervals."""

from __future__ import annotations

import io
import math
import os
from typing import Any

from abalone_pipeline import forking

# Small: read on screen beside the gate report in the MLflow UI.
DPI = 100
CANDIDATE, CHAMPION, REFERENCE = "tab:blue", "tab:orange", "dimgray"


def _value(value: Any) -> float:
    """A number for the chart; None (how a non-finite metric travels, see results.py) becomes NaN: not drawn."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan


def _rows(evaluation: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(label, slice name) from top to bottom: everything first, then each slice, as the gate report lists them."""
    slices = evaluation["candidate"].get("slices") or {}
    return [(f"all ({evaluation['test_rows']})", None)] + [
        (f"{name} ({metrics.get('rows', '?')})", name) for name, metrics in slices.items()
    ]


def _rmse_panel(axes, evaluation: dict[str, Any], rows: list[tuple[str, str | None]], policy: dict[str, Any]) -> None:
    champion = evaluation.get("champion") or {}
    y = list(range(len(rows)))

    def rmse(scored: dict[str, Any], name: str | None) -> float:
        if name is None:
            return _value((scored.get("metrics") or {}).get("test_rmse"))
        return _value(((scored.get("slices") or {}).get(name) or {}).get("rmse"))

    # Side by side, a little apart: equal scores must not hide one marker behind the other.
    offset = 0.12 if champion.get("metrics") else 0.0
    candidate = [rmse(evaluation["candidate"], name) for _, name in rows]
    axes.plot(candidate, [i - offset for i in y], "o", color=CANDIDATE, label="candidate")
    if champion.get("metrics"):
        scores = [rmse(champion, name) for _, name in rows]
        axes.plot(scores, [i + offset for i in y], "s", color=CHAMPION, label=f"champion v{champion['version']}")
    # The baselines are scored on all test rows only: lines across every slice, for scale.
    for (name, metrics), style in zip(evaluation.get("baselines", {}).items(), ("--", "-.", ":"), strict=False):
        value = _value(metrics.get("test_rmse"))
        if math.isfinite(value):
            axes.axvline(value, color=REFERENCE, linestyle=style, linewidth=1, label=f"{name} baseline {value:.2f}")
    if math.isfinite(ceiling := _value(policy.get("max_rmse"))):
        axes.axvline(ceiling, color="tab:red", linestyle=":", linewidth=1, label=f"max_rmse {ceiling:.2f}")
    axes.set_yticks(y, [label for label, _ in rows])
    axes.set(xlabel="test RMSE (rings)", title="RMSE, all test rows and per slice")
    _legend_below(axes)


def _legend_below(axes) -> None:
    """Below the plot, where it cannot cover a marker."""
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, fontsize=8, frameon=False)


def _difference_panel(
    axes, comparison: dict[str, Any], rows: list[tuple[str, str | None]], level: str, policy: dict[str, Any]
) -> None:
    for y, (_, name) in enumerate(rows):
        result = comparison.get("overall") if name is None else (comparison.get("slices") or {}).get(name)
        diff = _value((result or {}).get("rmse_diff"))
        low, high = (_value(bound) for bound in ((result or {}).get("intervals") or {}).get(level, (None, None)))
        if math.isfinite(low) and math.isfinite(high):
            axes.plot([low, high], [y, y], color=CANDIDATE, linewidth=2, solid_capstyle="butt")
        axes.plot([diff], [y], "o", color=CANDIDATE)
    axes.axvline(0, color="black", linewidth=1)
    if math.isfinite(tolerance := _value(policy.get("slice_tolerance"))):
        axes.axvline(tolerance, color="tab:red", linestyle=":", linewidth=1, label=f"slice tolerance +{tolerance:.2f}")
        _legend_below(axes)
    axes.set(
        xlabel="RMSE(candidate) - RMSE(champion); < 0: candidate better",
        title=f"Paired bootstrap, {float(level):.0%} intervals",
    )


def slice_chart(evaluation: dict[str, Any], decision: dict[str, Any]) -> bytes:
    """A PNG of the candidate's and the champion's RMSE overall and per slice, beside the baselines, and of
    their paired-bootstrap difference with its interval at the policy's confidence level.

    ``evaluation`` as ``abalone_contract.results.parse_evaluation`` returns it, ``decision`` as
    ``Decision.to_dict``. Without a
    champion (or with one that could not be scored) the chart shows the candidate and the baselines only.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    policy = decision.get("policy") or {}
    level = str(policy.get("confidence", 0.95))
    rows = _rows(evaluation)
    comparison = evaluation.get("comparison")
    champion = evaluation.get("champion")
    panels = 2 if comparison else 1
    # Not pyplot: a Figure drawn by Agg needs no backend choice and leaves nothing open in the worker.
    figure = Figure(figsize=(5.5 * panels, 1.8 + 0.4 * len(rows)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, sharey=True, squeeze=False)[0]
    _rmse_panel(axes[0], evaluation, rows, policy)
    axes[0].invert_yaxis()  # "all" on top; the y axis is shared
    if comparison:
        _difference_panel(axes[1], comparison, rows, level, policy)
    verdict = str(decision.get("verdict") or "").upper()
    if champion is None:
        note = "no champion yet: candidate and baselines only"
    elif champion.get("error"):
        note = f"champion v{champion['version']} could not be scored: candidate and baselines only"
    else:
        note = f"candidate vs champion v{champion['version']}"
    figure.suptitle(f"Gate: {verdict}, dataset {evaluation['dataset_id']}\n{note}", fontsize=10)
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()


class Drawing:
    """``slice_chart`` drawn in a forked helper process (``abalone_pipeline.forking``), so that a task can
    load other libraries meanwhile.

    The helper only imports matplotlib and draws; it never logs, and it closes its copy of the pipe's
    reading end, so that its write fails rather than blocks once the task stops reading. ``result`` waits
    for the PNG at most ``timeout`` seconds; ``close`` kills the helper if it still runs: a chart is never
    worth a stuck task. Starting it may fail (then nothing runs): the caller draws nothing and says why.
    """

    def __init__(self, evaluation: dict[str, Any], decision: dict[str, Any], timeout: float = 60.0) -> None:
        self.timeout = timeout
        context = forking.context()
        self.receive, send = context.Pipe(duplex=False)
        try:
            self.process = context.Process(
                target=_draw, args=(os.getpid(), self.receive, send, evaluation, decision), daemon=True
            )
            with forking.children_allowed():
                self.process.start()
        except BaseException:
            self.receive.close()
            raise
        finally:
            send.close()

    def result(self) -> bytes:
        try:
            if not self.receive.poll(self.timeout):
                raise TimeoutError(f"the chart was not drawn within {self.timeout:.0f} s")
            drawn, value = self.receive.recv()
            self.process.join(1)  # it exits once it has sent the chart
        except EOFError:
            raise RuntimeError("the process drawing the chart exited without it") from None
        finally:
            self.close()
        if not drawn:
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.receive.close()


def _draw(parent: int, receive, send, evaluation: dict[str, Any], decision: dict[str, Any]) -> None:
    forking.as_helper(parent)
    receive.close()
    try:
        outcome = (True, slice_chart(evaluation, decision))
    except Exception as exc:  # handed to the task, which logs it
        outcome = (False, f"{type(exc).__name__}: {exc}")
    try:
        send.send(outcome)
    except BrokenPipeError:
        pass  # the task no longer wants it
    finally:
        send.close()
