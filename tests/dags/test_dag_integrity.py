"""Every DAG file loads, follows the house conventions, and parses without heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
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
        "stage": ["promote", "train"],
        "train": ["evaluate", "promote"],
        "evaluate": ["gate"],
        "gate": ["promote"],
        "promote": [],
    }
    train = dag.get_task("train")
    assert train.pool == "gpu" and train.queue == "gpu"
    assert train.mount_tmp_dir is False and train.auto_remove == "force"
    assert isinstance(train.command, list), "the trainer command must be list-form, never a shell string"


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("epochs", 5, 0),
        ("batch_size", 64, -1),
        ("learning_rate", 0.01, 0),
        ("learning_rate", 0.5, 1),
        ("rmse_tolerance", 0.05, -0.01),
        ("source_uri", "s3://bucket/abalone.csv", "ftp://host/abalone.csv"),
        ("gpu", True, "yes"),
        ("max_test_rmse", 2.2, 0),
    ],
)
def test_params_are_validated(dagbag, name, good, bad):
    from airflow.sdk.exceptions import ParamValidationError

    param = dagbag.dags["abalone_retraining"].params.get_param(name)
    assert param.resolve(good) == good
    with pytest.raises(ParamValidationError):
        param.resolve(bad)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_parsing_imports_nothing_heavy(dag_file: Path):
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(dag_file)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
