"""What does a nightly run cost beyond its containers, under the live scheduler?

Starts the stack behind ``make run`` (``scripts/local_airflow.py up``: API server, scheduler, DAG processor,
triggerer; LocalExecutor on SQLite; a local MLflow server) in a temporary ``ABALONE_LOCAL_DIR`` on its own
ports, triggers runs of ``abalone_retraining`` through the REST API one after the other, and reads back each
task instance (queued, start, end) from ``/api/v2``. ``docker events`` records when each trainer container
was created, started and died. After each run the train task's container command runs alone under
``docker run`` (``bench/nightly_overhead.py``'s ``trainer_alone``), same image, data and MLflow server.

Per task: the scheduling gap (the upstream task's end, or the run's start, to this task's queued), the queue
wait (queued to start), the run time (start to end) and, for train and evaluate, the container's own time
(start to die) and the rest of the run time (task start-up, the operator, result parsing).

    fixed cost = run wall time (first task queued -> last task end) - the run's trainer containers

Run 1 has no champion and promotes; run 2 (``force_training``) scores the same data with the same seed, ties
and is rejected, so its promote is skipped. Then one more run without ``force_training``: nothing changed
since the champion, so it does not train (the cheapest night); its wall time and tasks are printed apart.
The DAG's schedule is set to none (``ABALONE_SCHEDULE=none``) so that unpausing starts no nightly slot
beside the triggered runs; everything else is the embedded default of ``scripts/env.sh``.

    .venv/bin/python bench/scheduler_overhead.py [--runs 2] [--epochs 20] [--executor local|celery]

``--executor celery`` runs the same settings on the Celery harness instead (tests/e2e/celery_cluster.py:
PostgreSQL, Redis, Airflow's API server, scheduler and DAG processor with the CeleryExecutor, a Celery
worker on the default queue and two on the gpu queue), with its own MLflow server: the production topology's
hand-offs (the broker, a worker per queue) on one machine. It needs Debian's postgresql and redis-server.

Needs a Docker engine and the trainer image (``make image``). Prints Markdown tables; bench/RESULTS.md
records a run with its machine and date.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.append(str(REPOSITORY / "scripts"))
local_airflow = importlib.import_module("local_airflow")
local_mlflow = importlib.import_module("local_mlflow")
BIN = REPOSITORY / ".venv" / "bin"
DAG_ID = "abalone_retraining"
TARGET_SECONDS = 10.0
CONTAINER_TASKS = ("train", "evaluate")
TASK_LABEL = "io.abalone.task_id"
RUN_LABEL = "io.abalone.run_id"
# The settings that govern how soon a task is queued and started once its upstream ends (and what runs the tasks).
SETTINGS = (
    ("core", "executor"),
    ("core", "parallelism"),
    ("core", "max_active_tasks_per_dag"),
    ("core", "max_active_runs_per_dag"),
    ("scheduler", "scheduler_heartbeat_sec"),
    ("scheduler", "scheduler_idle_sleep_time"),
    ("scheduler", "max_tis_per_query"),
    ("scheduler", "max_dagruns_to_create_per_loop"),
    ("scheduler", "max_dagruns_per_loop_to_schedule"),
    ("scheduler", "use_row_level_locking"),
    ("scheduler", "task_queued_timeout"),
    ("scheduler", "job_heartbeat_sec"),
    ("dag_processor", "refresh_interval"),
    ("dag_processor", "min_file_process_interval"),
    ("dag_processor", "parsing_processes"),
    ("database", "sql_alchemy_conn"),
)


@dataclass(frozen=True)
class Cluster:
    """What ``local_airflow.follow`` needs of a stack that is not ``make run``'s: where its API answers."""

    api: str
    run_timeout: float = 1800.0


@contextlib.contextmanager
def local_stack(env: dict[str, str]):
    """``make run``'s stack (LocalExecutor); yields (the stack, a way to get a token, its environment)."""
    script = [str(BIN / "python"), str(REPOSITORY / "scripts" / "local_airflow.py")]
    try:
        subprocess.run([*script, "up"], env=env, check=True)
        stack = local_airflow.Stack.from_env(env)
        yield stack, lambda: local_airflow.login(stack), env
    finally:
        subprocess.run([*script, "stop"], env=env, check=False)


@contextlib.contextmanager
def celery_stack(env: dict[str, str], tmp: Path, mlflow_port: int):
    """The Celery harness with the same settings and its own MLflow server; no login (all users are admins)."""
    sys.path.insert(0, str(REPOSITORY))
    from tests.e2e.celery_cluster import celery_cluster

    with (
        local_mlflow.server(tmp / "mlflow", mlflow_port),
        celery_cluster(tmp / "celery", env, DAG_ID) as cluster,
    ):
        status, body = local_airflow.call("PATCH", f"{cluster['api']}/api/v2/dags/{DAG_ID}", body={"is_paused": False})
        if status != 200:
            raise SystemExit(f"cannot unpause {DAG_ID} ({status} {body})")
        yield Cluster(cluster["api"]), lambda: None, cluster["env"]


def _load_nightly_overhead():
    """bench/nightly_overhead.py, by path (bench/ is no package): its ``trainer_alone``."""
    spec = importlib.util.spec_from_file_location("nightly_overhead", REPOSITORY / "bench" / "nightly_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stack_env(local_dir: Path, airflow_port: int, mlflow_port: int) -> dict[str, str]:
    """``scripts/env.sh`` rooted in ``local_dir`` on the given ports, without this shell's overrides."""
    keep = {
        "ABALONE_LOCAL_DIR": str(local_dir),
        "ABALONE_AIRFLOW_PORT": str(airflow_port),
        "ABALONE_MLFLOW_PORT": str(mlflow_port),
        "ABALONE_VENV": str(REPOSITORY / ".venv"),
        "ABALONE_SCHEDULE": "none",
    }
    seed = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ABALONE_", "AIRFLOW_", "AIRFLOW__", "MLFLOW_"))
    }
    seed.update(keep)
    dump = subprocess.run(
        ["bash", "-c", f"source {REPOSITORY / 'scripts' / 'env.sh'} && env -0"],
        env=seed,
        check=True,
        capture_output=True,
    ).stdout
    return dict(item.split("=", 1) for item in dump.decode().split("\0") if "=" in item)


def airflow_settings(env: dict[str, str]) -> dict[str, str]:
    """The scheduling settings as the stack's processes read them (its environment, its airflow.cfg)."""
    code = (
        "import json, sys\nfrom airflow.configuration import conf\nout = {}\n"
        "for section, key in json.loads(sys.argv[1]):\n"
        "    try:\n        out[f'{section}.{key}'] = conf.get(section, key)\n"
        "    except Exception as exc:\n        out[f'{section}.{key}'] = f'(not set: {type(exc).__name__})'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(BIN / "python"), "-c", code, json.dumps(SETTINGS)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def epoch(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def container_times(events_file: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(run id, task id) -> the epoch seconds of the container's create, start and die, from ``docker events``."""
    times: dict[tuple[str, str], dict[str, float]] = {}
    for line in events_file.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        action = event.get("Action") or event.get("status")
        if TASK_LABEL not in attributes or action not in ("create", "start", "die"):
            continue
        key = (attributes.get(RUN_LABEL, ""), attributes[TASK_LABEL])
        times.setdefault(key, {}).setdefault(action, event["timeNano"] / 1e9)
    return times


def upstreams(stack, token: str) -> dict[str, list[str]]:
    status, body = local_airflow.call("GET", f"{stack.api}/api/v2/dags/{DAG_ID}/tasks", token=token)
    if status != 200:
        raise SystemExit(f"cannot read the DAG's tasks ({status} {body})")
    ups: dict[str, list[str]] = {task["task_id"]: [] for task in body["tasks"]}
    for task in body["tasks"]:
        for down in task.get("downstream_task_ids") or []:
            ups.setdefault(down, []).append(task["task_id"])
    return ups


def one_run(stack, token: str, conf: dict, note: str) -> tuple[str, dict, list[dict]]:
    """Trigger a run, follow it to its end; (run id, the run, its task instances)."""
    body = {"logical_date": None, "conf": conf, "note": note}
    status, run = local_airflow.call("POST", f"{stack.api}/api/v2/dags/{DAG_ID}/dagRuns", token=token, body=body)
    if status not in (200, 201):
        raise SystemExit(f"triggering {DAG_ID} failed ({status} {run})")
    run_id = run["dag_run_id"]
    print(f"\n==> run {run_id}", flush=True)
    local_airflow.follow(stack, token, DAG_ID, run_id)
    base = f"{stack.api}/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    _, run = local_airflow.call("GET", base, token=token)
    _, body = local_airflow.call("GET", f"{base}/taskInstances?limit=1000", token=token)
    return run_id, run, body["task_instances"]


def rendered_command(stack, token: str, run_id: str) -> list[str]:
    base = f"{stack.api}/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    status, ti = local_airflow.call("GET", f"{base}/taskInstances/train", token=token)
    command = (ti or {}).get("rendered_fields", {}).get("command") if status == 200 else None
    if isinstance(command, str):
        command = json.loads(command)
    if not command:
        raise SystemExit(f"no rendered command for train in {run_id} ({status})")
    return command


def analyse(run: dict, tis: list[dict], ups: dict[str, list[str]], containers: dict) -> dict:
    """Per task: gap, queue wait, run time, container time; the run's wall time and its critical path."""
    by_task = {ti["task_id"]: ti for ti in tis}
    run_start = epoch(run.get("start_date"))
    rows = {}
    for task_id, ti in by_task.items():
        queued, start, end = epoch(ti.get("queued_when")), epoch(ti.get("start_date")), epoch(ti.get("end_date"))
        ends = [epoch(by_task[u].get("end_date")) for u in ups.get(task_id, []) if u in by_task]
        ends = [value for value in ends if value is not None]
        ready = max(ends) if ends else run_start
        box = containers.get((run["dag_run_id"], task_id), {})
        container = box["die"] - box["start"] if "die" in box and "start" in box else None
        create = box["start"] - box["create"] if "start" in box and "create" in box else None
        rows[task_id] = {
            "state": ti.get("state"),
            "try": ti.get("try_number"),
            "queued": queued,
            "start": start,
            "end": end,
            "ready": ready,
            "gap": queued - ready if queued is not None and ready is not None else None,
            "wait": start - queued if start is not None and queued is not None else None,
            "run": end - start if end is not None and start is not None else None,
            "container": container,
            "create": create,
        }
    queued = [row["queued"] for row in rows.values() if row["queued"] is not None]
    ended = [row["end"] for row in rows.values() if row["end"] is not None]
    wall = max(ended) - min(queued)
    # The critical path: from the last task to end, back through the upstream that ended last.
    path, task = [], max((t for t in rows if rows[t]["end"] is not None), key=lambda t: rows[t]["end"])
    while task is not None:
        path.append(task)
        candidates = [u for u in ups.get(task, []) if u in rows and rows[u]["end"] is not None]
        task = max(candidates, key=lambda u: rows[u]["end"]) if candidates else None
    path.reverse()
    created = epoch(run.get("queued_at"))
    return {
        "rows": rows,
        "wall": wall,
        "path": path,
        "run_queued": run_start - created if run_start is not None and created is not None else None,
        "trigger_to_end": max(ended) - created if created is not None else None,
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(index: int, run_id: str, run: dict, result: dict, order: list[str], alone: float) -> dict:
    rows, path = result["rows"], result["path"]
    print(f"\n### run {index + 1}: {run_id} ({run.get('state')})\n")
    print(
        "| task | state | gap: upstream end → queued s | queue wait: queued → start s | run: start → end s "
        "| container (start → die) s | run - container s |\n|---|---|---|---|---|---|---|"
    )
    for task in order:
        row = rows.get(task)
        if row is None:
            continue
        rest = row["run"] - row["container"] if row["run"] is not None and row["container"] is not None else None
        state = row["state"] + (f" (try {row['try']})" if (row["try"] or 1) > 1 else "")
        mark = "" if task in path else " (off the critical path)"
        print(
            f"| {task}{mark} | {state} | {fmt(row['gap'])} | {fmt(row['wait'])} | {fmt(row['run'])} "
            f"| {fmt(row['container'])} | {fmt(rest)} |"
        )
    on_path = [rows[task] for task in path]
    gaps = sum(row["gap"] or 0 for row in on_path)
    waits = sum(row["wait"] or 0 for row in on_path)
    containers = sum(rows[t]["container"] or 0 for t in CONTAINER_TASKS if t in rows)
    container_rest = sum(
        rows[t]["run"] - rows[t]["container"] for t in CONTAINER_TASKS if t in path and rows[t]["container"] is not None
    )
    python_tasks = sum(row["run"] or 0 for task, row in zip(path, on_path, strict=True) if task not in CONTAINER_TASKS)
    first_gap = rows[path[0]]["gap"] or 0
    train_container = rows["train"]["container"] or 0
    figures = {
        "wall": result["wall"],
        "containers": containers,
        "fixed": result["wall"] - containers,
        "fixed_alone": result["wall"] - (alone + (rows["evaluate"]["container"] or 0)),
        "scheduling": gaps - first_gap + waits,
        "first_gap": first_gap,
        "container_rest": container_rest,
        "python_tasks": python_tasks,
        "alone": alone,
        "train_container": train_container,
        "run_queued": result["run_queued"],
        "trigger_to_end": result["trigger_to_end"],
        "create": sum(rows[t]["create"] or 0 for t in CONTAINER_TASKS if t in rows),
    }
    print(
        f"\nRun {index + 1}: wall (first task queued → last task end) {result['wall']:.1f} s. Before it, not counted "
        f"in it: the run triggered (queued) → running {fmt(result['run_queued'])} s, running → first task queued "
        f"{first_gap:.1f} s; trigger → last task end {fmt(result['trigger_to_end'])} s. "
        f"Critical path {' → '.join(path)}.\n"
        f"On the critical path: Airflow's scheduling (gaps {gaps - first_gap:.1f} s + queue waits {waits:.1f} s) "
        f"{figures['scheduling']:.1f} s; trainer containers {containers:.1f} s (docker create → start "
        f"{figures['create']:.1f} s more); train/evaluate beyond their containers {container_rest:.1f} s; "
        f"the Python tasks' run time {python_tasks:.1f} s.\n"
        f"Train container in the run {train_container:.1f} s; the trainer alone (docker run) {alone:.1f} s.\n"
        f"Fixed cost = wall - the run's containers = {figures['fixed']:.1f} s "
        f"(with the trainer alone in place of the train container: {figures['fixed_alone']:.1f} s); "
        f"target <= {TARGET_SECONDS:.0f} s: {'met' if figures['fixed'] <= TARGET_SECONDS else 'NOT met'}."
    )
    return figures


def report_unchanged(run_id: str, run: dict, tis: list[dict], containers: dict) -> None:
    """The night that did not train: its wall time, each task's state and run time, and no container."""
    times = [(epoch(ti.get("queued_when")), epoch(ti.get("end_date"))) for ti in tis]
    first = min(queued for queued, _ in times if queued is not None)
    last = max(end for _, end in times if end is not None)
    started = [task for (run_of, task) in containers if run_of == run_id]
    print(
        f"\nUnchanged night {run_id} ({run.get('state')}): wall {last - first:.1f} s (first queued -> last end); "
        f"trainer containers started: {started or 'none'}"
    )
    print("\n| task | state | run s |\n|---|---|---|")
    for ti in sorted(tis, key=lambda ti: epoch(ti.get("start_date")) or float("inf")):
        start, end = epoch(ti.get("start_date")), epoch(ti.get("end_date"))
        took = f"{end - start:.1f}" if start is not None and end is not None else "-"
        print(f"| {ti['task_id']} | {ti.get('state')} | {took} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs, one after the other (the first has no champion)")
    parser.add_argument("--epochs", type=int, default=20, help="the runs' conf: epochs")
    parser.add_argument("--no-unchanged", action="store_true", help="skip the last run that does not train")
    parser.add_argument("--airflow-port", type=int, default=18280)
    parser.add_argument("--mlflow-port", type=int, default=15200)
    parser.add_argument("--executor", choices=["local", "celery"], default="local", help="what runs the tasks")
    args = parser.parse_args()
    nightly_overhead = _load_nightly_overhead()

    tmp = Path(tempfile.mkdtemp(prefix="abalone-scheduler-"))
    env = stack_env(tmp, args.airflow_port, args.mlflow_port)
    events_file = tmp / "docker-events.jsonl"
    events = None
    figures = []
    try:
        with events_file.open("w") as out:
            events = subprocess.Popen(
                ["docker", "events", "--format", "{{json .}}", "--filter", "type=container"], stdout=out
            )
        started = time.monotonic()
        chosen = local_stack(env) if args.executor == "local" else celery_stack(env, tmp, args.mlflow_port)
        with chosen as (stack, login, env):
            print(f"\nstack up in {time.monotonic() - started:.1f} s", flush=True)
            settings = airflow_settings(env)
            ups = upstreams(stack, login())
            done = []
            for index in range(args.runs):
                conf = {"epochs": args.epochs, "force_training": True}
                run_id, run, tis = one_run(stack, login(), conf, f"bench/scheduler_overhead {index + 1}")
                command = rendered_command(stack, login(), run_id)
                alone = nightly_overhead.trainer_alone(env, command, f"bench/scheduler-alone-{index}")
                print(f"  trainer alone: {alone:.1f} s", flush=True)
                done.append((run_id, run, tis, alone))
            unchanged = None
            if not args.no_unchanged:
                unchanged = one_run(stack, login(), {"epochs": args.epochs}, "bench/scheduler_overhead unchanged")
            time.sleep(2)  # the last die events
        events.terminate()
        events.wait(timeout=10)
        containers = container_times(events_file)

        order = [task for task in ("preflight", "stage", "train", "evaluate", "gate", "promote", "summarize")]
        order += sorted(task for task in ups if task not in order)
        print(
            f"\nexecutor {args.executor}; image {env['ABALONE_TRAINER_IMAGE']}; conf {{'epochs': {args.epochs}}}; "
            f"{args.runs} runs"
        )
        print("\n| setting | value |\n|---|---|")
        for name, value in settings.items():
            print(f"| {name} | {value} |")
        for index, (run_id, run, tis, alone) in enumerate(done):
            figures.append(report(index, run_id, run, analyse(run, tis, ups, containers), order, alone))
        print("\n| run | wall s | containers s | fixed s | of which scheduling s | trainer alone s |")
        print("|---|---|---|---|---|---|")
        for index, fig in enumerate(figures):
            print(
                f"| {index + 1} | {fig['wall']:.1f} | {fig['containers']:.1f} | {fig['fixed']:.1f} "
                f"| {fig['scheduling']:.1f} | {fig['alone']:.1f} |"
            )
        fixed = statistics.median(fig["fixed"] for fig in figures)
        print(
            f"\nFixed cost (median of {len(figures)} runs): {fixed:.1f} s; target <= {TARGET_SECONDS:.0f} s: "
            f"{'met' if fixed <= TARGET_SECONDS else f'NOT met, by {fixed - TARGET_SECONDS:.1f} s'}."
        )
        if unchanged is not None:
            report_unchanged(*unchanged, containers)
    finally:
        if events is not None and events.poll() is None:
            events.terminate()
            events.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
