"""What one view of the Airflow plugin's model page costs with 1,000 and 10,000 runs in MLflow.

Starts a real ``mlflow server`` with scripts/local_mlflow.py and seeds its SQLite file with bench/gate_cost.py's
``History`` (MLflow's own table models, bulk inserts, while the server is idle), then times what one request of
the plugin makes, calling the project's functions directly over HTTP through ``MlflowClient``, as the plugin's
read thread does (``fetch._read``), but without its 30 s cache: every repeat is a cold read with a new client.

- The model page ("/"): ``fetch.probe`` (GET /health) and ``app.summary``'s calls in its order:
  ``dashboard.decisions(limit=app.DECISIONS_SHOWN)``, ``dashboard.champion``, ``dashboard.trend``; then
  ``render.model_page`` on that summary.
- The gate report tab ("/runs/<dag>/<run>"): ``fetch.probe``, ``dashboard.run_report`` for the newest run (which
  carries a real decision.json and report.md, logged with ``registry.record_report``), ``render.run_page``.
- The extra links make no MLflow request: ``links.PersistedLink.get_link`` reads the XCom its task stored.

Seeded history: RUNS runs in the experiment, of which about VERSION_SHARE (0.3) have a registered version
(``History._run`` with a decision: 2 % forced, 1 % whose promotion never finished) and the rest were rejected
(the tags ``apply_decision`` writes on a rejected run). Every run also has the gate's metrics (champion and
baseline RMSE), as the gate logs them. The champion and previous-champion aliases point at the newest two
promoted versions. Each level adds runs to the previous one (1,000 runs and 300 versions, then 10,000 and 3,000).

    .venv/bin/python bench/model_page.py [--levels 1000 10000] [--repeat 7]

Prints a sanity line per level (decision rows, champion, trend points, report found) and a Markdown table of the
median (and max) milliseconds of ``--repeat`` views after one warm-up.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.append(str(REPOSITORY / "plugins"))  # abalone_model_page_app, as Airflow's plugins folder provides it


def _gate_cost():
    """bench/gate_cost.py as a module (bench/ is no package); it also puts scripts/ on sys.path."""
    spec = importlib.util.spec_from_file_location("gate_cost", REPOSITORY / "bench" / "gate_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gate_cost"] = module
    spec.loader.exec_module(module)
    return module


gate_cost = _gate_cost()
local_mlflow = gate_cost.local_mlflow

VERSION_SHARE = 0.3  # 300 versions per 1,000 runs: most nights' candidates are rejected
TARGET_SECONDS = 1.0
COLUMNS = ("champion", "decisions", "trend", "render", "page total", "gate report")
# The requests inside dashboard.decisions, timed apart after each view (with the view's client) to show which dominates.
PARTS = ("search_runs", "registry.rollbacks")


def seed(history, runs: int, versions: int, rejection: str) -> None:
    """``runs`` more runs after those written, ``versions`` of them registered; the aliases follow the newest two."""
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
    from sqlalchemy import func

    from abalone_pipeline import registry

    with history.registry.ManagedSessionMaker() as session:
        history.max_version = session.query(func.max(SqlModelVersion.version)).scalar() or 0
    history.champion = registry.current_version(history.registry, gate_cost.MODEL_NAME, gate_cost.ALIAS)
    history.previous = None
    batch, done = 2000, 0
    for start in range(0, runs, batch):
        rows: dict[str, list] = {table: [] for table in history.TABLES}
        for index in range(start, min(start + batch, runs)):
            if history.rng.random() < 0.6:
                history.dataset = history.new_dataset()
            # Spread the versions evenly: the index-th run is registered when the running quota grows.
            registered = round((index + 1) * versions / runs) > round(index * versions / runs)
            if registered:
                draw = history.rng.random()
                decision = "interrupted" if draw < 0.01 else "forced" if draw < 0.03 else "promoted"
                made = history._run(rows, history.dataset, decision)
                done += 1
            else:
                made = history._run(rows, history.dataset)
                rows["tags"] += [
                    {"key": key, "value": value, "run_uuid": made["run_id"]}
                    for key, value in (
                        (registry.TAG_REASONS, rejection),
                        (registry.TAG_OUTCOME, "rejected"),
                        (registry.TAG_DECISION, "rejected"),
                    )
                ]
            started = rows["runs"][-1]["start_time"]
            gate = {"gate.champion_rmse": 2.1, "gate.baseline_mean_rmse": 3.2, "gate.baseline_linear_rmse": 2.3}
            for key, value in gate.items():
                metric = {"key": key, "value": value, "timestamp": started, "step": 0, "is_nan": False}
                rows["metrics"].append({**metric, "run_uuid": made["run_id"]})
                rows["latest_metrics"].append({**metric, "run_uuid": made["run_id"]})
        history._write(rows)
    assert done == versions, (done, versions)
    if history.previous:
        history.registry.set_registered_model_alias(gate_cost.MODEL_NAME, gate_cost.PREVIOUS_ALIAS, history.previous)
    history.registry.set_registered_model_alias(gate_cost.MODEL_NAME, gate_cost.ALIAS, history.champion)


def newest_with_report(client, history) -> tuple[str, str]:
    """The newest seeded run's (dag_id, airflow run_id), after logging its gate report as the gate task does."""
    from abalone_pipeline import registry
    from abalone_pipeline.gate import GatePolicy, decide
    from abalone_pipeline.gate_report import render

    experiment = client.get_experiment_by_name(gate_cost.EXPERIMENT)
    run = client.search_runs([experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])[0]
    found = gate_cost.evaluation(2.3, history.champion, 2.1, (0.05, 0.25), {"count": 0})
    decision = decide(found, GatePolicy())
    tags = run.data.tags
    registry.record_report(client, run.info.run_id, decision, render(decision, found, tags))
    return tags["airflow.dag_id"], tags["airflow.run_id"]


def decision_parts(client, settings, experiment_id: str, limit: int) -> dict[str, Any]:
    """The requests ``dashboard.decisions`` makes, one call each (``registry.rollbacks``: one get_registered_model)."""
    from abalone_pipeline import registry

    return {
        "search_runs": lambda: client.search_runs(
            [experiment_id], max_results=limit, order_by=["attributes.start_time DESC"]
        ),
        "registry.rollbacks": lambda: registry.rollbacks(client, settings.model_name),
    }


def measure(uri: str, settings, report_run: tuple[str, str], repeat: int) -> dict[str, list[float]]:
    """Seconds of each part of a page view and of a gate report view, ``repeat`` times after a warm-up."""
    from abalone_model_page_app import app, fetch, render

    from abalone_contract.tracking import mlflow_client
    from abalone_pipeline import dashboard

    links = render.Links(page="/abalone", airflow="")
    experiment_id = client_experiment = None
    samples: dict[str, list[float]] = {name: [] for name in COLUMNS + PARTS}
    for rep in range(repeat + 1):
        times: dict[str, float] = {}
        page_started = time.perf_counter()
        fetch.probe(settings.tracking_uri)
        client = mlflow_client(settings.tracking_uri)  # a fresh client: nothing cached between views
        started = time.perf_counter()
        rows = dashboard.decisions(client, settings, limit=app.DECISIONS_SHOWN)
        times["decisions"] = time.perf_counter() - started
        started = time.perf_counter()
        champion = dashboard.champion(client, settings)
        times["champion"] = time.perf_counter() - started
        started = time.perf_counter()
        points = dashboard.trend(rows)
        times["trend"] = time.perf_counter() - started
        summary = {
            "model": settings.model_name,
            "experiment": settings.experiment,
            "server": fetch.display_uri(settings.tracking_uri),
            "read_at": "2026-12-01T00:00:00+00:00",
            "cache_seconds": fetch.CACHE_SECONDS,
            "champion": champion,
            "decisions": rows,
            "trend": points,
        }
        started = time.perf_counter()
        html = render.model_page(summary, links)
        times["render"] = time.perf_counter() - started
        times["page total"] = time.perf_counter() - page_started
        assert "<h1>Model" in html

        if client_experiment is None:
            client_experiment = client.get_experiment_by_name(settings.experiment)
            experiment_id = client_experiment.experiment_id
        for name, call in decision_parts(client, settings, experiment_id, app.DECISIONS_SHOWN).items():
            started = time.perf_counter()
            call()
            times[name] = time.perf_counter() - started

        started = time.perf_counter()
        fetch.probe(settings.tracking_uri)
        client = mlflow_client(settings.tracking_uri)
        report = app.run_report(client, settings, *report_run)
        report_html = render.run_page(report, links)
        times["gate report"] = time.perf_counter() - started
        assert report["found"] and report["decision"] and report["report_markdown"], report.keys()
        assert "Gate report" in report_html
        if rep:
            for name, value in times.items():
                samples[name].append(value)
    return samples


def sanity(uri: str, settings, report_run: tuple[str, str]) -> str:
    from abalone_model_page_app import app

    from abalone_contract.tracking import mlflow_client

    client = mlflow_client(uri)
    summary = app.summary(client, settings)
    report = app.run_report(client, settings, *report_run)
    rows, champion = summary["decisions"], summary["champion"]
    outcomes = {row["outcome"] for row in rows}
    # An interrupted promotion (1 in 100 versions) leaves its run undecided: the page leaves it out.
    assert len(rows) >= app.DECISIONS_SHOWN - 3, len(rows)
    assert champion is not None and champion["test_rmse"] is not None, champion
    assert summary["trend"] and report["found"] and report["checks"], report
    return (
        f"{len(rows)} decision rows (limit {app.DECISIONS_SHOWN}; outcomes {sorted(outcomes)}), "
        f"champion v{champion['version']} (test RMSE {champion['test_rmse']:.3f}), {len(summary['trend'])} trend "
        f"points; gate report of {report_run[1]}: {len(report['checks'])} checks, verdict {report['run']['verdict']}"
    )


def _cell(seconds: list[float]) -> str:
    """Median (max) in milliseconds."""
    return f"{statistics.median(seconds) * 1000:.1f} ({max(seconds) * 1000:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1000, 10000], help="runs in the experiment")
    parser.add_argument("--repeat", type=int, default=7, help="timed views per level, after one warm-up")
    args = parser.parse_args()
    levels = sorted(args.levels)

    import mlflow

    from abalone_contract.tracking import mlflow_client
    from abalone_pipeline import registry
    from abalone_pipeline.config import Settings
    from abalone_pipeline.gate import GatePolicy, decide
    from abalone_trainer import tracking

    for name in ("mlflow", "abalone_pipeline", "abalone_trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    started = time.monotonic()
    results: list[tuple[int, int, int, float, dict[str, list[float]]]] = []
    with tempfile.TemporaryDirectory(prefix="model-page-") as tmp:
        home = Path(tmp)
        with local_mlflow.server(home) as uri:
            env = {
                **os.environ,
                "ABALONE_MLFLOW_TRACKING_URI": uri,
                "ABALONE_EXPERIMENT": gate_cost.EXPERIMENT,
                "ABALONE_MODEL_NAME": gate_cost.MODEL_NAME,
                "ABALONE_CHAMPION_ALIAS": gate_cost.ALIAS,
                "ABALONE_PREVIOUS_ALIAS": gate_cost.PREVIOUS_ALIAS,
                "ABALONE_MLFLOW_UI_URL": uri,
            }
            settings = Settings.from_env(env)
            client = mlflow_client(uri)
            experiment_id = tracking.ensure_experiment(client, gate_cost.EXPERIMENT)
            registry.ensure_registered_model(client, gate_cost.MODEL_NAME, "model page benchmark")
            policy = GatePolicy()
            promoted = decide(gate_cost.evaluation(2.05, "1", 2.2, (-0.2, -0.1), {"count": 0}), policy).summary()
            rejected = decide(gate_cost.evaluation(2.3, "1", 2.1, (0.05, 0.25), {"count": 0}), policy).summary()
            history = gate_cost.History(f"sqlite:///{home}/mlflow.db", experiment_id, promoted)
            for level in levels:
                seeding = time.monotonic()
                runs, versions = history.counts()
                target_versions = round(level * VERSION_SHARE)
                seed(history, max(level - runs, 0), max(target_versions - versions, 0), rejected)
                seeded = time.monotonic() - seeding
                report_run = newest_with_report(client, history)
                runs, versions = history.counts()
                print(
                    f"level {level:,}: {runs:,} runs, {versions:,} versions, seeded in {seeded:.1f} s", file=sys.stderr
                )
                print(f"level {level:,} sanity: {sanity(uri, settings, report_run)}", file=sys.stderr)
                results.append((level, runs, versions, seeded, measure(uri, settings, report_run, args.repeat)))
                print(f"level {level:,} measured ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, MLflow {mlflow.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; median (max) ms of {args.repeat} cold views after a warm-up\n"
    )
    print("| level | runs | versions | " + " | ".join(f"{name} ms" for name in COLUMNS) + " |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for level, runs, versions, _, samples in results:
        cells = " | ".join(_cell(samples[name]) for name in COLUMNS)
        print(f"| {level:,} | {runs:,} | {versions:,} | {cells} |")
    print("\nInside dashboard.decisions, the same requests timed apart:\n")
    print("| level | " + " | ".join(f"{name} ms" for name in PARTS) + " |")
    print("|---|" + "---|" * len(PARTS))
    for level, _, _, _, samples in results:
        cells = " | ".join(_cell(samples[name]) for name in PARTS)
        print(f"| {level:,} | {cells} |")
    first = results[0]
    low = statistics.median(first[4]["page total"])
    verdict = "met" if low < TARGET_SECONDS else "NOT met"
    print(f"\nTarget (page under {TARGET_SECONDS:.0f} s at {first[0]:,} runs): {verdict} ({low * 1000:.0f} ms).")
    for level, _, _, _, samples in results[1:]:
        high = statistics.median(samples["page total"])
        print(f"At {level:,} runs: {high * 1000:.0f} ms, {high / low:.2f}x the {first[0]:,} case.")
    print("Page total = probe + new client + decisions + champion + trend + render; gate report = probe + new client")
    print("+ run_report (a tag search, an artifact listing, two downloads) + render.run_page.")
    print(f"\nWall time {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    main()
