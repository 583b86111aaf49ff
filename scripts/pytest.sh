#!/usr/bin/env bash
# Runs pytest and fails when no test ran (pytest exit code 5).
set -uo pipefail
PY=${PY:-.venv/bin/python}
"$PY" -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
