from __future__ import annotations

import pytest

from abalone_pipeline.objectstore import LocalStore
from abalone_pipeline.staging import stage


@pytest.fixture(scope="session")
def small_manifest_uri(tmp_path_factory, small_abalone) -> str:
    """A staged copy of 400 real rows, as the stage task writes it."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    return stage(small_abalone.read_bytes(), small_abalone.as_uri(), store).manifest_uri


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A real MLflow store in SQLite; its default artifact root (./mlruns) lands in tmp_path too."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path}/mlflow.db"
