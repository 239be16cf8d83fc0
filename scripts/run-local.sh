#!/usr/bin/env bash
# The embedded default, end to end: a local MLflow server, a local object store, Airflow on SQLite and the
# trainer image on the local Docker engine. Each call runs abalone_retraining once; a second call judges
# its candidate against the champion the first one promoted.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
venv=${ABALONE_VENV:-$root/.venv}
bin=$venv/bin

say() { printf '\n==> %s\n' "$*"; }

if ! docker info >/dev/null 2>&1; then
    cat >&2 <<'MSG'
No Docker engine is reachable: the training task runs the trainer image with DockerOperator.
Fix one of:
  * start Docker (systemctl start docker), or on a host without systemd:
      apt-get install -y docker.io
      dockerd --iptables=false --ip6tables=false --bridge=none >/var/log/dockerd.log 2>&1 &
  * let this user use it (usermod -aG docker "$USER", then log in again)
  * point ABALONE_DOCKER_URL and DOCKER_HOST at a remote engine (tcp://host:2376 with TLS)
MSG
    exit 1
fi

say "Python environment ($venv)"
make -s -C "$root" venv VENV="$venv"

say "trainer image"
PYTHON="$bin/python" "$root/scripts/build-trainer-image.sh"

mkdir -p "$ABALONE_LOCAL_DIR/mlflow"
[[ "$ABALONE_OBJECT_STORE_URI" != file://* ]] || mkdir -p "${ABALONE_OBJECT_STORE_URI#file://}"
if ! curl -fsS "$ABALONE_MLFLOW_TRACKING_URI/health" >/dev/null 2>&1; then
    say "starting the MLflow server on $ABALONE_MLFLOW_TRACKING_URI (log: $ABALONE_LOCAL_DIR/mlflow/server.log)"
    setsid "$bin/mlflow" server \
        --backend-store-uri "sqlite:///$ABALONE_LOCAL_DIR/mlflow/mlflow.db" \
        --artifacts-destination "$ABALONE_LOCAL_DIR/mlflow/artifacts" \
        --host 127.0.0.1 --port "$ABALONE_MLFLOW_PORT" --workers 1 \
        >"$ABALONE_LOCAL_DIR/mlflow/server.log" 2>&1 < /dev/null &
    echo $! >"$ABALONE_LOCAL_DIR/mlflow/server.pid"
    for _ in $(seq 90); do
        curl -fsS "$ABALONE_MLFLOW_TRACKING_URI/health" >/dev/null 2>&1 && break
        sleep 1
    done
    curl -fsS "$ABALONE_MLFLOW_TRACKING_URI/health" >/dev/null \
        || { echo "the MLflow server did not start; see $ABALONE_LOCAL_DIR/mlflow/server.log" >&2; exit 1; }
fi

say "Airflow metadata database ($AIRFLOW_HOME)"
"$bin/airflow" db migrate >"$ABALONE_LOCAL_DIR/airflow-db.log" 2>&1 \
    || { echo "airflow db migrate failed; see $ABALONE_LOCAL_DIR/airflow-db.log" >&2; exit 1; }
"$bin/airflow" pools set "${ABALONE_TRAIN_POOL:-gpu}" 1 "Trainer containers on the GPU host" >/dev/null
"$bin/airflow" pools set "${ABALONE_REGISTRY_POOL:-mlflow_registry}" 1 "Promotions and rollbacks, one at a time" >/dev/null

say "running abalone_retraining (airflow dags test; full log: $ABALONE_LOCAL_DIR/last-run.log)"
set +e
"$bin/airflow" dags test abalone_retraining 2>&1 | tee "$ABALONE_LOCAL_DIR/last-run.log" \
    | grep --line-buffered -E "\[abalone_pipeline|abalone_trainer\.|ABALONE_ERROR|Task failed|Marking run" | cut -c1-400
status=${PIPESTATUS[0]}
set -e

say "result"
"$bin/python" -m abalone_pipeline.report || true
if [[ $status -ne 0 ]]; then
    echo "The DAG run failed; the full log is $ABALONE_LOCAL_DIR/last-run.log" >&2
    exit 1
fi
