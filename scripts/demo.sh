#!/usr/bin/env bash
# Quickstart 1: set up, then run the main job on the embedded default (configs/demo.yaml):
# demo data -> teacher -> collaborative search -> export -> summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/collabprune demo "$@"
