#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh), then runs pytest on everything but the `gpu` marker.
#   bash scripts/test.sh                 # the whole CPU suite (unit, sim, slow)
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
PYTHON="${VIRTUAL_ENV:-$ROOT/.venv}/bin/python"
set +e
if [[ " $* " == *" -m "* ]]; then
  "$PYTHON" -m pytest "$@"
else
  "$PYTHON" -m pytest -m "not gpu" --durations=30 "$@"
fi
exit $?
