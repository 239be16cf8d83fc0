# Environment of the embedded default, sourced by scripts/run-local.sh.
# Every ABALONE_* variable may be set beforehand to override it (see the README's configuration table).
_abalone_root=${ABALONE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export ABALONE_LOCAL_DIR=${ABALONE_LOCAL_DIR:-$_abalone_root/.local}
export ABALONE_MLFLOW_PORT=${ABALONE_MLFLOW_PORT:-5000}
export ABALONE_MLFLOW_TRACKING_URI=${ABALONE_MLFLOW_TRACKING_URI:-http://127.0.0.1:$ABALONE_MLFLOW_PORT}
export ABALONE_OBJECT_STORE_URI=${ABALONE_OBJECT_STORE_URI:-file://$ABALONE_LOCAL_DIR/object-store}
export ABALONE_TRAINER_IMAGE=${ABALONE_TRAINER_IMAGE:-abalone-trainer:latest}
# One quick retry locally, so a failure is reported in seconds rather than after the production backoff.
export ABALONE_TASK_RETRIES=${ABALONE_TASK_RETRIES:-1}
export ABALONE_RETRY_DELAY_SECONDS=${ABALONE_RETRY_DELAY_SECONDS:-5}
# MLflow's job runner serves GenAI features this pipeline does not use; it costs a process per queue.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

export AIRFLOW_HOME=${AIRFLOW_HOME:-$ABALONE_LOCAL_DIR/airflow}
export AIRFLOW__CORE__DAGS_FOLDER=$_abalone_root/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$_abalone_root/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}
export GIT_PYTHON_REFRESH=quiet
