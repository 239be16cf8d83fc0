"""How large is a difference the gate should believe? Seeds of the same model, compared as the gate does.

Trains the default model with several seeds on the bundled data's reference staging split, then runs
the evaluation's paired bootstrap between every pair, overall and per slice. Two seeds are equally good
models by construction, so their differences show the noise the gate's thresholds must sit above.

    .venv/bin/python bench/gate_noise.py [--seeds 42 43 44] [--resamples 2000]

Prints a Markdown table; bench/RESULTS.md records a run with its machine and date.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()

    import numpy as np

    from abalone_contract.hyperparams import HyperParams
    from abalone_pipeline.config import BUNDLED_DATA
    from abalone_pipeline.objectstore import LocalStore
    from abalone_pipeline.staging import stage
    from abalone_trainer.data import load_staged, to_features, to_labels
    from abalone_trainer.model import predict
    from abalone_trainer.stats import SliceSpec, baseline_predictions, paired_bootstrap, regression_metrics
    from abalone_trainer.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        staged = stage(BUNDLED_DATA.read_bytes(), BUNDLED_DATA.as_uri(), LocalStore(Path(tmp)))
        data = load_staged(staged.manifest_uri)
    test = data.frames["test"]
    labels = to_labels(test).astype("float64")
    masks = {"all": np.ones(len(test), dtype=bool), **SliceSpec().masks(test)}

    predictions, seconds = {}, {}
    for seed in args.seeds:
        started = time.monotonic()
        model, _ = fit(data, replace(HyperParams(), seed=seed))
        seconds[seed] = time.monotonic() - started
        predictions[seed] = predict(model, to_features(test))
    baselines = baseline_predictions(data.frames["train"], test)

    print(f"dataset {data.dataset_id}, {len(test)} test rows, default HyperParams, {args.resamples} resamples\n")
    print("| model | test RMSE | train s |\n|---|---|---|")
    for seed in args.seeds:
        print(f"| seed {seed} | {regression_metrics(labels, predictions[seed])['rmse']:.4f} | {seconds[seed]:.1f} |")
    for name, values in baselines.items():
        print(f"| {name} baseline | {regression_metrics(labels, values)['rmse']:.4f} | |")

    print("\n| pair | slice | rows | RMSE diff | 95% interval | 99% interval |\n|---|---|---|---|---|---|")
    for a, b in itertools.combinations(args.seeds, 2):
        for name, mask in masks.items():
            result = paired_bootstrap(
                labels[mask], predictions[a][mask], predictions[b][mask], resamples=args.resamples
            )
            i95, i99 = result["intervals"]["0.95"], result["intervals"]["0.99"]
            print(
                f"| {a} vs {b} | {name} | {int(mask.sum())} | {result['rmse_diff']:+.4f} | "
                f"[{i95[0]:+.4f}, {i95[1]:+.4f}] | [{i99[0]:+.4f}, {i99[1]:+.4f}] |"
            )


if __name__ == "__main__":
    main()
