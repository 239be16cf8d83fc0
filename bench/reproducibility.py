"""Does training twice on the same staged data with the same seed give the same model? (CPU)

Stages the bundled data, trains the default model twice with the same seed in fresh processes (so no
state is shared but the code and the data), and compares the test metrics and the predictions; then
once with another seed, to show that the comparison can tell models apart.

    .venv/bin/python bench/reproducibility.py [--seed 42]

Prints a Markdown table; bench/RESULTS.md records a run with its machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOLERANCE = 1e-6


def child(manifest_uri: str, seed: int, out: Path) -> None:
    """One training in this process: its test metrics and predictions go to ``out``."""
    from dataclasses import replace

    import numpy as np

    from abalone_contract.hyperparams import HyperParams
    from abalone_trainer.data import load_staged, to_features, to_labels
    from abalone_trainer.model import predict
    from abalone_trainer.stats import regression_metrics
    from abalone_trainer.train import fit

    data = load_staged(manifest_uri)
    test = data.frames["test"]
    started = time.monotonic()
    model, _ = fit(data, replace(HyperParams(), seed=seed))
    seconds = time.monotonic() - started
    predictions = predict(model, to_features(test))
    metrics = regression_metrics(to_labels(test).astype("float64"), predictions)
    np.save(out.with_suffix(".npy"), predictions)
    out.write_text(json.dumps({"metrics": metrics, "seconds": seconds}))


def train(manifest_uri: str, seed: int, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", manifest_uri, "--seed", str(seed), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seed, args.out)
        return

    import numpy as np

    from abalone_pipeline.config import BUNDLED_DATA
    from abalone_pipeline.objectstore import LocalStore
    from abalone_pipeline.staging import stage

    with tempfile.TemporaryDirectory() as tmp:
        staged = stage(BUNDLED_DATA.read_bytes(), BUNDLED_DATA.as_uri(), LocalStore(Path(tmp) / "store"))
        runs = {
            "first": train(staged.manifest_uri, args.seed, Path(tmp) / "first.json"),
            "second": train(staged.manifest_uri, args.seed, Path(tmp) / "second.json"),
            "other seed": train(staged.manifest_uri, args.seed + 1, Path(tmp) / "other.json"),
        }
        predictions = {
            name: np.load(Path(tmp) / f"{file}.npy")
            for name, file in (("first", "first"), ("second", "second"), ("other seed", "other"))
        }

    print(f"dataset {staged.dataset_id}, default HyperParams, seed {args.seed} (other: {args.seed + 1})\n")
    print("| training | test RMSE | test MAE | test R2 | train s |\n|---|---|---|---|---|")
    for name, run in runs.items():
        m = run["metrics"]
        print(f"| {name} | {m['rmse']:.8f} | {m['mae']:.8f} | {m['r2']:.8f} | {run['seconds']:.1f} |")
    print("\n| compared | max metric difference | max prediction difference | within 1e-6 |\n|---|---|---|---|")
    for other in ("second", "other seed"):
        metric_diff = max(abs(runs["first"]["metrics"][k] - runs[other]["metrics"][k]) for k in ("rmse", "mae", "r2"))
        prediction_diff = float(np.max(np.abs(predictions["first"] - predictions[other])))
        print(f"| first vs {other} | {metric_diff:.2e} | {prediction_diff:.2e} | {metric_diff <= TOLERANCE} |")


if __name__ == "__main__":
    main()
