"""What the gate and registry steps cost as MLflow's history grows: 100, 1,000 and 10,000 prior runs and versions.

Starts a real ``mlflow server`` (SQLite backend and local proxied artifacts in a temporary directory, one
worker, started and awaited on /health by scripts/local_mlflow.py, as make run and the tests start it) and
times the project's own functions talking to it over HTTP through ``MlflowClient``, as in production: the
trainer's idempotency checks, its champion lookup and prior-runs query, the pure gate, and the Airflow
side's registry writes and reads. Model scoring is left out. Each step is timed ``--repeat`` times after
one warm-up, the steps interleaved so that a noisy moment hits them all alike; the table gives medians.

History is written in this process, straight into the server's SQLite file while the server is idle, with
MLflow's own table models (``mlflow.store.tracking.dbmodels``, ``mlflow.store.model_registry.dbmodels``) and
SQLAlchemy bulk inserts: the store's one-run-at-a-time API costs about 30 ms a run here, too slow for
10,000 runs and versions. Each prior run looks like a trainer run whose candidate was promoted: the
tags ``train_and_log`` sets (idempotency key, dataset id, manifest URI, code revision, Airflow ids, model
URI), the decision tags ``apply_decision`` adds, its params and final metrics, status FINISHED, start
times one hour apart, and a logged model as its output. Datasets come in short streaks (a new one with
probability 0.6 per run, else the previous run's), as nightly data does. Each prior run has a version of
one registered model carrying the tags ``apply_decision`` writes (``abalone.airflow_run`` unique per
version); 1 in 50 was forced, 1 in 100 was registered but its promotion never finished (no decision
tag), and the champion and previous-champion aliases point at the newest promoted two. Rejections add no
version, so they appear only among the fresh candidates the steps use. Per-epoch metric histories are
cut to their last epoch (one value per key), and dataset inputs (``log_input``) are not written: MLflow
reads those only for the runs a search returns, by an indexed lookup.

The levels are approximate: each level adds 2 x (repeat + 1) + 2 fresh candidate runs, which stay, and
each timed promotion registers a version. "One nightly run" adds up the medians of the steps a nightly
run takes (train, evaluate with tonight's new data, gate, promote or reject).

    .venv/bin/python bench/gate_cost.py [--levels 100 1000 10000] [--repeat 7] [--tag-indexes]

Prints the population, a Markdown table of median milliseconds per step and size, and a verdict against
the target: the largest level within 1.2x of the smallest, for every step and for one nightly run.
``--tag-indexes`` first adds indexes on the (key, value) of run tags and model-version tags to the
server's database, as an operator could: MLflow's schema has none, so each tag equality scans the tags
of every run or version.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# scripts/local_mlflow.py: the one way make run, the tests and the benchmarks start the local MLflow server.
sys.path.append(str(Path(__file__).resolve().parents[1] / "scripts"))
local_mlflow = importlib.import_module("local_mlflow")

TARGET_RATIO = 1.2
EXPERIMENT = "abalone-gate-cost"
MODEL_NAME = "abalone-gate-cost"
ALIAS, PREVIOUS_ALIAS = "champion", "previous_champion"
DAG_ID = "abalone_retraining"
HOUR_MS = 3_600_000
SLICES = ("sex=M", "sex=F", "sex=I", "rings<=7", "rings=8-11", "rings>=12")
# What --tag-indexes adds: MLflow's schema indexes tags by (key, run) only, so a tag equality scans every run.
TAG_INDEXES = """
CREATE INDEX bench_tags_key_value ON tags ("key", value);
CREATE INDEX bench_model_version_tags_key_value ON model_version_tags (workspace, "key", value);
"""


def evaluation(
    candidate: float, champion: str | None, champion_rmse: float, interval: tuple[float, float], prior: dict
) -> dict[str, Any]:
    """An evaluation as ``abalone_contract.results.parse_evaluation`` returns it (as tests/unit/test_gate.py builds)."""

    def metrics(rmse: float) -> dict[str, float]:
        return {"test_rmse": rmse, "test_mae": rmse * 0.7, "test_r2": 0.55, "test_mse": rmse**2}

    def comparison(low: float, high: float) -> dict[str, Any]:
        levels = {level: [low, high] for level in ("0.8", "0.9", "0.95", "0.99")}
        return {"rmse_diff": (low + high) / 2, "intervals": levels, "p_better": 0.9 if high < 0 else 0.1}

    result = {
        "dataset_id": "0123456789abcdef",
        "test_rows": 836,
        "bootstrap": {"resamples": 2000, "seed": 0, "levels": ["0.8", "0.9", "0.95", "0.99"]},
        "candidate": {
            "model_uri": "models:/m-candidate",
            "run_id": "run-candidate",
            "metrics": metrics(candidate),
            "slices": {name: {"rmse": candidate, "rows": 139} for name in SLICES},
            "non_finite_predictions": 0,
        },
        "champion": None,
        "comparison": None,
        "baselines": {"mean": metrics(3.2), "linear": metrics(2.3)},
        "prior_runs": prior,
    }
    if champion is not None:
        result["champion"] = {
            "version": champion,
            "run_id": "run-champion",
            "model_uri": f"models:/{MODEL_NAME}/{champion}",
            "metrics": metrics(champion_rmse),
            "slices": {name: {"rmse": champion_rmse, "rows": 139} for name in SLICES},
        }
        result["comparison"] = {
            "overall": comparison(*interval),
            "slices": {name: comparison(interval[0] - 0.1, interval[1] + 0.1) for name in SLICES},
        }
    return result


class History:
    """Writes prior runs, their logged models and registered versions into the server's SQLite file."""

    TABLES = (  # parents first, for the foreign keys
        "runs",
        "tags",
        "params",
        "metrics",
        "latest_metrics",
        "logged_models",
        "inputs",
        "model_versions",
        "model_version_tags",
    )

    def __init__(self, db_uri: str, experiment_id: str, reasons: str, seed: int = 0) -> None:
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

        self.tracking = TrackingStore(db_uri, "mlflow-artifacts:/")
        self.registry = RegistryStore(db_uri)
        self.experiment_id = experiment_id
        self.artifact_root = self.tracking.get_experiment(experiment_id).artifact_location
        self.reasons = reasons  # a real gate summary, as apply_decision writes it
        self.rng = random.Random(seed)
        self.t0 = int(time.time() * 1000) - 20_000 * HOUR_MS
        self.written = 0  # runs written so far, prior or candidate: it orders their start times
        self.dataset = self.new_dataset()
        self.last_airflow_run = ""
        self.max_version = 0
        self.champion: str | None = None
        self.previous: str | None = None

    def new_dataset(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def _id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def counts(self) -> tuple[int, int]:
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
        from mlflow.store.tracking.dbmodels.models import SqlRun

        with self.tracking.ManagedSessionMaker() as session:
            return session.query(SqlRun).count(), session.query(SqlModelVersion).count()

    def _write(self, rows: dict[str, list]) -> None:
        from mlflow.store.model_registry.dbmodels import models as registry_models
        from mlflow.store.tracking.dbmodels import models as tracking_models
        from sqlalchemy import insert

        models = {
            "runs": tracking_models.SqlRun,
            "tags": tracking_models.SqlTag,
            "params": tracking_models.SqlParam,
            "metrics": tracking_models.SqlMetric,
            "latest_metrics": tracking_models.SqlLatestMetric,
            "logged_models": tracking_models.SqlLoggedModel,
            "inputs": tracking_models.SqlInput,
            "model_versions": registry_models.SqlModelVersion,
            "model_version_tags": registry_models.SqlModelVersionTag,
        }
        with self.tracking.ManagedSessionMaker(read_only=False) as session:
            for table in self.TABLES:
                if rows[table]:
                    session.execute(insert(models[table]), rows[table])

    def _run(self, rows: dict[str, list], dataset: str, decision: str | None = None) -> dict[str, str]:
        """One trainer run's rows; with a ``decision`` ("promoted", "forced" or "interrupted"), its version's too."""
        from abalone_contract.constants import TAG_IDEMPOTENCY_KEY
        from abalone_contract.hyperparams import HyperParams
        from abalone_pipeline import registry

        run_id, model_id = self._id(), f"m-{self._id()}"
        start = self.t0 + self.written * HOUR_MS
        self.written += 1
        after = datetime.fromtimestamp(start / 1000, UTC).isoformat(timespec="milliseconds")
        airflow_run_id = f"scheduled__{after}"
        revision = hashlib.sha1(str(self.written // 200).encode()).hexdigest()
        manifest = f"s3://abalone-staging/pipeline/datasets/abalone/{dataset}/manifest.json"
        run_url = f"http://localhost:8080/dags/{DAG_ID}/runs/{airflow_run_id}"
        model_location = f"{self.artifact_root}/models/{model_id}/artifacts"
        rmse, epochs = self.rng.gauss(2.1, 0.04), self.rng.randint(60, 100)
        tags = {
            "mlflow.runName": f"nightly-{self.written}",
            "mlflow.user": "trainer",
            "mlflow.source.name": "/usr/local/bin/abalone-trainer",
            "mlflow.source.type": "LOCAL",
            TAG_IDEMPOTENCY_KEY: f"{DAG_ID}/{airflow_run_id}",
            "abalone.dataset_id": dataset,
            "abalone.manifest_uri": manifest,
            "abalone.code_revision": revision,
            "airflow.dag_id": DAG_ID,
            "airflow.run_id": airflow_run_id,
            "abalone.model_uri": f"models:/{model_id}",
            "airflow.run_url": run_url,
        }
        final = {
            "test_rmse": rmse,
            "test_mae": rmse * 0.72,
            "test_r2": 0.55,
            "test_mse": rmse**2,
            "epochs_run": float(epochs),
            "best_epoch": float(epochs - 20),
            "train_seconds": self.rng.uniform(40, 90),
            "data_data_rows": 4177.0,
            "data_valid_rows": 4177.0,
            "data_quarantined_rows": 0.0,
        }
        # The keys Keras reports each epoch: only the last epoch's values are written.
        last_epoch = {"loss": rmse**2, "rmse": rmse, "val_loss": rmse**2, "val_rmse": rmse, "learning_rate": 5e-4}
        version = None
        if decision is not None:
            version = self.max_version + 1
            self.max_version = version
            verdict = "forced" if decision == "forced" else "promoted"
            if decision != "interrupted":
                tags |= {
                    registry.TAG_VERSION: str(version),
                    registry.TAG_REASONS: self.reasons,
                    registry.TAG_DECISION: verdict,
                }
        rows["runs"].append(
            {
                "run_uuid": run_id,
                "name": tags["mlflow.runName"],
                "source_type": "UNKNOWN",
                "source_name": "",
                "entry_point_name": "",
                "user_id": "trainer",
                "status": "FINISHED",
                "start_time": start,
                "end_time": start + 60_000 + epochs * 500,
                "deleted_time": None,
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": f"{self.artifact_root}/{run_id}/artifacts",
                "experiment_id": int(self.experiment_id),
            }
        )
        rows["tags"] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()]
        params = {**HyperParams().as_params(), "dataset_id": dataset}
        rows["params"] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in params.items()]
        for values, step in ((final, 0), (last_epoch, epochs - 1)):
            for key, value in values.items():
                metric = {"key": key, "value": value, "timestamp": start, "step": step, "is_nan": False}
                rows["metrics"].append({**metric, "run_uuid": run_id})
                rows["latest_metrics"].append({**metric, "run_uuid": run_id})
        rows["logged_models"].append(
            {
                "model_id": model_id,
                "experiment_id": int(self.experiment_id),
                "name": "model",
                "artifact_location": model_location,
                "creation_timestamp_ms": start,
                "last_updated_timestamp_ms": start,
                "status": 2,  # LoggedModelStatus.READY.to_int()
                "lifecycle_stage": "active",
                "source_run_id": run_id,
            }
        )
        rows["inputs"].append(
            {
                "input_uuid": self._id(),
                "source_type": "RUN_OUTPUT",
                "source_id": run_id,
                "destination_type": "MODEL_OUTPUT",
                "destination_id": model_id,
                "step": 0,
            }
        )
        if version is not None:
            airflow_run = f"{DAG_ID}/{airflow_run_id}"
            version_tags = {
                registry.TAG_AIRFLOW_RUN: airflow_run,
                "airflow.dag_id": DAG_ID,
                "airflow.run_id": airflow_run_id,
                "airflow.run_after": after,
                "airflow.try_number": "1",
                "airflow.triggered_by": "airflow (scheduled)",
                "abalone.dataset_id": dataset,
                "abalone.manifest_uri": manifest,
                "abalone.source_uri": "s3://abalone-source/abalone.data",
                "abalone.source_sha256": hashlib.sha256(dataset.encode()).hexdigest(),
                "abalone.trainer_image": "abalone-trainer:latest",
                "abalone.trainer_image_id": f"sha256:{hashlib.sha256(revision.encode()).hexdigest()}",
                "abalone.trainer_image_digest": "none (built locally, never pushed)",
                "abalone.code_revision": revision,
                "mlflow.run_id": run_id,
                "airflow.run_url": run_url,
                registry.TAG_REASONS: self.reasons,
                registry.TAG_REPORT: f"runs:/{run_id}/{registry.REPORT_MARKDOWN}",
                registry.TAG_PREVIOUS_CHAMPION: self.champion or "none",
            }
            if decision == "forced":
                version_tags |= {
                    registry.TAG_FORCED_BY: "alice",
                    registry.TAG_FORCE_REASON: "artifacts lost",
                }
            if decision != "interrupted":
                version_tags |= {registry.TAG_PROMOTED_AT: after, registry.TAG_DECISION: verdict}
                self.previous, self.champion = self.champion, str(version)
            rows["model_versions"].append(
                {
                    "name": MODEL_NAME,
                    "version": version,
                    "creation_time": start,
                    "last_updated_time": start,
                    "current_stage": "None",
                    "source": f"models:/{model_id}",
                    "storage_location": model_location,
                    "run_id": run_id,
                    "status": "READY",
                }
            )
            rows["model_version_tags"] += [
                {"key": k, "value": v, "name": MODEL_NAME, "version": version} for k, v in version_tags.items()
            ]
            self.last_airflow_run = airflow_run
        return {"run_id": run_id, "model_uri": f"models:/{model_id}", "dataset_id": dataset}

    def add_prior_runs(self, count: int, batch: int = 2000) -> None:
        """``count`` more nightly runs whose candidates were promoted; the aliases follow the newest two."""
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
        from sqlalchemy import func

        from abalone_pipeline.registry import current_version

        if count <= 0:
            return
        with self.registry.ManagedSessionMaker() as session:
            self.max_version = session.query(func.max(SqlModelVersion.version)).scalar() or 0
        self.champion, self.previous = current_version(self.registry, MODEL_NAME, ALIAS), None
        for start in range(0, count, batch):
            rows: dict[str, list] = {table: [] for table in self.TABLES}
            for _ in range(min(batch, count - start)):
                if self.rng.random() < 0.6:
                    self.dataset = self.new_dataset()
                draw = self.rng.random()
                self._run(rows, self.dataset, "interrupted" if draw < 0.01 else "forced" if draw < 0.03 else "promoted")
            self._write(rows)
        if self.previous:
            self.registry.set_registered_model_alias(MODEL_NAME, PREVIOUS_ALIAS, self.previous)
        self.registry.set_registered_model_alias(MODEL_NAME, ALIAS, self.champion)

    def candidates(self, count: int, dataset: str | None = None) -> list[dict[str, str]]:
        """Fresh finished candidate runs, newer than all others and undecided, on ``dataset`` or each on a new one."""
        rows: dict[str, list] = {table: [] for table in self.TABLES}
        made = [self._run(rows, dataset or self.new_dataset()) for _ in range(count)]
        self._write(rows)
        return made


def audit_tags(candidate: dict[str, str], airflow_run_id: str) -> dict[str, str]:
    """The tags ``tasks.audit_tags`` gives ``apply_decision``."""
    from abalone_pipeline import registry

    return {
        registry.TAG_AIRFLOW_RUN: f"{DAG_ID}/{airflow_run_id}",
        "airflow.dag_id": DAG_ID,
        "airflow.run_id": airflow_run_id,
        "airflow.run_after": "2026-11-26T02:00:00+00:00",
        "airflow.try_number": "1",
        "airflow.triggered_by": "airflow (manual)",
        "abalone.dataset_id": candidate["dataset_id"],
        "abalone.manifest_uri": f"s3://abalone-staging/pipeline/datasets/abalone/{candidate['dataset_id']}/manifest.json",
        "abalone.source_uri": "s3://abalone-source/abalone.data",
        "abalone.source_sha256": hashlib.sha256(candidate["dataset_id"].encode()).hexdigest(),
        "abalone.trainer_image": "abalone-trainer:latest",
        "abalone.trainer_image_id": "sha256:0",
        "abalone.trainer_image_digest": "none (built locally, never pushed)",
        "abalone.code_revision": "unknown",
        "mlflow.run_id": candidate["run_id"],
        "airflow.run_url": f"http://localhost:8080/dags/{DAG_ID}/runs/{airflow_run_id}",
    }


# Steps one nightly run performs, in order; the promotion or the rejection is added to them.
NIGHTLY = (
    "train: tracking.ensure_experiment",
    "train: tracking.find_finished_run",
    "train: tracking.close_running_runs",
    "evaluate: evaluate.resolve_champion",
    "evaluate: evaluate.prior_runs, new dataset (falls back to any)",
    "gate: gate.decide",
)
PROMOTED = "promote: registry.apply_decision, promoted"
REJECTED = "promote: registry.apply_decision, rejected"


def measure(uri: str, history: History, level: int, repeat: int) -> dict[str, float]:
    """Median seconds of each step at the current size of history, after one warm-up round."""
    from abalone_contract.tracking import close_running_runs, mlflow_client
    from abalone_pipeline import registry
    from abalone_pipeline.gate import GatePolicy, decide
    from abalone_pipeline.gate_report import render
    from abalone_trainer import evaluate, tracking

    trainer = tracking.configure(uri)
    client = mlflow_client(uri)
    policy = GatePolicy()
    to_promote, to_reject = history.candidates(repeat + 1), history.candidates(repeat + 1)
    same = history.candidates(1, dataset=history.dataset)[0]  # its dataset is the newest prior runs'
    new = history.candidates(1)[0]  # tonight's data, seen by no prior run
    key = f"{DAG_ID}/manual__gate-cost-{level}"

    # The populated history must be what the project's queries see, or the timings mean nothing.
    any_prior = evaluate.prior_runs(trainer, new["run_id"], new["dataset_id"])
    same_prior = evaluate.prior_runs(trainer, same["run_id"], same["dataset_id"])
    assert any_prior["basis"] == "any dataset" and any_prior["count"] == evaluate.PRIOR_RUNS, any_prior
    assert same_prior["basis"] == "same dataset", same_prior
    assert registry.registered_version(client, MODEL_NAME, history.last_airflow_run) is not None
    assert len(registry.history(client, MODEL_NAME)) >= 90
    champion = registry.current_version(client, MODEL_NAME, ALIAS)
    assert champion is not None

    def judged(rmse: float, interval: tuple[float, float]):
        """The decision on a candidate evaluated against the champion of the moment."""
        found = evaluation(rmse, registry.current_version(client, MODEL_NAME, ALIAS), 2.15, interval, any_prior)
        return decide(found, policy), found

    def apply(candidates: list[dict[str, str]], rmse: float, interval: tuple[float, float], promote: bool):
        def prepare(rep: int) -> Callable[[], Any]:
            candidate = candidates[rep]
            decision, found = judged(rmse, interval)
            assert decision.promote is promote, decision.summary()
            tags = audit_tags(candidate, f"manual__gate-cost-{level}-{rep}-{promote}")
            report = render(decision, found, tags)

            def call() -> None:  # the gate task records the report, the promote task the rest
                registry.record_report(client, candidate["run_id"], decision, report)
                outcome = registry.apply_decision(
                    client,
                    model_name=MODEL_NAME,
                    alias=ALIAS,
                    previous_alias=PREVIOUS_ALIAS,
                    candidate=candidate,
                    decision=decision,
                    audit_tags=tags,
                )
                assert outcome["promoted"] is promote and "already_decided" not in outcome, outcome

            return call

        return prepare

    def fixed(call: Callable[[], Any]) -> Callable[[int], Callable[[], Any]]:
        return lambda rep: call

    gate_input = evaluation(2.05, champion, 2.15, (-0.2, -0.1), any_prior)
    steps: dict[str, Callable[[int], Callable[[], Any]]] = {
        "train: tracking.ensure_experiment": fixed(lambda: tracking.ensure_experiment(trainer, EXPERIMENT)),
        "train: tracking.find_finished_run": fixed(
            lambda: tracking.find_finished_run(trainer, history.experiment_id, key, new["dataset_id"])
        ),
        "train: tracking.close_running_runs": fixed(lambda: close_running_runs(trainer, history.experiment_id, key)),
        "evaluate: evaluate.resolve_champion": fixed(lambda: evaluate.resolve_champion(trainer, MODEL_NAME, ALIAS)),
        "evaluate: evaluate.prior_runs, same dataset": fixed(
            lambda: evaluate.prior_runs(trainer, same["run_id"], same["dataset_id"])
        ),
        "evaluate: evaluate.prior_runs, new dataset (falls back to any)": fixed(
            lambda: evaluate.prior_runs(trainer, new["run_id"], new["dataset_id"])
        ),
        "gate: gate.decide": fixed(lambda: decide(gate_input, policy)),
        PROMOTED: apply(to_promote, 2.0, (-0.2, -0.1), promote=True),
        REJECTED: apply(to_reject, 2.3, (0.05, 0.25), promote=False),
        "registry.registered_version": fixed(
            lambda: registry.registered_version(client, MODEL_NAME, f"{DAG_ID}/manual__not-registered")
        ),
        "registry.current_version": fixed(lambda: registry.current_version(client, MODEL_NAME, ALIAS)),
        "registry.history (newest 100 versions)": fixed(lambda: registry.history(client, MODEL_NAME, limit=100)),
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(repeat + 1):
        for name, prepare in steps.items():
            call = prepare(rep)
            started = time.perf_counter()
            call()
            if rep:
                samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[100, 1000, 10000], help="prior runs and versions")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds per level, after one warm-up")
    parser.add_argument(
        "--tag-indexes",
        action="store_true",
        help="add indexes on (key, value) of run and model-version tags, as an operator could (not MLflow's schema)",
    )
    args = parser.parse_args()
    levels = sorted(args.levels)

    import mlflow

    from abalone_contract.tracking import mlflow_client
    from abalone_pipeline import registry
    from abalone_pipeline.gate import GatePolicy, decide
    from abalone_trainer import tracking

    # "Created version ..." and "moved ...@champion" on every promotion: the tables are the output.
    for name in ("mlflow", "abalone_pipeline", "abalone_trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    started = time.monotonic()
    rows, timings = [], {}
    with tempfile.TemporaryDirectory(prefix="gate-cost-") as tmp:
        home = Path(tmp)
        with local_mlflow.server(home) as uri:
            client = mlflow_client(uri)
            experiment_id = tracking.ensure_experiment(client, EXPERIMENT)
            registry.ensure_registered_model(client, MODEL_NAME, "gate cost benchmark")
            reasons = decide(evaluation(2.05, "1", 2.2, (-0.2, -0.1), {"count": 0}), GatePolicy()).summary()
            history = History(f"sqlite:///{home}/mlflow.db", experiment_id, reasons)
            if args.tag_indexes:
                with sqlite3.connect(home / "mlflow.db") as db:
                    db.executescript(TAG_INDEXES)
            for level in levels:
                populating = time.monotonic()
                runs, versions = history.counts()
                history.add_prior_runs(max(level - versions, 0))
                populated = time.monotonic() - populating
                runs, versions = history.counts()
                timings[level] = measure(uri, history, level, args.repeat)
                rows.append((level, runs, versions, populated))
                print(f"level {level:,} measured ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"MLflow {mlflow.__version__}, {time.strftime('%Y-%m-%d')}; median of {args.repeat} after a warm-up"
        f"{'; with --tag-indexes' if args.tag_indexes else ''}\n"
    )
    print("| level | runs in the experiment | versions of the model | populated in s |\n|---|---|---|---|")
    for level, runs, versions, populated in rows:
        print(f"| {level:,} | {runs:,} | {versions:,} | {populated:.1f} |")

    low, high = levels[0], levels[-1]
    for outcome in (PROMOTED, REJECTED):
        for level in levels:
            timings[level][f"one nightly run, {outcome.rsplit(' ', 1)[-1]}"] = sum(
                timings[level][name] for name in (*NIGHTLY, outcome)
            )
    header = " | ".join(f"{level:,} ms" for level in levels)
    print(f"\n| step | {header} | {high:,} / {low:,} | within {TARGET_RATIO}x |")
    print("|---|" + "---|" * (len(levels) + 2))
    slow = []
    for name in timings[low]:
        ratio = timings[high][name] / timings[low][name]
        flat = ratio <= TARGET_RATIO
        if not flat:
            slow.append(f"{name} ({ratio:.2f}x)")
        cells = " | ".join(f"{timings[level][name] * 1000:.1f}" for level in levels)
        label = f"**{name}**" if name.startswith("one nightly") else name
        print(f"| {label} | {cells} | {ratio:.2f} | {'yes' if flat else '**no**'} |")
    verdict = "met" if not slow else "NOT met"
    print(f"\nTarget (every step and the nightly run within {TARGET_RATIO}x from {low:,} to {high:,}): {verdict}.")
    if slow:
        print(f"Not flat: {'; '.join(slow)}.")
    print(
        "A lookup by name or alias cannot depend on history (ensure_experiment, current_version): "
        "their ratios show this machine's noise."
    )
    print(f"\nWall time {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    main()
