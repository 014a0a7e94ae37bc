#!/usr/bin/env bash
# The GPU path, proven on a fresh GPU machine: install from the project's files (TensorFlow with NVIDIA's CUDA
# libraries: the `gpu` extra), then print model-only films/s at batch sizes 32-512, `pneumoscreen screen` over the
# full-size films, and GPU memory. Runs on a CPU-only machine too (it says so and measures the CPU).
#
# Usage: bash bench/gpu.sh [DATA_DIR]   (DATA_DIR: ../shared/data by default; synthetic films when absent)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
venv="${PNEUMOSCREEN_GPU_VENV:-.venv-gpu}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  extra=gpu
  command -v nvidia-smi >/dev/null 2>&1 || extra=test  # no NVIDIA driver here: the CPU build is enough
  "$venv/bin/pip" install -q -e ".[$extra]"
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
"$venv/bin/python" bench/gpu.py --data "$data"
