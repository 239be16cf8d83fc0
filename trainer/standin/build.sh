#!/usr/bin/env bash
# Build a stand-in for the AWS TensorFlow training DLC where no container registry is reachable.
#
# The stand-in has what the trainer relies on in the DLC: a Python on PATH as `python` with pip, and
# TensorFlow. It is built from Debian packages (debootstrap) plus TensorFlow from wheels downloaded on
# the host, so nothing inside the build reaches the network.
#
# Usage: trainer/standin/build.sh [IMAGE_TAG]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-${ABALONE_STANDIN_IMAGE:-abalone/tensorflow-training-standin:2.21.0-cpu-py311}}
rootfs_tag=abalone/debian-python-rootfs:bookworm
tensorflow_version=${TENSORFLOW_VERSION:-2.21.0}
cache=${ABALONE_CACHE_DIR:-$root/.cache}
mkdir -p "$cache"

log() { printf '[standin] %s\n' "$*" >&2; }

if docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag already exists; nothing to do"
    exit 0
fi

if ! docker image inspect "$rootfs_tag" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install -y debootstrap"; exit 1; }
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm (minbase + python3) into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" >"$cache/debootstrap.log" 2>&1 \
        || { log "debootstrap failed; see $cache/debootstrap.log"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    log "importing $rootfs_tag"
    tar -C "$rootfs" -c . | docker import - "$rootfs_tag" >/dev/null
fi

context=$(mktemp -d)
trap 'rm -rf "$context" ${rootfs:+"$rootfs"}' EXIT
wheels="$cache/wheels/standin-py311"
mkdir -p "$wheels"
log "downloading tensorflow-cpu==$tensorflow_version wheels for Python 3.11 into $wheels"
python3 -m pip download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    -c "$root/constraints.txt" -d "$wheels" "tensorflow-cpu==$tensorflow_version"
cp -r "$wheels" "$context/wheels"
cp "$here/Dockerfile" "$context/Dockerfile"
log "building $tag"
docker build --quiet --network none --build-arg "ROOTFS_IMAGE=$rootfs_tag" \
    --build-arg "TENSORFLOW_VERSION=$tensorflow_version" -t "$tag" "$context" >/dev/null
log "built $tag"
