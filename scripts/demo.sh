#!/usr/bin/env bash
# make demo: start the local stack, ingest the sample corpus, ask a question, stop cleanly.
set -euo pipefail
RAGMESH=${RAGMESH:-.venv/bin/ragmesh}
DATA=${DATA:-var/demo}
QUESTION=${QUESTION:-"How often does the Keelhaven lighthouse flash, and how far can it be seen?"}

rm -rf "$DATA"
mkdir -p "$DATA"
"$RAGMESH" --data-dir "$DATA" up >"$DATA/up.out" 2>&1 &
UP=$!
stop() { kill -TERM "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; }
trap stop EXIT

for _ in $(seq 600); do  # bounded: 120 s for the models to load
  grep -q '^ready:' "$DATA/up.out" && break
  if ! kill -0 "$UP" 2>/dev/null; then cat "$DATA/up.out"; exit 1; fi
  sleep 0.2
done
grep -q '^ready:' "$DATA/up.out" || { cat "$DATA/up.out"; echo "stack did not start"; exit 1; }
cat "$DATA/up.out"
echo
"$RAGMESH" --data-dir "$DATA" ingest samples/corpus
echo
echo "Q: $QUESTION"
echo -n "A: "
"$RAGMESH" --data-dir "$DATA" ask "$QUESTION"
echo
stop
trap - EXIT
tail -n 2 "$DATA/up.out"
