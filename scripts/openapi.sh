#!/usr/bin/env bash
# Generates the REST API's OpenAPI (Swagger 2.0) document from the QueryService's
# google.api.http annotations with grpc-gateway's own generators (Debian golang-grpc-gateway:
# protoc-gen-swagger, and protoc-gen-grpc-gateway to prove the gateway accepts the routes).
#   openapi.sh [OUT_DIR]   writes OUT_DIR/ragmesh.swagger.json (default docs/api)
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${1:-docs/api}
GOOGLEAPIS=$("$PY" -c 'import google.api.annotations_pb2 as a, pathlib; print(pathlib.Path(a.__file__).parent.parent.parent)')
for plugin in protoc-gen-swagger protoc-gen-grpc-gateway; do
  command -v "$plugin" >/dev/null || { echo "$plugin not found: make system-deps" >&2; exit 1; }
done
gateway=$(mktemp -d)
trap 'rm -rf "$gateway"' EXIT
mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -Iproto -I"$GOOGLEAPIS" \
  --plugin=protoc-gen-swagger="$(command -v protoc-gen-swagger)" \
  --swagger_out=json_names_for_fields=true,allow_merge=true,merge_file_name=ragmesh:"$OUT" \
  --plugin=protoc-gen-grpc-gateway="$(command -v protoc-gen-grpc-gateway)" \
  --grpc-gateway_out="$gateway" \
  proto/ragmesh/v1/query_service.proto
# the gateway must have generated a handler for each of the three REST routes
for method in Ask Ingest GetIngestJob; do
  grep -q "request_QueryService_${method}_0" "$gateway"/ragmesh/v1/query_service.pb.gw.go || {
    echo "grpc-gateway generated no handler for $method" >&2; exit 1; }
done
