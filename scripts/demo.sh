#!/usr/bin/env bash
# make demo: start the local mesh (every service behind its Envoy sidecar, the ingress gateway
# in front), mint an end user's token, ingest the sample corpus and ask a question through the
# gateway with it, stop cleanly.
set -euo pipefail
RAGMESH=${RAGMESH:-.venv/bin/ragmesh}
DATA=${DATA:-var/demo}
QUESTION=${QUESTION:-"How often does the Keelhaven lighthouse flash, and how far can it be seen?"}

rm -rf "$DATA"
mkdir -p "$DATA"
LLM_FLAG=()
[ -n "${LLM:-}" ] && LLM_FLAG=(--llm)  # make demo-llm: SmolLM2 generates the answer
"$RAGMESH" --data-dir "$DATA" mesh up --rest-port 0 "${LLM_FLAG[@]}" >"$DATA/up.out" 2>&1 &
UP=$!
stop() { kill -TERM "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; }
trap stop EXIT

for _ in $(seq 900); do  # bounded: 180 s for the sidecars and the models
  grep -q '^ready:' "$DATA/up.out" && break
  if ! kill -0 "$UP" 2>/dev/null; then cat "$DATA/up.out"; exit 1; fi
  sleep 0.2
done
grep -q '^ready:' "$DATA/up.out" || { cat "$DATA/up.out"; echo "stack did not start"; exit 1; }
cat "$DATA/up.out"
echo
# the gateway wants a verified token: one of the local issuer, for tenant "demo"
TOKEN=$("$RAGMESH" --data-dir "$DATA" token --tenant demo --scope ask,ingest --subject demo-user)
echo "token for tenant demo (ask, ingest): ${TOKEN:0:24}..."
"$RAGMESH" --data-dir "$DATA" --token "$TOKEN" ingest samples/corpus
echo
echo "Q: $QUESTION"
echo -n "A: "
"$RAGMESH" --data-dir "$DATA" --token "$TOKEN" ask "$QUESTION"
echo
stop
trap - EXIT
tail -n 2 "$DATA/up.out"
