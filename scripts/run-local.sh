#!/usr/bin/env bash
# The embedded default, end to end: a live local Airflow (API server and UI, scheduler, DAG processor, triggerer;
# LocalExecutor on SQLite), a local MLflow server, a local object store and the trainer image on the local Docker
# engine. The first call starts them in the background; later calls reuse them. Each call triggers
# abalone_retraining once through the REST API and follows it; a second call judges its candidate against the
# champion the first one promoted. The stack stays up (the nightly schedule runs) until make stop.
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

say "the local stack: Airflow (api-server, scheduler, dag-processor, triggerer) and MLflow"
exec "$bin/python" "$root/scripts/local_airflow.py" run
