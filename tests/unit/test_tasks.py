from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from abalone_pipeline.config import Settings
from abalone_pipeline.tasks import promote_candidate


def test_a_candidate_trained_on_other_data_is_never_promoted():
    settings = Settings.from_env({"ABALONE_MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})  # never contacted
    candidate = {"run_id": "r1", "model_uri": "models:/m-1", "dataset_id": "aaaa"}
    decision = {"promote": True, "reasons": ["ok"], "candidate_rmse": 2.1}
    dag_run = SimpleNamespace(dag_id="abalone_retraining", run_id="manual__x", run_after="2026-11-26")
    with pytest.raises(AirflowFailException, match="trained on dataset aaaa, but this run staged bbbb"):
        promote_candidate(settings, candidate, decision, {"dataset_id": "bbbb", "manifest_uri": "m"}, dag_run)
