"""The gate's slice chart is a PNG for every shape an evaluation takes: with, without and with a broken champion."""

from __future__ import annotations

import json
import signal
import struct
import time

import pytest

from abalone_contract.results import parse_evaluation
from abalone_pipeline import charts
from abalone_pipeline.charts import Drawing, slice_chart
from abalone_pipeline.gate import GatePolicy, decide

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LEVELS = ("0.8", "0.9", "0.95", "0.99")
SLICE_ROWS = {"sex=M": 302, "sex=F": 258, "sex=I": 317, "rings<=7": 171, "rings=8-11": 548, "rings>=12": 158}


def metrics(rmse: float) -> dict:
    return {"test_rmse": rmse, "test_mae": 0.7 * rmse, "test_r2": 0.55, "test_mse": rmse**2}


def scored(rmse: float, shift: dict[str, float]) -> dict:
    slices = {
        name: {"rmse": rmse + shift.get(name, 0.0), "mae": 1.5, "r2": 0.4, "mse": 4.0, "rows": rows}
        for name, rows in SLICE_ROWS.items()
    }
    return {"metrics": metrics(rmse), "slices": slices, "non_finite_predictions": 0}


def bootstrap(diff: float, width: float) -> dict:
    intervals = {level: [diff - width * (1 + i / 4), diff + width * (1 + i / 4)] for i, level in enumerate(LEVELS)}
    return {"rmse_diff": diff, "intervals": intervals, "p_better": 0.7 if diff < 0 else 0.3}


def payload(champion: str | None) -> str:
    """What ``abalone-trainer evaluate`` prints after its marker: None, "scored" or "broken" champion."""
    candidate_shift = {"rings>=12": 1.2, "rings<=7": -0.6}
    data = {
        "dataset_id": "5f0c1e9a2b7d4c33",
        "test_rows": sum(SLICE_ROWS[name] for name in ("sex=M", "sex=F", "sex=I")),
        "slices": SLICE_ROWS,
        "bootstrap": {"resamples": 2000, "seed": 0, "levels": list(LEVELS)},
        "candidate": {"model_uri": "models:/m-cand", "run_id": "run-cand", **scored(2.05, candidate_shift)},
        "champion": None,
        "comparison": None,
        "baselines": {"mean": metrics(3.21), "linear": metrics(2.21)},
        "prior_runs": {"basis": "none", "count": 0, "median_test_rmse": None, "best_test_rmse": None, "run_ids": []},
    }
    version = {"version": "3", "run_id": "run-champ", "model_uri": "models:/abalone/3"}
    if champion == "scored":
        data["champion"] = {**version, **scored(2.09, {**candidate_shift, "rings>=12": 1.0})}
        data["comparison"] = {
            "overall": bootstrap(-0.04, 0.03),
            "slices": {name: bootstrap(-0.04 + 0.05 * (name == "rings>=12"), 0.09) for name in SLICE_ROWS},
        }
        # A non-finite bound (None after parsing) is left out of the chart, not an error.
        data["comparison"]["slices"]["sex=I"]["intervals"]["0.95"] = [float("nan"), 0.1]
    elif champion == "broken":
        data["champion"] = {**version, "error": "MlflowException: no such model"}
    return json.dumps(data)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize("champion", [None, "scored", "broken"])
def test_the_chart_is_a_png(champion):
    evaluation = parse_evaluation(payload(champion))
    decision = decide(evaluation, GatePolicy(confidence=0.95)).to_dict()
    width, height = png_size(slice_chart(evaluation, decision))
    assert height > 200
    # Two panels (RMSE and the difference) only when there is a comparison to draw.
    assert (width > 900) == (champion == "scored")


def test_the_interval_level_follows_the_policy():
    evaluation = parse_evaluation(payload("scored"))
    at_95 = slice_chart(evaluation, decide(evaluation, GatePolicy(confidence=0.95)).to_dict())
    at_80 = slice_chart(evaluation, decide(evaluation, GatePolicy(confidence=0.8)).to_dict())
    assert at_95 != at_80


def test_a_drawing_in_a_forked_process_is_the_same_png():
    evaluation = parse_evaluation(payload("scored"))
    decision = decide(evaluation, GatePolicy(confidence=0.95)).to_dict()
    drawing = Drawing(evaluation, decision)
    assert drawing.result() == slice_chart(evaluation, decision)
    assert not drawing.process.is_alive() and drawing.process.exitcode == 0


def test_a_drawing_that_fails_or_hangs_says_why_and_leaves_no_process(monkeypatch):
    with pytest.raises(RuntimeError, match="KeyError: 'candidate'"):
        Drawing({}, {}).result()
    monkeypatch.setattr(charts, "slice_chart", lambda *args: time.sleep(60))
    hung = Drawing({}, {}, timeout=0.5)
    with pytest.raises(TimeoutError, match="not drawn within"):
        hung.result()
    assert not hung.process.is_alive(), "stopped, not left behind"


def test_a_drawing_never_read_is_ended_even_under_a_task_s_signal_handlers(monkeypatch):
    """A gate that returns early (a candidate decided before) closes the drawing unread: the process must
    end although the PNG fills its pipe and the task's SIGTERM handler (inherited by the fork) ignores it."""
    evaluation = parse_evaluation(payload("scored"))
    decision = decide(evaluation, GatePolicy(confidence=0.95)).to_dict()
    previous = signal.signal(signal.SIGTERM, lambda *args: None)
    try:
        drawing = Drawing(evaluation, decision)
        assert drawing.receive.poll(60), "drawn, waiting to be read"
        started = time.monotonic()
        drawing.close()
        assert not drawing.process.is_alive() and time.monotonic() - started < 5
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_drawing_starts_in_a_process_marked_daemonic(monkeypatch):
    import multiprocessing

    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)
    evaluation = parse_evaluation(payload(None))
    decision = decide(evaluation, GatePolicy()).to_dict()
    assert png_size(Drawing(evaluation, decision).result())[1] > 200
