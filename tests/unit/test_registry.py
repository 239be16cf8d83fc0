"""The registry logic against a real MLflow registry (SQLite store), not a fake client."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from abalone_pipeline.gate import GatePolicy, decide
from abalone_pipeline.registry import TAG_DECISION, TAG_REASONS, PromotionConflict, apply_decision, current_version

NAME, ALIAS = "abalone-test", "champion"
POLICY = GatePolicy(max_test_rmse=2.5, rmse_tolerance=0.02)
AUDIT = {"airflow.dag_id": "abalone_retraining", "airflow.run_id": "scheduled__x"}


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def candidate(client: MlflowClient) -> dict:
    experiment = client.get_experiment_by_name("e") or client.get_experiment(client.create_experiment("e"))
    run = client.create_run(experiment.experiment_id)
    client.set_terminated(run.info.run_id)
    return {"run_id": run.info.run_id, "model_uri": f"{run.info.artifact_uri}/model"}


def metrics(rmse: float) -> dict[str, float]:
    return {"test_rmse": rmse, "test_mae": 1.0, "test_r2": 0.5, "test_mse": rmse**2}


def promote(client, cand, rmse, champion=None):
    return apply_decision(
        client,
        model_name=NAME,
        alias=ALIAS,
        candidate=cand,
        decision=decide(metrics(rmse), champion, POLICY),
        audit_tags=AUDIT,
    )


def versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def test_first_promotion_registers_and_sets_the_alias(client):
    cand = candidate(client)
    outcome = promote(client, cand, 2.2)
    assert outcome["promoted"] and outcome["version"] == "1"
    assert current_version(client, NAME, ALIAS) == "1"
    version = client.get_model_version(NAME, "1")
    assert version.run_id == cand["run_id"]
    assert version.tags["airflow.run_id"] == "scheduled__x" and version.tags[TAG_DECISION] == "promoted"
    assert client.get_run(cand["run_id"]).data.tags[TAG_DECISION] == "promoted"


def test_a_retry_creates_no_second_version(client):
    cand = candidate(client)
    promote(client, cand, 2.2)
    again = promote(client, cand, 2.2)  # the champion now is this very candidate
    assert again["version"] == "1" and versions(client) == ["1"]
    assert current_version(client, NAME, ALIAS) == "1"


def test_a_retry_after_a_partial_promotion_completes_it(client):
    cand = candidate(client)
    client.create_registered_model(NAME)
    version = client.create_model_version(NAME, cand["model_uri"], run_id=cand["run_id"])  # then the task died
    outcome = promote(client, cand, 2.2)
    assert outcome["version"] == str(version.version) and versions(client) == ["1"]
    assert current_version(client, NAME, ALIAS) == "1"


def test_rerunning_an_old_decided_run_does_not_move_the_alias_back(client):
    old = candidate(client)
    promote(client, old, 2.2)
    promote(client, candidate(client), 2.2, champion={"version": "1", "metrics": metrics(2.2)})  # v2, a tie
    again = promote(client, old, 2.2, champion={"version": "2", "metrics": metrics(2.2)})
    assert again["already_decided"] and again["version"] == "1" and again["champion_version"] == "2"
    assert current_version(client, NAME, ALIAS) == "2" and versions(client) == ["1", "2"]


def test_an_alias_deleted_since_evaluation_is_a_conflict(client):
    promote(client, candidate(client), 2.2)
    client.delete_registered_model_alias(NAME, ALIAS)
    with pytest.raises(PromotionConflict, match="moved to vNone"):
        promote(client, candidate(client), 2.1, champion={"version": "1", "metrics": metrics(2.2)})
    assert versions(client) == ["1"] and current_version(client, NAME, ALIAS) is None


def test_a_rejection_leaves_registry_and_alias_untouched(client):
    first = candidate(client)
    promote(client, first, 2.2)
    worse = candidate(client)
    outcome = promote(client, worse, 2.4, champion={"version": "1", "metrics": metrics(2.2)})
    assert not outcome["promoted"]
    assert versions(client) == ["1"] and current_version(client, NAME, ALIAS) == "1"
    tags = client.get_run(worse["run_id"]).data.tags
    assert tags[TAG_DECISION] == "rejected" and "champion v1" in tags[TAG_REASONS]


def test_a_better_candidate_moves_the_alias(client):
    promote(client, candidate(client), 2.2)
    better = candidate(client)
    outcome = promote(client, better, 2.1, champion={"version": "1", "metrics": metrics(2.2)})
    assert outcome["version"] == "2" and current_version(client, NAME, ALIAS) == "2"
    assert client.get_model_version(NAME, "2").tags["abalone.previous_champion"] == "1"


def test_an_alias_moved_since_evaluation_is_a_conflict_and_changes_nothing(client):
    promote(client, candidate(client), 2.2)
    judged_against_v1 = candidate(client)
    promote(client, candidate(client), 2.1, champion={"version": "1", "metrics": metrics(2.2)})  # v2 wins meanwhile
    with pytest.raises(PromotionConflict, match="moved to v2"):
        promote(client, judged_against_v1, 2.0, champion={"version": "1", "metrics": metrics(2.2)})
    assert versions(client) == ["1", "2"] and current_version(client, NAME, ALIAS) == "2"
