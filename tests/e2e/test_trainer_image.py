"""The trainer image starts ready: its packages are installed and their bytecode compiled at build time."""

from __future__ import annotations

import json
import subprocess

from tests.e2e.conftest import TRAINER_IMAGE

# Imports what a train or evaluate container imports, then lists the modules whose source has no
# compiled bytecode beside it: with PYTHONDONTWRITEBYTECODE those are compiled again at every start.
PROBE = """
import importlib.util, json, os, sys
import abalone_trainer.cli, abalone_trainer.train, abalone_trainer.evaluate, mlflow.pyfunc, tensorflow, keras
sources = [m.__file__ for m in list(sys.modules.values()) if (getattr(m, "__file__", None) or "").endswith(".py")]
print(json.dumps({
    "modules": len(sources),
    "uncompiled": [s for s in sources if not os.path.exists(importlib.util.cache_from_source(s))],
    "dont_write_bytecode": sys.dont_write_bytecode,
}))
"""


def probe(*docker_args: str) -> dict:
    result = subprocess.run(
        ["docker", "run", "--rm", *docker_args, "--entrypoint", "python", TRAINER_IMAGE, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_module_a_container_imports_is_compiled_in_the_image(docker_engine):
    found = probe()
    assert found["dont_write_bytecode"], "the image should not write bytecode at run time"
    assert found["modules"] > 1000  # TensorFlow, Keras, MLflow and the trainer were imported
    assert found["uncompiled"] == []


def test_the_image_needs_no_network_to_start(docker_engine):
    # Nothing is installed at container start: the imports succeed with networking switched off.
    assert probe("--network", "none")["uncompiled"] == []


def test_an_orphan_on_a_host_airflow_cannot_reach_stops_itself_when_superseded(
    docker_engine, s3, s3_endpoint, mlflow_server
):
    """The Celery case without Airflow: a trainer whose try was replaced elsewhere reads the fence and stops,
    without finishing its MLflow run (a newer attempt marks it KILLED)."""
    import time

    from mlflow.tracking import MlflowClient

    from abalone_pipeline import attempts
    from abalone_pipeline.objectstore import S3Store
    from abalone_pipeline.staging import stage

    from .conftest import AWS_ENV, ROOT, STAGING_BUCKET

    store = S3Store(STAGING_BUCKET, "fencing", s3)
    manifest = stage((ROOT / "include" / "data" / "abalone.data").read_bytes(), "abalone.data", store).manifest_uri
    key = attempts.fence_key("abalone_retraining", "fencing-run", "train")
    fence = attempts.claim(store, key, "try1-orphan")
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint, "ABALONE_TRAINER_EPOCH_DELAY_SECONDS": "1"}
    command = ["docker", "run", "-d", "--network", "host", "--init"]
    command += [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
    command += [TRAINER_IMAGE, "--tracking-uri", mlflow_server, "--manifest-uri", manifest, "--fence-uri", fence]
    command += ["--attempt", "try1-orphan", "--fence-interval", "0", "train", "--experiment", "abalone-fencing"]
    command += ["--idempotency-key", "abalone_retraining/fencing-run", "--epochs", "60", "--batch-size", "256"]
    container = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    client = MlflowClient(mlflow_server)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("abalone-fencing")
            found = client.search_runs([experiment.experiment_id]) if experiment else []
            if found and len(client.get_metric_history(found[0].info.run_id, "loss")) >= 2:
                break
            time.sleep(1)
        else:
            raise AssertionError("the trainer never got to its second epoch")
        attempts.claim(store, key, "try2-elsewhere")  # a retry on another host claims the task
        exit_code = int(
            subprocess.run(["docker", "wait", container], capture_output=True, text=True, timeout=60).stdout
        )
        output = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    assert exit_code == 4, output
    assert "ABALONE_ERROR superseded: attempt try1-orphan was superseded by try2-elsewhere" in output
    (run,) = found
    history = client.get_metric_history(run.info.run_id, "loss")
    assert client.get_run(run.info.run_id).info.status == "KILLED", "a superseded attempt never finishes its run"
    assert len(history) < 60, "it stopped within an epoch or so, not at the end of training"
