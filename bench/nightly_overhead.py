"""What does the nightly loop cost beyond the training itself?

Sets up the embedded default in a temporary directory exactly as ``make run`` does (``scripts/env.sh``:
a local MLflow server on SQLite, a ``file://`` object store, Airflow on SQLite, the trainer image on the
local Docker engine), then alternates:

- a **full DAG run**: ``airflow dags test abalone_retraining``, timed from the command's start to its exit
  (Airflow's start-up and DAG parse included), with each task's duration from Airflow's own records;
- the **trainer alone**: the training container the run's ``train`` task ran (its rendered command, read
  back from Airflow, with a fresh idempotency key so that it trains rather than reusing the run's
  candidate), started with ``docker run`` outside Airflow, same image, same data, same MLflow server.

The first DAG run has no champion (the first night); later ones score the candidate beside the champion,
as a nightly run does. The ratio uses the median of the later runs against the median of the trainer
alone. The trainer image bakes every dependency: nothing is installed when a container starts.

    .venv/bin/python bench/nightly_overhead.py [--runs 3]

Needs a Docker engine and the trainer image (``make image``). Prints Markdown tables; bench/RESULTS.md
records a run with its machine and date.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
# scripts/local_mlflow.py: the one way make run, the tests and the benchmarks start the local MLflow server.
sys.path.append(str(REPOSITORY / "scripts"))
local_mlflow = importlib.import_module("local_mlflow")
BIN = REPOSITORY / ".venv" / "bin"
TARGET_RATIO = 1.3
TASKS = ("preflight", "stage", "train", "evaluate", "gate", "promote", "summarize")


def embedded_env(local_dir: Path) -> dict[str, str]:
    """The environment ``make run`` uses (``scripts/env.sh``), rooted in ``local_dir``."""
    seed = {**os.environ, "ABALONE_LOCAL_DIR": str(local_dir), "ABALONE_MLFLOW_PORT": str(local_mlflow.free_port())}
    for name in [name for name in seed if name.startswith(("ABALONE_", "AIRFLOW_", "AIRFLOW__", "MLFLOW_"))]:
        if name not in ("ABALONE_LOCAL_DIR", "ABALONE_MLFLOW_PORT"):
            del seed[name]  # the bench measures the defaults, not this shell's overrides
    dump = subprocess.run(
        ["bash", "-c", f"source {REPOSITORY / 'scripts' / 'env.sh'} && env -0"],
        env=seed,
        check=True,
        capture_output=True,
    ).stdout
    return dict(item.split("=", 1) for item in dump.decode().split("\0") if "=" in item)


def prepare_airflow(env: dict[str, str]) -> None:
    Path(env["ABALONE_OBJECT_STORE_URI"].removeprefix("file://")).mkdir(parents=True)
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    for pool, description in (("gpu", "Trainer containers"), ("mlflow_registry", "Promotions")):
        subprocess.run([str(BIN / "airflow"), "pools", "set", pool, "1", description], env=env, check=True)


def dag_run(env: dict[str, str], log: Path) -> dict:
    """One ``airflow dags test``: its wall time and each task's duration from Airflow's database."""
    started = time.monotonic()
    with log.open("w") as out:
        status = subprocess.run(
            [str(BIN / "airflow"), "dags", "test", "abalone_retraining", "--conf", '{"force_training": true}'],
            env=env,
            stdout=out,
            stderr=out,
        ).returncode
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"the DAG run failed; see {log}")
    with closing(sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")) as db:
        run_id, run_start, run_end = db.execute(
            "select run_id, start_date, end_date from dag_run where dag_id = 'abalone_retraining' "
            "order by id desc limit 1"
        ).fetchone()
        tasks = {
            task: (state, _seconds(start, end))
            for task, state, start, end in db.execute(
                "select task_id, state, start_date, end_date from task_instance where run_id = ?", (run_id,)
            )
        }
        (rendered,) = db.execute(
            "select rendered_fields from rendered_task_instance_fields where run_id = ? and task_id = 'train'",
            (run_id,),
        ).fetchone()
        summary, staged = (
            json.loads(
                db.execute(
                    "select value from xcom where run_id = ? and task_id = ? and key = 'return_value'", (run_id, task)
                ).fetchone()[0]
            )
            for task in ("summarize", "stage")
        )
    return {
        "run_id": run_id,
        "wall": wall,
        "dag_run": _seconds(run_start, run_end),
        "tasks": tasks,
        "train_command": json.loads(rendered)["command"],
        "verdict": summary["outcome"],  # which path the run took
        "staging": sum(staged["seconds"].values()),  # staging's own work, inside the stage task
    }


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def trainer_alone(env: dict[str, str], command: list[str], key: str) -> float:
    """The train task's container command under ``docker run``, outside Airflow; its wall time."""
    command = list(command)
    command[command.index("--idempotency-key") + 1] = key
    # Its own experiment: its runs must not count as the next DAG run's prior runs.
    command[command.index("--experiment") + 1] += "-trainer-alone"
    store = env["ABALONE_OBJECT_STORE_URI"].removeprefix("file://")
    docker = [
        "docker",
        "run",
        "--rm",
        "--network",
        "host",
        "--volume",
        f"{store}:{store}",
        "--env",
        f"MLFLOW_TRACKING_URI={env['ABALONE_MLFLOW_TRACKING_URI']}",
        "--env",
        "TF_CPP_MIN_LOG_LEVEL=2",
        "--entrypoint",
        "abalone-trainer",
        env["ABALONE_TRAINER_IMAGE"],
        *command,
    ]
    started = time.monotonic()
    result = subprocess.run(docker, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0 or "ABALONE_RESULT" not in result.stdout:
        raise SystemExit(f"the trainer alone failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="DAG runs (the first has no champion); at least 2")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2: the first run has no champion to compare with")

    with tempfile.TemporaryDirectory(prefix="abalone-overhead-") as tmp:
        env = embedded_env(Path(tmp))
        # As ``make run`` starts it: the port env.sh put in the tracking URI, the same directory.
        with local_mlflow.server(Path(tmp) / "mlflow", int(env["ABALONE_MLFLOW_PORT"]), env=env):
            prepare_airflow(env)
            runs, alone = [], []
            for index in range(args.runs):
                runs.append(dag_run(env, Path(tmp) / f"run-{index}.log"))
                alone.append(trainer_alone(env, runs[-1]["train_command"], f"bench/trainer-alone-{index}"))
                print(
                    f"  run {index + 1}: DAG {runs[-1]['wall']:.1f} s ({runs[-1]['verdict']}), "
                    f"trainer alone {alone[-1]:.1f} s",
                    flush=True,
                )

    print(f"\nimage {env['ABALONE_TRAINER_IMAGE']}; {args.runs} DAG runs, each followed by the trainer alone\n")
    print(
        "| run | champion | dags test s | DAG run s | "
        + " | ".join(f"{task} s" for task in TASKS)
        + " | trainer alone s |\n|"
        + "---|" * (len(TASKS) + 5)
    )
    for index, (run, seconds) in enumerate(zip(runs, alone, strict=True)):
        durations = " | ".join(f"{run['tasks'][task][1]:.1f}" for task in TASKS)
        champion = "none (first night)" if index == 0 else "yes"
        print(f"| {index + 1} | {champion} | {run['wall']:.1f} | {run['dag_run']:.1f} | {durations} | {seconds:.1f} |")

    nightly = statistics.median(run["wall"] for run in runs[1:])
    dag_only = statistics.median(run["dag_run"] for run in runs[1:])
    alone_median = statistics.median(alone)  # the trainer alone does not depend on a champion: all runs
    ratio = nightly / alone_median
    print(
        f"\nNightly run (median of runs 2-{args.runs}, the whole `dags test` command): {nightly:.1f} s; trainer "
        f"alone (median of {len(alone)}): {alone_median:.1f} s; ratio {ratio:.2f} (target <= {TARGET_RATIO}: "
        f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}). Counting only the DAG run as Airflow records it "
        f"(without the command's start-up): {dag_only:.1f} s, {dag_only / alone_median:.2f}x."
    )
    steady = runs[1:]
    print("\n| task | median s | share of the nightly run |\n|---|---|---|")
    for task in TASKS:
        median = statistics.median(run["tasks"][task][1] for run in steady)
        print(f"| {task} | {median:.1f} | {median / nightly:.0%} |")
        if task == "stage":
            own = statistics.median(run["staging"] for run in steady)
            print(f"| (of which staging's own work: scan, assemble, write) | {own:.1f} | {own / nightly:.0%} |")
    between = statistics.median(run["wall"] - sum(run["tasks"][task][1] for task in TASKS) for run in steady)
    print(f"| (Airflow start-up, parse, scheduling) | {between:.1f} | {between / nightly:.0%} |")


if __name__ == "__main__":
    main()
