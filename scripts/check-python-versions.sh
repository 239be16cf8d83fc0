#!/usr/bin/env bash
# Check that the pinned environment resolves on every supported Python, without installing it: pip
# resolves requirements-dev.txt (the Airflow environment plus the tests) under constraints.txt for each
# version as if it ran there, from binary wheels only, as an image build or a fresh venv would.
#
#   scripts/check-python-versions.sh [VERSION ...]     (default: 3.11.2 3.12)
#
# 3.11.2 is Debian 12's own python3: some current wheels need 3.11.5 or later, so a pin set resolved
# on a newer 3.11 may not resolve there. pip checks Requires-Python and wheel tags against VERSION, but
# evaluates environment markers for the Python running it: a dependency only for older patch releases
# (async-timeout for redis below 3.11.3) must be pinned in constraints.txt by hand.
#
# A version that resolved is remembered under ~/.cache/abalone (keyed by a hash of the pins, the
# requirements and this script), so an unchanged pin set is not resolved again (about 100 s a version).
# ABALONE_RECHECK=1 resolves anyway.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
versions=("$@")
((${#versions[@]})) || versions=(3.11.2 3.12)
target=$(mktemp -d)
trap 'rm -rf "$target"' EXIT
inputs=$(cat "$root"/constraints.txt "$root"/requirements*.txt "$0" | sha256sum | cut -c1-16)
checked=${XDG_CACHE_HOME:-$HOME/.cache}/abalone/python-versions

status=0
for version in "${versions[@]}"; do
    printf '[python-versions] Python %s: ' "$version" >&2
    stamp="$checked/$inputs-$version"
    if [[ -f "$stamp" && "${ABALONE_RECHECK:-0}" != 1 ]]; then
        printf 'resolves (checked %s; pins unchanged since)\n' "$(cat "$stamp")" >&2
    elif out=$("$python" -m pip install --dry-run --ignore-installed --quiet --report - --target "$target" \
            --python-version "$version" --implementation cp --only-binary=:all: \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform any \
            -c "$root/constraints.txt" -r "$root/requirements-dev.txt" 2>"$target/err"); then
        printf 'resolves (%s packages)\n' "$(grep -o '"download_info"' <<<"$out" | wc -l)" >&2
        mkdir -p "$checked" && date -u +%Y-%m-%dT%H:%MZ >"$stamp"
    else
        printf 'does NOT resolve\n' >&2
        grep -v '^WARNING: Location' "$target/err" | tail -20 >&2 || true
        status=1
    fi
done
exit "$status"
