#!/bin/sh
# Removes what a service never runs from the image venv (build stage only): test suites,
# C++ headers, torch's test binaries and bundled protoc. About 300 MB of the ml venv.
set -eu
venv=${1:?usage: prune-venv.sh VENV}
for site in "$venv"/lib/python3*/site-packages; do
  # numpy's own tests stay: numpy.testing imports numpy._core.tests, and scipy imports
  # numpy.testing at start (seen with numpy 2.2 in the CUDA image).
  find "$site" -depth -type d -name tests ! -path '*/numpy/*' -exec rm -rf {} +
  if [ -d "$site/torch" ]; then
    rm -rf "$site/torch/test" "$site/torch/include"
    find "$site/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +
  fi
done
