# Environment of the embedded default, sourced by scripts/run-local.sh, scripts/local_airflow.py's callers and make.
# Every ABALONE_* variable may be set beforehand to override it (docs/configuration.md).
_abalone_root=${ABALONE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export ABALONE_LOCAL_DIR=${ABALONE_LOCAL_DIR:-$_abalone_root/.local}
export ABALONE_MLFLOW_PORT=${ABALONE_MLFLOW_PORT:-5000}
export ABALONE_MLFLOW_TRACKING_URI=${ABALONE_MLFLOW_TRACKING_URI:-http://127.0.0.1:$ABALONE_MLFLOW_PORT}
# The MLflow UI a browser opens: the tracking server itself, unless that is a SageMaker ARN (no URL; the
# pipeline then links to the SageMaker AI console) or ABALONE_MLFLOW_UI_URL says otherwise.
if [[ -z ${ABALONE_MLFLOW_UI_URL:-} && $ABALONE_MLFLOW_TRACKING_URI == http* ]]; then
    export ABALONE_MLFLOW_UI_URL=$ABALONE_MLFLOW_TRACKING_URI
fi
# The local Airflow's API server and UI; its links (the airflow.run_url tag on MLflow runs) use the same URL.
export ABALONE_AIRFLOW_PORT=${ABALONE_AIRFLOW_PORT:-8080}
export ABALONE_AIRFLOW_BASE_URL=${ABALONE_AIRFLOW_BASE_URL:-http://localhost:$ABALONE_AIRFLOW_PORT}
export ABALONE_OBJECT_STORE_URI=${ABALONE_OBJECT_STORE_URI:-file://$ABALONE_LOCAL_DIR/object-store}
export ABALONE_TRAINER_IMAGE=${ABALONE_TRAINER_IMAGE:-abalone-trainer:latest}
# One quick retry locally, so a failure is reported in seconds rather than after the production backoff.
export ABALONE_TASK_RETRIES=${ABALONE_TASK_RETRIES:-1}
export ABALONE_RETRY_DELAY_SECONDS=${ABALONE_RETRY_DELAY_SECONDS:-5}
# MLflow's job runner serves GenAI features this pipeline does not use; it costs a process per queue.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# MLflow's telemetry thread cannot reach its endpoint here; on giving up it removes an environment variable
# while a task's request reads os.environ, which fails that request (KeyError: '_MLFLOW_TELEMETRY_SESSION_ID').
export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}

export AIRFLOW_HOME=${AIRFLOW_HOME:-$ABALONE_LOCAL_DIR/airflow}
export AIRFLOW__CORE__DAGS_FOLDER=$_abalone_root/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$_abalone_root/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__API__PORT=$ABALONE_AIRFLOW_PORT
export AIRFLOW__API__BASE_URL=$ABALONE_AIRFLOW_BASE_URL
# Loopback only: this is a development stack with plaintext passwords.
export AIRFLOW__API__HOST=${AIRFLOW__API__HOST:-127.0.0.1}
# The simple auth manager with one user, admin; its generated password is kept across runs in this file.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$ABALONE_LOCAL_DIR/airflow-passwords.json
# Tasks run as separate processes of the LocalExecutor on 2 cores: a handful at once is plenty.
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}
export AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}
export GIT_PYTHON_REFRESH=quiet
