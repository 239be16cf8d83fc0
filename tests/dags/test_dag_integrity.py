"""Every DAG file loads, follows the house conventions, and parses without heavy imports."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
HEAVY_MODULES = ("tensorflow", "keras", "mlflow", "boto3", "pandas", "sklearn")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_every_dag_file_imports_cleanly(dagbag):
    assert dagbag.import_errors == {}
    assert {dag.fileloc for dag in dagbag.dags.values()} == {str(p) for p in DAG_FILES}


def test_dag_id_is_the_file_stem(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


def test_conventions(dagbag):
    for dag in dagbag.dags.values():
        assert dag.tags, f"{dag.dag_id} has no tags"
        assert dag.max_active_runs == 1
        assert dag.catchup is False
        assert dag.doc_md and dag.doc_md.strip()
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{task.task_id} has no owner"
            assert task.retries >= 1, f"{task.task_id} has no retries"


def test_retraining_dag_shape(dagbag):
    dag = dagbag.dags["abalone_retraining"]
    assert dag.timetable.expression == "0 2 * * *"
    assert {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} == {
        "preflight": ["gate", "stage", "train"],  # train: whether forcing overrides an unchanged night
        "stage": ["evaluate", "gate", "promote", "summarize", "train"],
        "train": ["clean_up", "evaluate", "gate", "promote", "summarize"],
        "evaluate": ["clean_up", "gate"],
        "gate": ["promote", "summarize"],
        "promote": ["summarize"],
        "summarize": [],
        "clean_up": [],
    }
    # Push only when blessed: the gate branches, so a rejection or a dry run skips promote, and the
    # summary runs either way.
    assert dag.get_task("gate").task_type == "_BranchPythonDecoratedOperator"
    assert dag.get_task("summarize").trigger_rule == "none_failed"
    assert dag.get_task("gate").trigger_rule == "none_failed", "it records a night whose training was skipped"
    train = dag.get_task("train")
    assert train.pool == "gpu" and train.queue == "gpu"
    assert train.mount_tmp_dir is False
    assert isinstance(train.command, list), "the trainer command must be list-form, never a shell string"
    # A hung training gives the GPU back: both trainer tasks have a timeout (ABALONE_*_TIMEOUT_MINUTES).
    assert train.execution_timeout == timedelta(minutes=120)
    assert dag.get_task("evaluate").execution_timeout == timedelta(minutes=30)
    # The cleanup is a teardown, on the trainer queue (it reaches the trainers' Docker engine).
    clean_up = dag.get_task("clean_up")
    assert clean_up.is_teardown and clean_up.queue == "gpu"
    assert dag.get_task("promote").pool == "mlflow_registry", "promotions are serialised by a one-slot pool"
    (asset,) = dag.get_task("stage").outlets
    assert asset.name == asset.uri == "abalone_staged_dataset", "a URI no provider handles: no boto3 at parse time"
    # Failures of the run and of every task reach the notifiers (the log line at least).
    for callbacks in (dag.on_failure_callback, *(task.on_failure_callback for task in dag.tasks)):
        assert "LogFailure" in [type(callback).__name__ for callback in callbacks]


def test_the_graph_is_the_data_flow(dagbag):
    """Every edge carries an XCom (XComArgs, in the trainer commands too), but the teardown's, which has no data."""
    from airflow.sdk.definitions.xcom_arg import XComArg

    dag = dagbag.dags["abalone_retraining"]
    for task in dag.tasks:
        data_from = {operator.task_id for operator, _ in XComArg.iter_xcom_references(task)}
        if task.task_id == "clean_up":
            assert not data_from
        else:
            assert data_from == task.upstream_task_ids, task.task_id
    assert "xcom_pull" not in Path(dag.fileloc).read_text(), "XCom is passed as XComArgs, never as Jinja"
    evaluate = [str(part) for part in dag.get_task("evaluate").command]
    assert evaluate[evaluate.index("--candidate-run-id") + 1] == str(dag.get_task("train").output["run_id"])
    # The serialised DAG the scheduler runs has the same edges, and the same hash at every parse.
    from airflow.serialization.serialized_objects import DagSerialization

    serialised = DagSerialization.to_dict(dag)
    again = DagSerialization.to_dict(type(dagbag)(dag_folder=str(DAGS_DIR)).dags[dag.dag_id])
    assert json.dumps(serialised, sort_keys=True, default=str) == json.dumps(again, sort_keys=True, default=str)
    edges = {task.task_id: task.upstream_task_ids for task in dag.tasks}
    assert {task.task_id: task.upstream_task_ids for task in DagSerialization.from_dict(serialised).tasks} == edges


def test_the_tasks_people_open_have_extra_links_that_survive_serialisation(dagbag):
    from airflow.serialization.serialized_objects import OperatorSerialization

    dag = dagbag.dags["abalone_retraining"]
    links = {
        task.task_id: sorted(OperatorSerialization.serialize_operator(task).get("_operator_extra_links", {}))
        for task in dag.tasks
    }
    assert links == {
        "preflight": [],
        "stage": [],
        "train": ["MLflow run"],
        "evaluate": ["MLflow run"],
        "gate": ["Gate report"],
        "promote": ["Model version"],
        "summarize": [],
        "clean_up": [],
    }


def test_rollback_dag_is_manual_and_serialised(dagbag):
    dag = dagbag.dags["abalone_rollback"]
    assert not dag.timetable.can_be_scheduled, "rollbacks are triggered by hand, never scheduled"
    assert [t.task_id for t in dag.tasks] == ["rollback"]
    assert dag.get_task("rollback").pool == "mlflow_registry"


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("epochs", 5, 0),
        ("batch_size", 64, -1),
        ("learning_rate", 0.01, 0),
        ("learning_rate", 0.5, 1),
        ("source_uri", "s3://bucket/abalone.csv", "ftp://host/abalone.csv"),
        ("source_uri", "https://archive.ics.uci.edu/abalone.data", "https://"),
        ("gpu", True, "yes"),
        ("gate", {"max_rmse": 2.2}, {"max_rmse": 0}),
        ("gate", {"statistical_rule": "off", "prior_runs_tolerance": None}, {"statistical_rule": "vibes"}),
        ("gate", {"confidence": 0.99}, {"confidence": 0.97}),
        ("gate", {"slice_tolerance": 0.1}, {"slice_tolerance": -0.1}),
        ("gate", {"min_prior_runs": 5}, {"unknown_rule": 1}),
        ("dry_run", True, "no"),
        ("force_training", True, "yes"),
        ("force_reason", "the champion's artifacts were deleted", "x" * 1001),
    ],
)
def test_params_are_validated(dagbag, name, good, bad):
    from airflow.sdk.exceptions import ParamValidationError

    param = copy.deepcopy(dagbag.dags["abalone_retraining"].params.get_param(name))  # resolve() keeps the value
    assert param.resolve(good) == good
    with pytest.raises(ParamValidationError):
        param.resolve(bad)


def test_every_param_has_a_title_and_a_description(dagbag):
    for dag in dagbag.dags.values():
        for name in dag.params:
            param = dag.params.get_param(name)
            assert param.schema.get("title") and param.description, f"{dag.dag_id}.{name}"


def test_the_gate_param_accepts_exactly_the_policy(dagbag):
    from abalone_pipeline.gate import POLICY_SCHEMA, GatePolicy

    gate = dagbag.dags["abalone_retraining"].params.get_param("gate")
    assert GatePolicy.from_dict(gate.value) == GatePolicy.from_dict({}), "the form's default is the configured policy"
    assert gate.schema["properties"] == POLICY_SCHEMA["properties"], "the form shows each rule's bounds and meaning"
    assert all(rule["description"] for rule in gate.schema["properties"].values())


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [("to_version", "3", "v3"), ("to_version", "", "0"), ("reason", "bad model", "y" * 1001), ("reason", "x", "")],
)
def test_rollback_params_are_validated(dagbag, name, good, bad):
    from airflow.sdk.exceptions import ParamValidationError

    param = copy.deepcopy(dagbag.dags["abalone_rollback"].params.get_param(name))
    assert param.resolve(good) == good
    with pytest.raises(ParamValidationError):
        param.resolve(bad)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("store", ["file:///tmp/abalone-store", "s3://abalone-staging/pipeline"])
def test_parsing_imports_nothing_heavy(dag_file: Path, store: str):
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(dag_file)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    env = {**os.environ, "ABALONE_OBJECT_STORE_URI": store}  # production stores are s3://
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
