#!/usr/bin/env bash
# GPU check, under 5 minutes: the GPU tests (tests/test_gpu.py, marker `gpu`), then training
# throughput on the GPU (dense and sparse item-table updates, fp32 and bf16 autocast) at 12k and
# 1M items, recorded in bench_results/scale.json under speed-cuda / speed-cuda-bf16.
# Needs a CUDA build of torch in the environment (PYTHON=... to choose the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device (torch " + torch.__version__ + ")")'
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
timeout 180 "$PY" -m pytest -q -x -m gpu tests/test_gpu.py
timeout 60 "$PY" scripts/bench_scale.py speed --device cuda --items 12000,1000000 --steps 100 --warmup 10 --tag speed-cuda
timeout 60 "$PY" scripts/bench_scale.py speed --device cuda --items 12000,1000000 --steps 100 --warmup 10 --bf16 --tag speed-cuda-bf16
