#!/usr/bin/env bash
# Fills the image build context's wheelhouse: every wheel an image installs, downloaded on
# the host (a build stage has no index to reach), plus ragmesh's own wheel and pip.
#   scripts/wheelhouse.sh cpu|cuda [DIR]   (DIR defaults to .build/wheelhouse/<flavor>)
# CPU torch: pip finds 2.13.0+cpu through its configured find-links, or through
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (what CI sets).
set -euo pipefail
cd "$(dirname "$0")/.."
flavor=${1:?usage: wheelhouse.sh cpu|cuda [DIR]}
dir=${2:-.build/wheelhouse/$flavor}
PIP=${PIP:-.venv/bin/pip}
case $flavor in
  cpu) locks=(images/requirements-core.txt images/requirements-ml.txt) ;;
  cuda) locks=(images/requirements-cuda.txt) ;;
  *) echo "unknown flavor: $flavor" >&2; exit 2 ;;
esac
mkdir -p "$dir"
rm -f "$dir"/ragmesh-*.whl
# Markers are dropped: the host's Python decides nothing. A pin only an image's 3.11 release
# needs (async-timeout below 3.11.3, Debian's 3.11.2) must be in the wheelhouse too; the
# image's pip evaluates the markers when it installs.
wanted=$(mktemp)
trap 'rm -f "$wanted"' EXIT
sed -e 's/#.*//' -e 's/ *;.*//' "${locks[@]}" images/requirements-build.txt | sort -u | grep . >"$wanted"
# --no-deps: the locks are complete closures; the builder's --no-index install proves it.
"$PIP" download --quiet --no-deps --only-binary=:all: --dest "$dir" -r "$wanted"
# setuptools' build/ keeps modules deleted since the last build: start from none.
rm -rf build
"$PIP" wheel --quiet --no-deps --wheel-dir "$dir" .
rm -rf build
ls "$dir" | wc -l | xargs echo "wheels in $dir:"
