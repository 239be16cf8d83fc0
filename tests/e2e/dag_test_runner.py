"""``airflow dags test`` with a fixed run id: ``python dag_test_runner.py LOGICAL_DATE [CONF_JSON] [--dag-id ID]``.

The CLI derives the run id from the wall clock; running the DAG again with the same logical date and
``run_after`` reproduces the same run id, which is what re-running a finished DAG run means here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DagRunState, timezone


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("logical_date", type=timezone.parse)
    parser.add_argument("conf", nargs="?", type=json.loads)
    parser.add_argument("--dag-id", default="abalone_retraining")
    args = parser.parse_args()
    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(args.dag_id)
    run = dag.test(logical_date=args.logical_date, run_after=args.logical_date, run_conf=args.conf)
    print(f"DAG RUN {run.run_id} {run.state}")
    return 0 if run.state == DagRunState.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
