#!/usr/bin/env bash
# The demo: install what is missing (mosquitto, the Python packages), then run `syncd demo`.
# Extra arguments go to `syncd demo` (try --help, --duration 60, --skus 50, --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >&2
exec python3 -m syncd.cli demo "$@"
