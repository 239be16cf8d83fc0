#!/usr/bin/env bash
# Build a local stand-in for an image that cannot be pulled (no container registry reachable), and print
# its tag. Each stand-in honours the contract this project relies on of the image it replaces (see
# docs/compose.md, "Without a registry") and is built from Debian bookworm (debootstrap) plus wheels
# downloaded on the host, installed under constraints.txt, so nothing inside a build reaches the network.
#
#   standins/build.sh KIND        KIND: tensorflow | airflow | postgres | redis | s3
#
# Tags are abalone-standin/KIND:<hash of the inputs>: an unchanged stand-in is never rebuilt, and a
# changed one gets a new tag.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
kind=${1:?usage: standins/build.sh tensorflow|airflow|postgres|redis|s3}
[[ -f "$here/$kind/Dockerfile" ]] || { echo "standins/build.sh: no stand-in named '$kind'" >&2; exit 2; }
cache=${ABALONE_CACHE_DIR:-$root/.cache}
python=${PYTHON:-python3}
mkdir -p "$cache"

log() { printf '[standin] %s\n' "$*" >&2; }

# One Debian root filesystem under every stand-in: Python for Airflow, MLflow, moto and TensorFlow, and
# Debian's own PostgreSQL 15 and Redis, dumb-init and curl as the official images have them.
packages=python3,python3-venv,ca-certificates,curl,dumb-init,postgresql-15,redis-server
rootfs_tag="abalone-standin/rootfs:bookworm-$(printf '%s' "$packages" | sha256sum | cut -c1-12)"
if ! docker image inspect "$rootfs_tag" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install -y debootstrap"; exit 1; }
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm ($packages) for $rootfs_tag"
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" >"$cache/debootstrap.log" 2>&1 \
        || { log "debootstrap failed; see $cache/debootstrap.log"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$rootfs_tag" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi

# The inputs: this kind's folder, the pinned versions, the root filesystem and, for the Airflow base,
# the project's requirements and the host's CA bundle (for pip in builds FROM it).
ca_bundle=/etc/ssl/certs/ca-certificates.crt
inputs_hash=$( (cd "$here/$kind" && find . -type f -print0 | sort -z | xargs -0 sha256sum
    sha256sum "$root/constraints.txt"; docker image inspect --format '{{.Id}}' "$rootfs_tag"
    [[ "$kind" != airflow ]] || sha256sum "$ca_bundle" "$root/requirements.txt") | sha256sum | cut -c1-12)
tag="abalone-standin/$kind:$inputs_hash"
if docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag is up to date"
    echo "$tag"
    exit 0
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp -r "$here/$kind/." "$context/"
cp "$root/constraints.txt" "$context/constraints.txt"
[[ "$kind" != airflow ]] || cp "$root/requirements.txt" "$context/project-requirements.txt"
mkdir -p "$context/wheels"
if [[ -f "$here/$kind/requirements.txt" ]]; then
    py_version=$(docker run --rm --network none --entrypoint python3 "$rootfs_tag" \
        -c 'import platform; print(platform.python_version())')
    wheels="$cache/wheels/standin-$kind-py$py_version"
    mkdir -p "$wheels"
    log "downloading the wheels of standins/$kind/requirements.txt for Python $py_version"
    "$python" -m pip download --quiet --only-binary=:all: --python-version "$py_version" --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any \
        -c "$root/constraints.txt" -d "$wheels" -r "$context/requirements.txt" 2> >(grep -v '^WARNING: Location' >&2)
    cp "$wheels"/*.whl "$context/wheels/"
fi
[[ "$kind" != airflow ]] || cp "$ca_bundle" "$context/ca-certificates.crt"
log "building $tag"
docker build --quiet --network none --build-arg "ROOTFS_IMAGE=$rootfs_tag" -t "$tag" "$context" >/dev/null \
    2> >(grep -v -e 'legacy builder is deprecated' -e 'buildx' -e '^ *$' >&2)
log "built $tag"
echo "$tag"
