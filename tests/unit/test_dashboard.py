"""The model page's data against a real MLflow registry (SQLite store): every outcome, rollbacks, bounded reads."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from abalone_pipeline import dashboard, registry
from abalone_pipeline.config import PROJECT_ROOT, Settings

NAME, EXPERIMENT, DAG = "abalone-dash", "abalone-dash", "abalone_retraining"
UI = "http://mlflow.example:5000"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow database, its schema migrated once: migrating takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(tmp_path, monkeypatch, empty_store):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def settings() -> Settings:
    return replace(Settings(), experiment=EXPERIMENT, model_name=NAME, mlflow_ui_url=UI)


class Recording:
    """The client, with every call it receives recorded: what the page costs MLflow."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.calls = client, []

    def __getattr__(self, name):
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls.append((name, kwargs))
            return attribute(*args, **kwargs)

        return call


def candidate(
    client: MlflowClient,
    night: int,
    tags: dict[str, str],
    *,
    rmse: float | None = 2.0,
    champion_rmse: float | None = None,
    report: dict | None = None,
) -> str:
    """A candidate run of night ``night`` as training and the gate leave it: tags, metrics, gate artifacts."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run_id = f"scheduled__2026-01-{night:02d}T02:00:00+00:00"
    start = 1_767_225_600_000 + night * 86_400_000  # 2026-01-01 plus ``night`` days, in ms
    run = client.create_run(
        experiment_id, start_time=start, tags={"airflow.dag_id": DAG, "airflow.run_id": run_id, **tags}
    )
    metrics = {"gate.baseline_mean_rmse": 3.2, "gate.baseline_linear_rmse": 2.4}
    if rmse is not None:
        metrics["test_rmse"] = rmse
    if champion_rmse is not None:
        metrics["gate.champion_rmse"] = champion_rmse
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(key, value, start, 0) for key, value in metrics.items()],
        tags=[RunTag("airflow.run_url", f"http://airflow.example/dags/{DAG}/runs/{run_id}")],
    )
    if report is not None:
        client.log_text(run.info.run_id, json.dumps(report), registry.REPORT_JSON)
        client.log_text(run.info.run_id, "# Gate decision: REJECT\n", registry.REPORT_MARKDOWN)
    client.set_terminated(run.info.run_id, end_time=start + 60_000)
    return run.info.run_id


def register(client: MlflowClient, run_id: str, night: int, verdict: str, **tags: str) -> str:
    """Register the run and move the champion alias to it, with the audit tags a promotion writes."""
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(
        NAME,
        source=f"runs:/{run_id}/model",
        run_id=run_id,
        tags={
            registry.TAG_AIRFLOW_RUN: f"{DAG}/scheduled__2026-01-{night:02d}T02:00:00+00:00",
            registry.TAG_DECISION: verdict,
            registry.TAG_PROMOTED_AT: f"2026-01-{night:02d}T02:30:00.000+00:00",
            registry.TAG_REASONS: "PROMOTE: all 4 applicable rules passed",
            registry.TAG_PREVIOUS_CHAMPION: "none",
            "abalone.dataset_id": "7c4075e67892e879",
            "airflow.run_url": f"http://airflow.example/dags/{DAG}/runs/night{night}",
            **tags,
        },
    ).version
    client.set_registered_model_alias(NAME, "champion", version)
    client.set_tag(run_id, registry.TAG_VERSION, str(version))
    return str(version)


REJECTED_REASONS = (
    "REJECT: failed improvement, significance: test_rmse 2.1000 is worse than champion v1 2.0000 by 0.1000; "
    "the interval lies above 0"
)
REJECTED_REPORT = {
    "verdict": "rejected",
    "summary": REJECTED_REASONS,
    "checks": [
        {"rule": "ceiling", "passed": True, "applied": True, "detail": "below 3.0", "observed": 2.1, "threshold": 3.0},
        {"rule": "improvement", "passed": False, "applied": True, "detail": "worse", "observed": -0.1, "threshold": 0},
        {"rule": "prior_runs", "passed": True, "applied": False, "detail": "rule off"},
    ],
}


@pytest.fixture
def history(client) -> dict[str, str]:
    """Six nights: promoted, forced, rejected, a dry run, an undecided run, a rejection tagged only the old way."""
    runs = {}
    runs["promoted"] = candidate(client, 1, {registry.TAG_OUTCOME: "promoted", registry.TAG_DECISION: "promoted"})
    register(client, runs["promoted"], 1, "promoted")
    runs["forced"] = candidate(
        client, 2, {registry.TAG_OUTCOME: "forced", registry.TAG_DECISION: "forced"}, rmse=2.2, champion_rmse=2.0
    )
    register(
        client,
        runs["forced"],
        2,
        "forced",
        **{registry.TAG_FORCED_BY: "alice", registry.TAG_FORCE_REASON: "v1's artifacts were lost"},
        **{registry.TAG_PREVIOUS_CHAMPION: "1"},
    )
    rejected_tags = {
        registry.TAG_OUTCOME: "rejected",
        registry.TAG_DECISION: "rejected",
        registry.TAG_REASONS: REJECTED_REASONS,
    }
    runs["rejected"] = candidate(client, 3, rejected_tags, rmse=2.3, champion_rmse=2.2, report=REJECTED_REPORT)
    dry_tags = {registry.TAG_OUTCOME: "dry_run", registry.TAG_DRY_RUN: "promoted"}
    runs["dry_run"] = candidate(client, 4, dry_tags, rmse=2.1, champion_rmse=2.2)
    runs["undecided"] = candidate(client, 5, {}, rmse=None)
    legacy = {registry.TAG_DECISION: "rejected", registry.TAG_REASONS: REJECTED_REASONS}
    runs["legacy"] = candidate(client, 6, legacy, rmse=2.4, champion_rmse=None)
    return runs


def roll_back(client) -> None:
    registry.rollback(
        client,
        model_name=NAME,
        alias="champion",
        previous_alias="previous_champion",
        key="abalone_rollback/manual__2026-01-07",
        reason="v2 misbehaves",
        requested_by="bob",
        to_version="1",
    )


def test_the_champion_has_its_score_data_audit_trail_and_links(client, settings, history):
    champion = dashboard.champion(client, settings)
    assert champion["version"] == "2" and champion["test_rmse"] == pytest.approx(2.2)
    assert champion["forced"] and champion["forced_by"] == "alice" and "lost" in champion["force_reason"]
    assert champion["dataset"] == "7c4075e67892e879" and champion["promoted_at"].startswith("2026-01-02")
    assert (champion["dag_id"], champion["airflow_run_id"]) == (DAG, "scheduled__2026-01-02T02:00:00+00:00")
    assert champion["airflow_run_url"].endswith("/night2") and champion["replaced"] == "1"
    assert champion["mlflow_version_url"] == f"{UI}/#/models/{NAME}/versions/2"
    assert (
        champion["mlflow_run_url"].startswith(f"{UI}/#/experiments/")
        and history["forced"] in champion["mlflow_run_url"]
    )


def test_no_champion_and_no_experiment_are_empty_answers(client, settings):
    assert dashboard.champion(client, settings) is None
    assert dashboard.decisions(client, settings) == []
    assert dashboard.run_report(client, settings, DAG, "manual__x")["found"] is False


def test_decisions_have_one_row_per_decided_run_newest_first(client, settings, history):
    rows = dashboard.decisions(client, settings)
    assert [row["outcome"] for row in rows] == ["rejected", "dry_run", "rejected", "forced", "promoted"]
    by_run = {row["mlflow_run_id"]: row for row in rows}
    assert history["undecided"] not in by_run, "a run without an outcome is not a decision"


@pytest.mark.parametrize(
    ("run", "outcome", "verdict", "failed", "version", "champion_rmse"),
    [
        ("promoted", "promoted", "promoted", [], "1", None),
        ("forced", "forced", "forced", [], "2", 2.0),
        ("rejected", "rejected", "rejected", ["improvement", "significance"], None, 2.2),
        ("dry_run", "dry_run", "promoted", [], None, 2.2),
        ("legacy", "rejected", "rejected", ["improvement", "significance"], None, None),
    ],
)
def test_each_outcome_row(client, settings, history, run, outcome, verdict, failed, version, champion_rmse):
    (row,) = [row for row in dashboard.decisions(client, settings) if row["mlflow_run_id"] == history[run]]
    assert (row["kind"], row["outcome"], row["verdict"]) == ("decision", outcome, verdict)
    assert row["failed_rules"] == failed and row["version"] == version
    assert row["champion_rmse"] == champion_rmse and row["baselines"] == {"linear": 2.4, "mean": 3.2}
    assert row["dag_id"] == DAG and row["airflow_run_id"].startswith("scheduled__2026-01-")
    assert row["airflow_run_url"].startswith("http://airflow.example/dags/")
    assert row["mlflow_run_url"].endswith(f"/runs/{history[run]}") and row["when"].startswith("2026-01-")


def test_a_rollback_is_a_row_of_its_own(client, settings, history):
    roll_back(client)
    rows = dashboard.decisions(client, settings)
    (rollback,) = [row for row in rows if row["kind"] == "rollback"]
    assert rows[0] is rollback, "the rollback happened after the last night"
    assert set(rollback) == set(rows[1]), "one shape for every row"
    assert (rollback["outcome"], rollback["version"], rollback["replaced"]) == ("rollback", "1", "2")
    assert rollback["by"] == "bob" and rollback["reasons"] == "v2 misbehaves"
    assert (rollback["dag_id"], rollback["airflow_run_id"]) == ("abalone_rollback", "manual__2026-01-07")
    assert dashboard.champion(client, settings)["version"] == "1"


def test_the_trend_reads_the_fetched_rows_oldest_first(client, settings, history):
    recording = Recording(client)
    rows = dashboard.decisions(recording, settings)
    calls = len(recording.calls)
    points = dashboard.trend(rows)
    assert len(recording.calls) == calls, "the trend costs no request"
    assert [point["candidate"] for point in points] == [2.0, 2.2, 2.3, 2.1, 2.4]
    assert [point["champion"] for point in points] == [None, 2.0, 2.2, 2.2, None]
    assert points[0]["baselines"] == {"linear": 2.4, "mean": 3.2} and points[-1]["outcome"] == "rejected"


def test_reads_are_bounded_whatever_the_history(client, settings, history):
    def cost(limit: int) -> list[tuple[str, dict]]:
        recording = Recording(client)
        dashboard.decisions(recording, settings, limit=limit)
        return recording.calls

    few = cost(50)
    for night in range(7, 19):
        candidate(client, night, {registry.TAG_OUTCOME: "rejected"})
    many = cost(50)
    assert [name for name, _ in many] == [name for name, _ in few], "more runs, same requests"
    assert not {"get_run", "get_metric_history"} & {name for name, _ in many}, "no request per run"
    searches = [kwargs for name, kwargs in many if name.startswith("search_")]
    assert searches and all(0 < kwargs["max_results"] <= 50 for kwargs in searches)
    capped = [kwargs for name, kwargs in cost(10_000) if name.startswith("search_")]
    assert all(kwargs["max_results"] == dashboard.MAX_DECISIONS for kwargs in capped)
    assert len(dashboard.decisions(client, settings, limit=3)) == 3


def test_a_run_report_has_the_checks_the_report_and_the_outcome(client, settings, history):
    report = dashboard.run_report(client, settings, DAG, "scheduled__2026-01-03T02:00:00+00:00")
    assert report["found"] and report["run"]["mlflow_run_id"] == history["rejected"]
    assert report["run"]["outcome"] == "rejected" and report["run"]["failed_rules"] == ["improvement"]
    assert [check["rule"] for check in report["checks"]] == ["ceiling", "improvement", "prior_runs"]
    assert set(report["checks"][0]) == {"rule", "applied", "passed", "detail", "observed", "threshold"}
    assert report["checks"][2]["applied"] is False
    assert report["report_markdown"].startswith("# Gate decision: REJECT") and report["slices_chart"] is False
    assert report["mlflow_report_url"].endswith(f"/runs/{history['rejected']}/artifacts/gate")


def test_a_run_report_offers_the_slices_chart_when_the_gate_drew_one(client, settings, history, tmp_path):
    png = b"\x89PNG\r\n\x1a\n not really"
    (tmp_path / "slices.png").write_bytes(png)
    client.log_artifact(history["dry_run"], str(tmp_path / "slices.png"), "gate")
    report = dashboard.run_report(client, settings, DAG, "scheduled__2026-01-04T02:00:00+00:00")
    assert report["slices_chart"] and report["checks"] == [] and report["report_markdown"] is None
    assert (report["run"]["outcome"], report["run"]["verdict"]) == ("dry_run", "promoted")
    assert dashboard.artifact_bytes(client, history["dry_run"], dashboard.SLICES_CHART) == png


def test_a_run_report_of_an_undecided_or_unknown_run(client, settings, history):
    undecided = dashboard.run_report(client, settings, DAG, "scheduled__2026-01-05T02:00:00+00:00")
    assert undecided["found"] and undecided["run"]["outcome"] is None and undecided["run"]["status"] == "FINISHED"
    assert dashboard.run_report(client, settings, "other_dag", "scheduled__2026-01-05T02:00:00+00:00")["found"] is False
    assert dashboard.run_report(client, settings, DAG, "it's")["found"] is False, "a quote never reaches the filter"


def test_failed_rules_come_from_the_decision_summary():
    assert dashboard.failed_rules(REJECTED_REASONS) == ["improvement", "significance"]
    assert dashboard.failed_rules("PROMOTE: all 4 applicable rules passed") == []
    forced = "FORCED by alice (v1 lost): failed improvement: test_rmse 2.2 is worse"
    assert dashboard.failed_rules(forced) == ["improvement"]
    assert dashboard.failed_rules(None) == []


def test_without_a_ui_url_links_fall_back_to_the_sagemaker_console(client, history):
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/abalone"
    settings = replace(Settings(), experiment=EXPERIMENT, model_name=NAME, tracking_uri=arn, mlflow_ui_url=None)
    row = dashboard.decisions(client, settings)[0]
    assert row["mlflow_run_url"].startswith("https://eu-west-1.console.aws.amazon.com/sagemaker/")


@pytest.fixture
def render():
    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    try:
        from abalone_model_page_app import render

        yield render
    finally:
        sys.path.remove(str(PROJECT_ROOT / "plugins"))


def test_the_page_escapes_what_mlflow_holds_and_draws_the_trend(client, settings, history, render):
    client.set_tag(history["legacy"], registry.TAG_REASONS, "REJECT: failed ceiling: <script>alert(1)</script>")
    rows = dashboard.decisions(client, settings)
    summary = {"model": NAME, "experiment": EXPERIMENT, "server": UI, "read_at": "2026-01-07T00:00:00+00:00"}
    summary |= {"cache_seconds": 30, "champion": dashboard.champion(client, settings), "decisions": rows}
    html = render.model_page(summary | {"trend": dashboard.trend(rows)}, render.Links(page="/abalone", airflow=""))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("<circle") == 5 and "mean baseline" in html and "linear baseline" in html
    assert 'href="/abalone/runs/abalone_retraining/scheduled__2026-01-03T02%3A00%3A00%2B00%3A00"' in html
    assert 'href="/dags/abalone_retraining/runs/scheduled__2026-01-02T02%3A00%3A00%2B00%3A00" target="_top"' in html
    assert "No scored candidate yet" in render.trend_svg([])
