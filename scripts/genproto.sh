#!/usr/bin/env bash
# Regenerates the Python code for proto/ragmesh/v1 into OUT (default svc/), and the descriptor
# set the load tester's ghz reads (--protoset) into PROTOSET (default
# charts/ragmesh/files/ragmesh.protoset): the canaries' load webhooks need no server reflection.
# googleapis protos are read from the installed googleapis-common-protos package.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${1:-svc}
GOOGLEAPIS=$("$PY" -c 'import google.api.annotations_pb2 as a, pathlib; print(pathlib.Path(a.__file__).parent.parent.parent)')
mkdir -p "$OUT/ragmesh/v1"
rm -f "$OUT"/ragmesh/v1/*_pb2*.py "$OUT"/ragmesh/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc -Iproto -I"$GOOGLEAPIS" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" --mypy_grpc_out="$OUT" \
  proto/ragmesh/v1/*.proto
touch "$OUT/ragmesh/v1/__init__.py"
PROTOSET=${PROTOSET:-charts/ragmesh/files/ragmesh.protoset}
mkdir -p "$(dirname "$PROTOSET")"
"$PY" -m grpc_tools.protoc -Iproto -I"$GOOGLEAPIS" --include_imports \
  --descriptor_set_out="$PROTOSET" proto/ragmesh/v1/*.proto
