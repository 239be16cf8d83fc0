"""Command line of the trainer image: ``abalone-trainer train|evaluate``.

The last line a command prints to stdout is ``ABALONE_RESULT <json>``: the small result the DAG
validates (its shape is ``abalone_contract.results``). A failure prints ``ABALONE_ERROR <message>`` and
exits non-zero; exit code 3 means the input is bad and retrying cannot help, 4 that a newer attempt owns
the task (see ``abalone_trainer.fence``), 143 that the container was stopped (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from abalone_contract.constants import (
    BAD_INPUT_PREFIX,
    EVAL_SLICES,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_SUPERSEDED,
    EXIT_TERMINATED,
    SUPERSEDED_PREFIX,
    parse_slices,
)
from abalone_contract.hyperparams import HyperParams
from abalone_contract.results import error_line, result_line
from abalone_trainer import signals
from abalone_trainer.stats import SliceSpec

log = logging.getLogger("abalone_trainer")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _resamples(text: str) -> int:
    value = int(text)
    if value < 1000:
        raise argparse.ArgumentTypeError(f"a bootstrap needs at least 1000 resamples, got {value}")
    return value


def _units(text: str) -> tuple[int, ...]:
    try:
        return tuple(_positive_int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from exc


def _slices(text: str) -> SliceSpec:
    """``sex;rings:7,11`` -> slices by Sex and by the age bands <= 7, 8-11, >= 12; ``none`` -> no slices."""
    try:
        by_sex, bands = parse_slices(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    return SliceSpec(by_sex=by_sex, rings_bands=bands)


def build_parser() -> argparse.ArgumentParser:
    defaults = HyperParams()
    parser = argparse.ArgumentParser(prog="abalone-trainer", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI: http(s)://... or a SageMaker MLflow ARN (default: $MLFLOW_TRACKING_URI)",
    )
    parser.add_argument("--manifest-uri", required=True, help="staging manifest (file://, s3:// or a path)")
    parser.add_argument("--fence-uri", help="the task's fence (abalone_trainer.fence); none: no fencing")
    parser.add_argument("--attempt", help="this attempt's id, which the fence must name for it to go on")
    parser.add_argument("--fence-interval", type=float, default=5.0, help="seconds between periodic fence checks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a candidate and log it to MLflow")
    train.add_argument("--experiment", default=os.environ.get("ABALONE_EXPERIMENT", "abalone-retraining"))
    train.add_argument("--idempotency-key", required=True, help="one key per DAG run: a re-run reuses its run")
    train.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
    train.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    train.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    train.add_argument("--hidden-units", type=_units, default=defaults.hidden_units)
    train.add_argument("--dropout", type=float, default=defaults.dropout)
    train.add_argument("--patience", type=_positive_int, default=defaults.patience)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow run tag")

    evaluate = commands.add_parser("evaluate", help="score the candidate and the champion on the test split")
    evaluate.add_argument("--candidate-model-uri", required=True)
    evaluate.add_argument("--candidate-run-id", required=True, help="the candidate's MLflow run")
    evaluate.add_argument("--model-name", required=True)
    evaluate.add_argument("--alias", default="champion")
    evaluate.add_argument(
        "--slices",
        type=_slices,
        default=_slices(EVAL_SLICES),
        metavar="SPEC",
        help="slices to score: 'sex', 'rings:7,11' (upper edges of the age bands), both joined by ';', or 'none'",
    )
    evaluate.add_argument("--bootstrap-resamples", type=_resamples, default=2000, help="at least 1000")
    evaluate.add_argument("--bootstrap-seed", type=int, default=0)
    return parser


def _tags(pairs: Sequence[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag expects KEY=VALUE, got {pair!r}")
        tags[key] = value
    return tags


def run(args: argparse.Namespace) -> dict[str, Any]:
    from abalone_trainer.data import load_staged
    from abalone_trainer.fence import Fence

    fence = Fence(args.fence_uri, args.attempt, interval=args.fence_interval)

    if args.command == "train":
        from abalone_trainer.train import train_and_log

        hparams = HyperParams(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            hidden_units=args.hidden_units,
            dropout=args.dropout,
            patience=args.patience,
            seed=args.seed,
        )
        return train_and_log(
            load_staged(args.manifest_uri),
            hparams,
            experiment=args.experiment,
            idempotency_key=args.idempotency_key,
            tracking_uri=args.tracking_uri,
            tags=_tags(args.tag),
            fence=fence,
        )
    from abalone_trainer.evaluate import evaluate

    fence.check(required=True)
    result = evaluate(
        # The baselines are fitted on the training rows; nothing is fitted on the test rows.
        load_staged(args.manifest_uri, splits=("train", "test")),
        candidate_model_uri=args.candidate_model_uri,
        candidate_run_id=args.candidate_run_id,
        model_name=args.model_name,
        alias=args.alias,
        slices=args.slices,
        resamples=args.bootstrap_resamples,
        seed=args.bootstrap_seed,
        tracking_uri=args.tracking_uri,
    )
    fence.check(required=True)  # a superseded evaluation prints no result
    return result


def quiet_known_noise(tracking_uri: str | None) -> None:
    """Silence warnings that say nothing to an operator reading the task log."""
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
    if not (tracking_uri or "").startswith("arn:"):
        # sagemaker-mlflow's header provider assumes an ARN and warns on every request to an http:// server.
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)


def seed_matplotlib_cache() -> None:
    """Start matplotlib from the font list the image built (``ABALONE_MATPLOTLIB_CACHE``, see the Dockerfile).

    MPLCONFIGDIR is on the container's tmpfs, empty at start; without this, the first import of
    matplotlib (by MLflow or Keras as well as by the plots) scans the fonts again, about 10 s on a loaded host.
    """
    baked, target = os.environ.get("ABALONE_MATPLOTLIB_CACHE"), os.environ.get("MPLCONFIGDIR")
    if baked and target and os.path.isdir(baked) and not os.path.exists(target):
        import shutil

        shutil.copytree(baked, target)


def main(argv: Sequence[str] | None = None) -> int:
    seed_matplotlib_cache()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if not args.tracking_uri:
        message = f"{BAD_INPUT_PREFIX} no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI"
        log.error(message)
        print(error_line(message), flush=True)
        return EXIT_BAD_INPUT
    signals.install()
    quiet_known_noise(args.tracking_uri)
    from abalone_trainer.tracking import never_finish_at_exit

    never_finish_at_exit()
    from abalone_contract.hyperparams import InvalidHyperParams
    from abalone_trainer.data import DataError
    from abalone_trainer.fence import Superseded

    try:
        line = result_line(args.command, run(args))
    except Superseded as exc:
        signals.ignore()  # a stop now changes nothing: the run is already KILLED
        log.error("superseded: %s; exiting without finishing anything", exc)
        print(error_line(f"{SUPERSEDED_PREFIX} {exc}"), flush=True)
        return EXIT_SUPERSEDED
    except signals.Terminated as exc:
        log.error("%s %s", args.command, exc)
        print(error_line(f"{args.command} {exc}"), flush=True)
        return EXIT_TERMINATED
    except (DataError, InvalidHyperParams) as exc:
        log.error("bad input: %s", exc)
        print(error_line(f"{BAD_INPUT_PREFIX} {exc}"), flush=True)
        return EXIT_BAD_INPUT
    except Exception as exc:
        log.exception("%s failed", args.command)
        print(error_line(f"{args.command} failed: {type(exc).__name__}: {exc}"), flush=True)
        return EXIT_FAILED
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
