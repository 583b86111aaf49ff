#!/usr/bin/env bash
# make images: build every CPU image with buildah (vfs storage, chroot isolation) on a local
# Debian base made with debootstrap, then start each one and use it (tests/images/image_smoke.py).
# make images-cuda (FLAVOR=cuda): build retrieval-cuda and generation-cuda the same way and
# run the stack with them in place of the CPU retrieval and generation (no GPU needed).
#
#   REGISTRY   image names' prefix                  (ghcr.io/ragmesh, the chart's image.registry)
#   TAG        image tag                             (the version in pyproject.toml)
#   BASE_IMAGE an existing base instead of the debootstrap one (e.g. python:3.11-slim-bookworm)
#   IMAGE_STORE buildah's storage root; vfs copies every layer, keep it off small disks
#   STORAGE_DRIVER vfs (default) or overlay (far less disk; what the CUDA images need)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STORE=${IMAGE_STORE:-/var/tmp/ragmesh-images}
DRIVER=${STORAGE_DRIVER:-vfs}  # vfs works everywhere; overlay, where the kernel allows it, is lighter
export BUILDAH_FLAGS="--storage-driver $DRIVER --root $STORE/root --runroot $STORE/run"
read -r -a flags <<<"$BUILDAH_FLAGS"
REGISTRY=${REGISTRY:-ghcr.io/ragmesh}
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
TAG=${TAG:-$VERSION}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
FLAVOR=${FLAVOR:-cpu}
if [ "$FLAVOR" = cuda ]; then
  DOCKERFILE=images/cuda.Dockerfile SUFFIX=-cuda TARGETS=(retrieval generation)
else
  DOCKERFILE=images/Dockerfile SUFFIX="" TARGETS=(query ingest retrieval gate keys embedding generation)
fi
LOGS=.build/images
mkdir -p "$LOGS"

"$PY" scripts/image_locks.py --check
PIP=.venv/bin/pip bash scripts/wheelhouse.sh "$FLAVOR" 2> >(grep -v "^WARNING: Location" >&2)
if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=localhost/ragmesh-base:bookworm
  bash scripts/base-image.sh "$BASE_IMAGE"
fi

for target in "${TARGETS[@]}"; do
  image=$REGISTRY/$target$SUFFIX:$TAG
  start=$SECONDS
  if ! buildah "${flags[@]}" bud --isolation chroot --layers --pull-never \
      -f "$DOCKERFILE" --target "$target" \
      --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$VERSION" \
      --build-arg REVISION="$REVISION" -t "$image" . >"$LOGS/build-$target$SUFFIX.log" 2>&1; then
    tail -30 "$LOGS/build-$target$SUFFIX.log"
    echo "building $image failed; log: $LOGS/build-$target$SUFFIX.log" >&2
    exit 1
  fi
  echo "built $image in $((SECONDS - start)) s"
done

if [ "$FLAVOR" = cuda ]; then
  "$PY" tests/images/image_smoke.py --registry "$REGISTRY" --tag "$TAG" --suffix retrieval=-cuda \
    --suffix generation=-cuda --budget-mb 0
else
  "$PY" tests/images/image_smoke.py --registry "$REGISTRY" --tag "$TAG"
fi
