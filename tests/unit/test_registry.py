"""The registry logic against a real MLflow registry (SQLite store), not a fake client."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from abalone_pipeline.gate import Check, Decision
from abalone_pipeline.registry import (
    REPORT_JSON,
    REPORT_MARKDOWN,
    TAG_AIRFLOW_RUN,
    TAG_DECISION,
    TAG_REASONS,
    PromotionConflict,
    RollbackError,
    apply_decision,
    current_version,
    history,
    record_report,
    rollback,
    rollback_tag,
)

NAME, ALIAS, PREVIOUS = "abalone-test", "champion", "previous_champion"


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_runs = iter(range(1, 1000))


def candidate(client: MlflowClient) -> dict:
    """A finished MLflow run, trained by its own Airflow run."""
    experiment = client.get_experiment_by_name("e") or client.get_experiment(client.create_experiment("e"))
    run = client.create_run(experiment.experiment_id)
    client.set_terminated(run.info.run_id)
    return {"run_id": run.info.run_id, "model_uri": f"{run.info.artifact_uri}/model", "airflow": f"d/r{next(_runs)}"}


def decision(passed: bool, champion: str | None = None, forced_by: str | None = None) -> Decision:
    check = Check("improvement", passed, "better than the champion" if passed else "worse than champion")
    return Decision(
        promote=passed or forced_by is not None,
        checks=(check,),
        candidate_rmse=2.1,
        champion_version=champion,
        forced=forced_by is not None,
        force_reason="the old champion's artifacts were lost" if forced_by else None,
        forced_by=forced_by,
    )


def promote(client, cand, passed=True, champion=None, forced_by=None):
    return apply_decision(
        client,
        model_name=NAME,
        alias=ALIAS,
        previous_alias=PREVIOUS,
        candidate=cand,
        decision=decision(passed, champion, forced_by),
        audit_tags={TAG_AIRFLOW_RUN: cand["airflow"], "airflow.run_id": cand["airflow"].split("/")[1]},
    )


def versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def roll_back(client, key="rollback/r1", to_version=None, reason="v2 misbehaves in production"):
    return rollback(
        client,
        model_name=NAME,
        alias=ALIAS,
        previous_alias=PREVIOUS,
        key=key,
        reason=reason,
        requested_by="alice",
        to_version=to_version,
    )


def test_first_promotion_registers_sets_the_alias_and_points_at_the_report(client, tmp_path):
    cand = candidate(client)
    record_report(client, cand["run_id"], decision(True, None, None), "# Gate decision\n")  # the gate task's
    outcome = promote(client, cand)
    assert outcome["promoted"] and outcome["version"] == "1"
    assert current_version(client, NAME, ALIAS) == "1" and current_version(client, NAME, PREVIOUS) is None
    version = client.get_model_version(NAME, "1")
    assert version.run_id == cand["run_id"]
    assert version.tags[TAG_AIRFLOW_RUN] == cand["airflow"] and version.tags[TAG_DECISION] == "promoted"
    assert version.tags["abalone.previous_champion"] == "none"
    assert version.tags["abalone.gate.report"] == f"runs:/{cand['run_id']}/{REPORT_MARKDOWN}"
    assert client.get_run(cand["run_id"]).data.tags[TAG_DECISION] == "promoted"
    assert client.get_run(cand["run_id"]).data.tags["abalone.outcome"] == "promoted"
    saved = json.loads((tmp_path / client.download_artifacts(cand["run_id"], REPORT_JSON)).read_text())
    assert saved["verdict"] == "promoted" and saved["checks"][0]["rule"] == "improvement"


def test_a_retry_creates_no_second_version(client):
    cand = candidate(client)
    promote(client, cand)
    again = promote(client, cand)
    assert again["version"] == "1" and again["already_decided"] and versions(client) == ["1"]


def test_a_retry_after_a_partial_promotion_completes_it(client):
    promote(client, candidate(client))
    cand = candidate(client)
    client.create_model_version(NAME, cand["model_uri"], run_id=cand["run_id"], tags={TAG_AIRFLOW_RUN: cand["airflow"]})
    # ... then the task died before moving the alias: the retry finds the version by its Airflow run.
    outcome = promote(client, cand, champion="1")
    assert outcome["version"] == "2" and versions(client) == ["1", "2"]
    assert current_version(client, NAME, ALIAS) == "2" and current_version(client, NAME, PREVIOUS) == "1"


def test_rerunning_an_old_decided_run_does_not_move_the_alias_back(client):
    old = candidate(client)
    promote(client, old)
    promote(client, candidate(client), champion="1")
    again = promote(client, old, champion="2")
    assert again["already_decided"] and again["version"] == "1" and again["champion_version"] == "2"
    assert current_version(client, NAME, ALIAS) == "2" and versions(client) == ["1", "2"]


def test_a_rejection_leaves_registry_and_alias_untouched(client):
    promote(client, candidate(client))
    worse = candidate(client)
    outcome = promote(client, worse, passed=False, champion="1")
    assert not outcome["promoted"] and outcome["verdict"] == "rejected"
    assert versions(client) == ["1"] and current_version(client, NAME, ALIAS) == "1"
    tags = client.get_run(worse["run_id"]).data.tags
    assert tags[TAG_DECISION] == tags["abalone.outcome"] == "rejected" and "worse than champion" in tags[TAG_REASONS]


def test_a_better_candidate_moves_the_alias_and_keeps_the_previous_champion(client):
    promote(client, candidate(client))
    outcome = promote(client, candidate(client), champion="1")
    assert outcome["version"] == "2" and current_version(client, NAME, ALIAS) == "2"
    assert current_version(client, NAME, PREVIOUS) == "1"
    assert client.get_model_version(NAME, "2").tags["abalone.previous_champion"] == "1"


class CountingCreates(MlflowClient):
    """Counts attempts to create the registered model: MLflow's SQL store answers one for an existing model
    by loading it with every one of its versions."""

    creates = 0

    def create_registered_model(self, *args, **kwargs):
        self.creates += 1
        return super().create_registered_model(*args, **kwargs)


def test_a_promotion_over_a_champion_does_not_create_the_model_again(client, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # the store of ``client``
    counting = CountingCreates(tracking_uri=uri, registry_uri=uri)
    promote(counting, candidate(counting))
    assert counting.creates == 1
    outcome = promote(counting, candidate(counting), champion="1")
    assert outcome["version"] == "2" and current_version(client, NAME, ALIAS) == "2"
    assert current_version(client, NAME, PREVIOUS) == "1" and counting.creates == 1
    client.delete_registered_model_alias(NAME, ALIAS)  # with no champion, the model may be missing: ensure it
    assert promote(counting, candidate(counting))["version"] == "3" and counting.creates == 2


def test_a_forced_promotion_records_who_and_why(client):
    promote(client, candidate(client))
    outcome = promote(client, candidate(client), passed=False, champion="1", forced_by="bob")
    assert outcome["verdict"] == "forced" and current_version(client, NAME, ALIAS) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags[TAG_DECISION] == "forced" and tags["abalone.forced_by"] == "bob"
    assert tags["abalone.force_reason"] == "the old champion's artifacts were lost"


@pytest.mark.parametrize("delete", [True, False])
def test_an_alias_moved_or_deleted_since_evaluation_is_a_conflict_and_changes_nothing(client, delete):
    promote(client, candidate(client))
    judged_against_v1 = candidate(client)
    if delete:
        client.delete_registered_model_alias(NAME, ALIAS)
    else:
        promote(client, candidate(client), champion="1")  # v2 wins meanwhile
    before = versions(client), current_version(client, NAME, ALIAS)
    with pytest.raises(PromotionConflict, match="was removed after" if delete else "moved to v2 after"):
        promote(client, judged_against_v1, champion="1")
    assert (versions(client), current_version(client, NAME, ALIAS)) == before
    assert TAG_DECISION not in client.get_run(judged_against_v1["run_id"]).data.tags


def test_a_registered_model_deleted_since_evaluation_is_a_conflict_and_is_not_recreated(client):
    promote(client, candidate(client))
    judged_against_v1 = candidate(client)
    client.delete_registered_model(NAME)
    with pytest.raises(PromotionConflict, match="was removed after"):
        promote(client, judged_against_v1, champion="1")
    assert client.search_registered_models(f"name = '{NAME}'") == []
    assert TAG_DECISION not in client.get_run(judged_against_v1["run_id"]).data.tags


@pytest.fixture
def three_promotions(client):
    promote(client, candidate(client))
    promote(client, candidate(client), champion="1")
    promote(client, candidate(client), champion="2")
    assert current_version(client, NAME, ALIAS) == "3" and current_version(client, NAME, PREVIOUS) == "2"


def test_rollback_restores_the_previous_champion_once_per_airflow_run(client, three_promotions):
    outcome = roll_back(client)
    assert (outcome["from"], outcome["to"], outcome["already_done"]) == ("3", "2", False)
    assert current_version(client, NAME, ALIAS) == "2"
    assert current_version(client, NAME, PREVIOUS) == "1", "what v2 itself replaced"
    again = roll_back(client)  # a retry of the same Airflow run
    assert again["already_done"] and current_version(client, NAME, ALIAS) == "2"
    roll_back(client, key="rollback/r2")  # a new run steps one further back
    assert current_version(client, NAME, ALIAS) == "1" and current_version(client, NAME, PREVIOUS) is None


def test_rollback_to_a_named_version_and_its_errors(client, three_promotions):
    assert roll_back(client, to_version="1")["to"] == "1"
    assert current_version(client, NAME, ALIAS) == "1"
    with pytest.raises(RollbackError, match="v9 does not exist"):
        roll_back(client, key="rollback/r2", to_version="9")
    with pytest.raises(RollbackError, match="no previous champion"):
        roll_back(client, key="rollback/r3")
    with pytest.raises(RollbackError, match="needs a reason"):
        roll_back(client, key="rollback/r4", reason=" ")
    assert current_version(client, NAME, ALIAS) == "1"


def test_an_interrupted_rollback_is_completed_by_its_retry(client, three_promotions):
    plan = {"at": "2026-11-26T00:00:00+00:00", "from": "3", "to": "2", "previous_after": "1", "by": "alice"}
    plan |= {"reason": "r", "airflow_run": "rollback/r1", "status": "started"}
    client.set_registered_model_tag(NAME, rollback_tag("rollback/r1"), json.dumps(plan))  # then the worker died
    outcome = roll_back(client)
    assert not outcome["already_done"] and outcome["status"] == "done"
    assert current_version(client, NAME, ALIAS) == "2" and current_version(client, NAME, PREVIOUS) == "1"


def test_history_replays_promotions_and_rollbacks(client, three_promotions):
    roll_back(client)
    events = history(client, NAME)
    assert [(e["event"], e["version"], e["replaced"]) for e in events] == [
        ("promoted", "1", "none"),
        ("promoted", "2", "1"),
        ("promoted", "3", "2"),
        ("rollback", "2", "3"),
    ]
    assert events[-1]["by"] == "alice" and events[-1]["why"] == "v2 misbehaves in production"
    assert history(client, "no-such-model") == []


def test_a_promote_retry_after_a_rollback_does_not_move_the_alias_forward(client):
    promote(client, candidate(client))
    second = candidate(client)
    promote(client, second, champion="1")
    roll_back(client)  # an operator restores v1 before anyone retries run 2's promote task
    again = promote(client, second, champion="1")
    assert again["already_decided"] and current_version(client, NAME, ALIAS) == "1"


def test_an_interrupted_rollback_refuses_to_overwrite_a_newer_promotion(client, three_promotions):
    plan = {"at": "2026-11-26T00:00:00+00:00", "from": "3", "to": "2", "previous_after": "1", "by": "alice"}
    plan |= {"reason": "r", "airflow_run": "rollback/r1", "status": "started"}
    client.set_registered_model_tag(NAME, rollback_tag("rollback/r1"), json.dumps(plan))
    promote(client, candidate(client), champion="3")  # v4 is promoted while the rollback waits for its retry
    with pytest.raises(RollbackError, match="moved to v4 while this rollback"):
        roll_back(client)
    assert current_version(client, NAME, ALIAS) == "4"


def test_rolling_back_to_the_current_champion_changes_and_records_nothing(client, three_promotions):
    outcome = roll_back(client, to_version="3")
    assert outcome["status"] == "unchanged" and current_version(client, NAME, PREVIOUS) == "2"
    assert not [key for key in client.get_registered_model(NAME).tags if key.startswith("abalone.rollback.")]


def test_rollback_tags_of_similar_run_ids_do_not_collide():
    assert rollback_tag("d/manual__2026-11-26T02:00:00+00:00") != rollback_tag("d/manual__2026-11-26T02-00-00-00-00")
    assert len(rollback_tag("d/" + "x" * 500)) < 250


def test_a_version_whose_alias_never_moved_is_not_in_the_history(client):
    promote(client, candidate(client))
    cand = candidate(client)
    client.create_model_version(NAME, cand["model_uri"], run_id=cand["run_id"], tags={TAG_AIRFLOW_RUN: cand["airflow"]})
    assert [event["version"] for event in history(client, NAME)] == ["1"]
