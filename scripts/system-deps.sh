#!/usr/bin/env bash
# Installs the Debian packages ragmesh needs, when they are missing.
#   system-deps.sh          what make test and make demo need
#   system-deps.sh images   also buildah and debootstrap, for make images
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)  # prometheus + promtool, for the PromQL tests
command -v jq >/dev/null || need+=(jq)  # the canary webhooks pipe ghz's JSON report into jq
command -v curl >/dev/null || need+=(curl)
command -v groff >/dev/null || need+=(groff-base)  # scripts/manpages_corpus.py renders with it
# grpc-gateway's generators (protoc-gen-grpc-gateway, protoc-gen-swagger): the OpenAPI document
command -v protoc-gen-swagger >/dev/null || need+=(golang-grpc-gateway)
if [ "${1:-}" = images ]; then
  command -v buildah >/dev/null || need+=(buildah)
  command -v debootstrap >/dev/null || need+=(debootstrap)
fi
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
