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
