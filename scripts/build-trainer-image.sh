#!/usr/bin/env bash
# Build the trainer image on top of the TensorFlow DLC, or on the local stand-in when the DLC cannot be pulled.
#
# The image is tagged with a hash of its inputs (trainer sources, constraints, base image id), so an
# unchanged trainer is not rebuilt; ABALONE_TRAINER_IMAGE (default abalone-trainer:latest) points at it.
#
#   ABALONE_TRAINER_BASE_IMAGE  the DLC to build on (default: the CPU DLC named in trainer/Dockerfile)
#   ABALONE_USE_STANDIN=1       skip the pull and build on the stand-in
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
image=${ABALONE_TRAINER_IMAGE:-abalone-trainer:latest}
base=${ABALONE_TRAINER_BASE_IMAGE:-$(sed -n 's/^ARG BASE_IMAGE=//p' "$root/trainer/Dockerfile")}
python=${PYTHON:-python3}

log() { printf '[trainer-image] %s\n' "$*" >&2; }

docker info >/dev/null 2>&1 || { log "no Docker engine is reachable; see docs/testing.md, 'A Docker engine'"; exit 1; }

if [[ "${ABALONE_USE_STANDIN:-0}" == 1 ]]; then
    base=$("$root/standins/build.sh" tensorflow)
elif ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull "$base" >/dev/null 2>&1; then
    if [[ -n "${ABALONE_TRAINER_BASE_IMAGE:-}" ]]; then
        log "cannot pull ABALONE_TRAINER_BASE_IMAGE=$base; not substituting the CPU stand-in for an explicit base"
        exit 1
    fi
    log "cannot pull $base (no registry reachable?); building on the stand-in (standins/tensorflow)"
    base=$("$root/standins/build.sh" tensorflow)
fi

base_id=$(docker image inspect --format '{{.Id}}' "$base")
inputs_hash=$( (cd "$root/trainer" && find . -type f \( -name '*.py' -o -name '*.toml' -o -name Dockerfile \) \
    -not -path './build/*' -not -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum; sha256sum "$root/constraints.txt"; echo "$base_id") \
    | sha256sum | cut -c1-12)
hashed="abalone-trainer:src-$inputs_hash"
if docker image inspect "$hashed" >/dev/null 2>&1; then
    log "$hashed is up to date"
else
    py_version=$(docker run --rm --network none --entrypoint python "$base" \
        -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    context=$(mktemp -d)
    trap 'rm -rf "$context"' EXIT
    # A fresh folder per build holds exactly the pinned wheels (pip's own cache makes it cheap).
    wheels="$context/wheels"
    mkdir -p "$wheels"
    log "building the abalone-trainer wheel; fetching its dependencies for Python $py_version"
    # setuptools builds in trainer/build and packs all of it: a module deleted from the sources would ship.
    rm -rf "$root/trainer/build"
    "$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$context/wheels" "$root/trainer" 2>/dev/null \
        || "$python" -m pip wheel --quiet --no-deps -w "$context/wheels" "$root/trainer"
    "$python" -m pip download --quiet --only-binary=:all: --python-version "$py_version" --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any \
        -c "$root/constraints.txt" -d "$wheels" "$wheels"/abalone_trainer-*.whl
    cp "$root/trainer/Dockerfile" "$context/"
    log "docker build $hashed FROM $base"
    revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
    [[ -z "$(git -C "$root" status --porcelain -- trainer 2>/dev/null)" ]] || revision="$revision-dirty"
    docker build --quiet --network none --build-arg "BASE_IMAGE=$base" --build-arg "CODE_REVISION=$revision" \
        --build-arg "SOURCE_HASH=$inputs_hash" -t "$hashed" "$context" >/dev/null
fi
docker tag "$hashed" "$image"
log "$image -> $hashed (base $base)"
