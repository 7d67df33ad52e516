#!/usr/bin/env bash
# Quickstart 2: set up, then run the test suite (no network, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -q "$@"
