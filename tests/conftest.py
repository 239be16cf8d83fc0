"""Shared fixtures: the bundled data, and small copies of it for fast tests."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Airflow reads its home on first import: give the tests their own, never the user's ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="abalone-test-airflow-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pytest

from abalone_pipeline.config import BUNDLED_DATA

# Where MLflow keeps the URIs that ``mlflow.set_tracking_uri`` and ``set_registry_uri`` set in-process.
MLFLOW_URI_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
)


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """``mlflow.set_tracking_uri`` sets a process-wide URI and exports ``MLFLOW_TRACKING_URI``: one test's
    sqlite store must not become the next test's default (the DAGs' config refuses it, so a later parse
    would fail). Both the environment and MLflow's globals are put back as they were."""
    environment = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    globals_before = {
        (module, name): getattr(sys.modules[module], name) if module in sys.modules else None
        for module, name in MLFLOW_URI_GLOBALS
    }
    yield
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for (module, name), value in globals_before.items():
        if module in sys.modules:
            setattr(sys.modules[module], name, value)


@pytest.fixture(scope="session")
def abalone_bytes() -> bytes:
    return BUNDLED_DATA.read_bytes()


@pytest.fixture(scope="session")
def small_abalone(tmp_path_factory: pytest.TempPathFactory, abalone_bytes: bytes) -> Path:
    """The first 400 rows of the real file: enough for every split, fast to train on."""
    path = tmp_path_factory.mktemp("data") / "abalone-small.data"
    path.write_bytes(b"\n".join(abalone_bytes.splitlines()[:400]) + b"\n")
    return path
