#!/usr/bin/env bash
# Creates the peers' own venvs for the side-by-side benchmarks, from pinned locks:
#   .bench/infinity  infinity-emb (an embedding server)
#   .bench/milvus    Milvus Lite (a vector database)
# Each is made once; a changed lock remakes it.
set -euo pipefail
cd "$(dirname "$0")/.."
for peer in infinity milvus; do
  lock="bench/peers/$peer.lock"
  venv=".bench/$peer"
  stamp="$venv/.lock.sha256"
  sum=$(sha256sum "$lock" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    continue
  fi
  echo "bench-peers: installing $peer into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r "$lock"
  echo "$sum" > "$stamp"
done
