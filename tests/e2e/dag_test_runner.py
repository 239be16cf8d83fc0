"""``airflow dags test`` with a fixed run id: ``python dag_test_runner.py LOGICAL_DATE [CONF_JSON]``.

The CLI derives the run id from the wall clock; running the DAG again with the same logical date and
``run_after`` reproduces the same run id, which is what re-running a finished DAG run means here.
"""

from __future__ import annotations

import json
import os
import sys

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DagRunState, timezone


def main() -> int:
    logical_date = timezone.parse(sys.argv[1])
    conf = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag("abalone_retraining")
    run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=conf)
    print(f"DAG RUN {run.run_id} {run.state}")
    return 0 if run.state == DagRunState.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
