"""What parsing each DAG file costs once Airflow and the provider modules it uses are imported.

Each file is measured in a fresh Python process. First Airflow is warmed up the way any DAG processor
is: the Docker provider's operator and `docker.types` are imported, and a trivial DAG with a cron
schedule, a `@task`, Params and an Asset is parsed (which loads Airflow's lazily imported decorator,
timetable and asset modules). Then the file is executed as a module: once cold (our own package,
`abalone_pipeline`, imported for the first time: what a fresh DAG processor pays) and then repeatedly
with the package cached (what each re-parse pays). The modules the file pulled in are listed, with the
heavy ones the DAG must never import at parse time flagged.

Usage::

    .venv/bin/python bench/dag_parse.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "mlflow", "boto3", "botocore", "pandas", "pyarrow", "pandera", "numpy", "sklearn")
TARGET_MS = 50
# Any DAG of this shape loads the same Airflow modules on first parse; they are not this project's cost.
WARM_UP = """
from datetime import datetime
from airflow.sdk import Asset, Param, dag, task

@dag(schedule="0 2 * * *", start_date=datetime(2026, 1, 1), catchup=False, params={"n": Param(1, type="integer")})
def warm_up():
    @task(outlets=[Asset(name="warm_up", uri="file:///tmp/warm-up")])
    def one():
        return 1

    one()

warm_up()
"""


def child(path: Path, repeat: int) -> None:
    import importlib.util

    import airflow.sdk  # ruff: ignore[unused-import] -- loaded in every DAG processor
    import docker.types  # ruff: ignore[unused-import]
    from airflow.providers.docker.operators.docker import DockerOperator  # ruff: ignore[unused-import]

    exec(WARM_UP, {"__name__": "warm_up"})

    def parse(name: str) -> float:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        started = time.perf_counter()
        spec.loader.exec_module(module)
        return time.perf_counter() - started

    before = set(sys.modules)
    cold = parse("dag_cold")
    pulled = sorted(set(sys.modules) - before)
    warm = [parse(f"dag_warm_{i}") for i in range(repeat)]
    counts: dict[str, int] = {}
    for name in pulled:
        counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + 1
    roots = [f"{root} ({count})" for root, count in sorted(counts.items())]
    heavy = sorted({name.split(".")[0] for name in pulled} & set(HEAVY))
    print(json.dumps({"cold": cold, "warm": statistics.median(warm), "roots": roots, "heavy": heavy}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return

    print(f"# {platform.node()}: Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print("| DAG file | object store | cold parse ms | re-parse ms (median) | packages it imports (modules) | heavy |")
    print("|---|---|---|---|---|---|")
    # The staged-dataset Asset's URI follows the object store: an s3:// Asset makes Airflow load the
    # Amazon provider's S3 asset handler, so both settings are measured.
    stores = {"file://": None, "s3://": "s3://abalone-staging/pipeline"}
    for path in sorted((ROOT / "dags").glob("*.py")):
        for label, store in stores.items():
            env = {**os.environ, "PYTHONPATH": str(ROOT / "include"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
            env.pop("ABALONE_OBJECT_STORE_URI", None)
            if store:
                env["ABALONE_OBJECT_STORE_URI"] = store
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(path), "--repeat", str(args.repeat)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| `dags/{path.name}` | {label} | {result['cold'] * 1000:.1f} | {result['warm'] * 1000:.1f} "
                f"| {', '.join(result['roots']) or '-'} | {', '.join(result['heavy']) or 'none'} |"
            )
    print(f"\nTarget: under {TARGET_MS} ms per file, and none of {', '.join(HEAVY[:6])} at parse time.")


if __name__ == "__main__":
    main()
