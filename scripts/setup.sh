#!/usr/bin/env bash
# Create .venv (if missing) and install collabprune with its dev and onnx extras into it.
# pip resolves torch/torchvision from the package index (the CUDA build, which also runs on CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,onnx]"
