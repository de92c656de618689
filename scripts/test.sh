#!/usr/bin/env bash
# The one test command: dependencies, lint, type check, test suite.
# Extra arguments are passed to pytest, e.g. `scripts/test.sh -k mosquitto -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== install-deps"
bash scripts/install-deps.sh
echo "== ruff check"
python3 -m ruff check .
echo "== mypy"
python3 -m mypy
echo "== pytest"
exec python3 -m pytest -q -p no:cacheprovider "$@"
