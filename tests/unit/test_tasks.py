from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from abalone_pipeline.config import BUNDLED_DATA, ConfigError, Settings
from abalone_pipeline.tasks import (
    check_run_options,
    gate_candidate,
    gate_metrics,
    policy_for_run,
    promote_candidate,
    summarize,
)

SETTINGS = Settings.from_env({"ABALONE_MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})  # never contacted
DAG_RUN = SimpleNamespace(
    dag_id="abalone_retraining",
    run_id="manual__x",
    run_after="2026-11-26",
    run_type="manual",
    triggering_user_name="alice",
)
METRICS = {"test_rmse": 2.1, "test_mae": 1.5, "test_r2": 0.55, "test_mse": 4.41}
EVALUATION = {
    "dataset_id": "aaaa",
    "test_rows": 836,
    "candidate": {
        "model_uri": "models:/m-1",
        "run_id": "r1",
        "metrics": METRICS,
        "slices": {},
        "non_finite_predictions": 0,
    },
    "champion": None,
    "comparison": None,
    "baselines": {"mean": {**METRICS, "test_rmse": 3.2}, "linear": {**METRICS, "test_rmse": 2.2}},
    "prior_runs": {"count": 0},
}


def test_a_candidate_trained_on_other_data_is_never_promoted():
    candidate = {"run_id": "r1", "model_uri": "models:/m-1", "dataset_id": "aaaa"}
    with pytest.raises(AirflowFailException, match="trained on dataset aaaa, but this run staged bbbb"):
        promote_candidate(
            SETTINGS,
            candidate=candidate,
            decision=gate_candidate(EVALUATION, check_run_options(SETTINGS, {}), DAG_RUN),
            staged={"dataset_id": "bbbb", "manifest_uri": "m"},
            dag_run=DAG_RUN,
            try_number=1,
        )


def test_forcing_needs_a_reason_before_anything_runs():
    with pytest.raises(AirflowFailException, match="force_promote needs a force_reason"):
        check_run_options(SETTINGS, {"force_promote": True, "force_reason": "  "})
    forced = check_run_options(SETTINGS, {"force_promote": True, "force_reason": " rollback of a bad feed "})
    assert forced["force_reason"] == "rollback of a bad feed"
    assert check_run_options(SETTINGS, {"force_reason": "not forced"})["force_reason"] is None


def test_preflight_resolves_the_options_the_later_tasks_act_on():
    options = check_run_options(SETTINGS, {"gate": {"max_rmse": 2.0}, "dry_run": True})
    assert options["source_uri"] == SETTINGS.source_uri, "no source_uri Param: the configured source"
    assert options["max_quarantine_fraction"] == pytest.approx(SETTINGS.max_quarantine_fraction)
    assert options["dry_run"] is True and options["force_reason"] is None and options["force_training"] is False
    assert check_run_options(SETTINGS, {"force_training": True})["force_training"] is True
    assert options["gate_policy"] == {**SETTINGS.gate_policy.to_dict(), "max_rmse": 2.0}
    json.dumps(options, allow_nan=False)  # an XCom


def test_the_gate_applies_the_policy_preflight_resolved():
    lenient = check_run_options(SETTINGS, {})
    strict = check_run_options(SETTINGS, {"gate": {"max_rmse": 2.0}})
    assert gate_candidate(EVALUATION, lenient, DAG_RUN)["promote"]
    decision = gate_candidate(EVALUATION, strict, DAG_RUN)
    assert not decision["promote"] and decision["policy"] == strict["gate_policy"]


def test_a_run_overrides_single_policy_keys():
    assert policy_for_run(SETTINGS, {"gate": {"max_rmse": 2.0}}).max_rmse == pytest.approx(2.0)
    with pytest.raises(AirflowFailException, match="invalid gate policy for this run"):
        policy_for_run(SETTINGS, {"gate": {"max_rmse": "low"}})


def test_the_gate_records_who_forced_and_why():
    params = {"force_promote": True, "force_reason": "hotfix", "gate": {"max_rmse": 1.0}}
    decision = gate_candidate(EVALUATION, check_run_options(SETTINGS, params), DAG_RUN)
    assert decision["promote"] and decision["verdict"] == "forced"
    assert decision["forced_by"] == "alice" and decision["force_reason"] == "hotfix"
    assert decision["policy"]["max_rmse"] == pytest.approx(1.0)


def test_staging_fails_at_once_on_what_a_retry_cannot_fix(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from abalone_pipeline.tasks import stage_dataset

    store = {"ABALONE_OBJECT_STORE_URI": tmp_path.as_uri(), "ABALONE_MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    nowhere = Settings.from_env({**store, "ABALONE_STAGING_DIR": str(tmp_path / "missing")})
    with pytest.raises(AirflowFailException, match=r"ABALONE_STAGING_DIR=.* is not a directory"):
        stage_dataset(nowhere, str(tmp_path / "src.csv"), 0.01)
    with pytest.raises(AirflowFailException, match=r"cannot stage: source .* does not exist"):
        stage_dataset(Settings.from_env(store), str(tmp_path / "src.csv"), 0.01)
    (tmp_path / "src.csv").write_bytes(b"M,0.4\n")
    with pytest.raises(AirflowFailException, match=r"cannot stage: .*line 1: expected 9 columns"):
        stage_dataset(Settings.from_env(store), str(tmp_path / "src.csv"), 0.01)


@pytest.mark.parametrize(
    "source",
    [
        "/etc/passwd",
        "file:///etc/shadow",
        str(BUNDLED_DATA.parent / ".." / ".." / "pyproject.toml"),
        "s3://someone-elses-bucket/data.csv",
        "https://example.com/abalone.data",
    ],
)
def test_a_source_outside_the_allowlist_is_refused_before_it_is_opened(source):
    with pytest.raises(AirflowFailException, match=r"is not allowed: .*\(ABALONE_ALLOWED_SOURCES\)"):
        check_run_options(SETTINGS, {"source_uri": source})


def test_the_allowlist_is_a_setting():
    settings = Settings.from_env({"ABALONE_ALLOWED_SOURCES": "s3://raw-data/abalone, https://data.example.com/uci/"})
    check_run_options(settings, {"source_uri": "s3://raw-data/abalone/2026-12-01.csv"})
    check_run_options(settings, {"source_uri": "https://data.example.com/uci/abalone.data"})
    check_run_options(settings, {"source_uri": settings.source_uri})  # the configured default is always allowed
    for refused in ("s3://raw-data/abalone-other/x.csv", "https://data.example.com/other", "/etc/passwd"):
        with pytest.raises(AirflowFailException, match="is not allowed"):
            check_run_options(settings, {"source_uri": refused})
    with pytest.raises(ConfigError, match="ABALONE_ALLOWED_SOURCES"):
        Settings.from_env({"ABALONE_ALLOWED_SOURCES": "ftp://host/x"})


def test_the_bundled_data_is_allowed_by_default():
    check_run_options(SETTINGS, {"source_uri": BUNDLED_DATA.as_uri()})
    check_run_options(SETTINGS, {"source_uri": str(BUNDLED_DATA)})


def test_after_a_run_fails_without_its_clean_up_the_fences_are_closed_even_with_mlflow_down(
    tmp_path, caplog, monkeypatch
):
    import json
    from types import SimpleNamespace

    from abalone_pipeline import attempts
    from abalone_pipeline.objectstore import LocalStore
    from abalone_pipeline.tasks import clean_up_after_failure

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = Settings.from_env(
        {
            "ABALONE_OBJECT_STORE_URI": tmp_path.as_uri(),
            "ABALONE_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens
            "ABALONE_DOCKER_URL": "unix:///nonexistent.sock",  # never contacted from the DAG processor
        }
    )
    store = LocalStore(tmp_path)
    key = attempts.fence_key("abalone_retraining", "scheduled__1", "train")
    attempts.claim(store, key, "try1-abcd")
    dag_run = SimpleNamespace(dag_id="abalone_retraining", run_id="scheduled__1")
    clean_up_after_failure(settings)({"dag_run": dag_run, "reason": "timed_out"})  # never raises
    assert json.loads(store.get(key))["attempt"] is None, "the orphan's next fence check stops it"
    assert "mlflow_runs_killed" in caplog.text and "containers_removed" not in caplog.text


def test_the_gate_logs_the_champion_and_the_baselines_beside_the_candidate():
    assert gate_metrics(EVALUATION) == {"gate.baseline_mean_rmse": 3.2, "gate.baseline_linear_rmse": 2.2}
    with_champion = {**EVALUATION, "champion": {"version": "3", "metrics": {**METRICS, "test_rmse": 2.05}}}
    assert gate_metrics(with_champion)["gate.champion_rmse"] == pytest.approx(2.05)


def test_a_night_that_promotes_nothing_is_summarized_without_an_mlflow_client(monkeypatch):
    from abalone_contract import tracking

    reads = []
    monkeypatch.setattr(tracking, "mlflow_client", lambda uri: reads.append(uri) or _DownRegistry)
    decision = {**gate_candidate(EVALUATION, check_run_options(SETTINGS, {}), DAG_RUN), "outcome": "rejected"}
    staged = {"dataset_id": "aaaa", "manifest_uri": "file:///m.json", "rows": {}, "validation": {}}
    candidate = {"run_id": "r1"}

    def summary(decision, promoted=None, reread=False):
        return summarize(
            SETTINGS,
            decision=decision,
            promoted=promoted,
            staged=staged,
            candidate=candidate,
            dag_run=DAG_RUN,
            reread=reread,
        )

    assert summary({**decision, "champion_now": "3"})["champion_now"] == "3" and not reads, "the gate's read"
    assert summary({**decision, "champion_now": None})["champion_now"] is None and not reads, "no champion yet"
    assert summary(decision)["champion_now"] is None and reads, "no read on record: the registry (down here)"
    reads.clear()
    assert summary({**decision, "champion_now": "3"}, reread=True)["champion_now"] is None and reads, "a rerun"
    reads.clear()
    promoted = {"version": "4", "verdict": "promoted"}
    assert summary({**decision, "champion_now": "3"}, promoted)["champion_now"] is None and reads, "read again"


class _DownRegistry:
    """A registry that cannot answer."""

    @staticmethod
    def get_model_version_by_alias(name, alias):
        raise ConnectionError("the registry is down")
