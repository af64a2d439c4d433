#!/usr/bin/env bash
# GPU check, under 12 minutes: the GPU tests (tests/test_gpu.py, marker `gpu`: REMI, the DMI variants,
# COIN, evaluation, bundles and the HTTP app on CUDA), then training throughput on the GPU (dense and
# sparse item-table updates, fp32 and bf16 autocast) for REMI at 12k, 1M and 5M items and DMI at 12k
# and 1M, recorded in bench_results/scale.json under speed-cuda, speed-cuda-bf16 and speed-cuda-dmi.
# Needs a CUDA build of torch in the environment (PYTHON=... to choose the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device (torch " + torch.__version__ + ")")'
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
status=0  # a failing test does not stop the throughput part; the script fails at the end
timeout 300 "$PY" -m pytest -q -m gpu tests/test_gpu.py || status=1
SPEED=(scripts/bench_scale.py speed --device cuda --steps 100 --warmup 10)
timeout 150 "$PY" "${SPEED[@]}" --items 12000,1000000,5000000 --tag speed-cuda
timeout 150 "$PY" "${SPEED[@]}" --items 12000,1000000,5000000 --bf16 --tag speed-cuda-bf16
timeout 120 "$PY" "${SPEED[@]}" --items 12000,1000000 --model dmi --tag speed-cuda-dmi
# large batches (the learning rate is the config's; a training run at batch B scales it, see docs/scale/step-speed.md)
# and the compiled step, at 12k items
for b in 1024 4096 8192; do
  timeout 90 "$PY" "${SPEED[@]}" --items 12000 --paths dense --batch_size $b --tag speed-cuda-batch$b
done
timeout 150 "$PY" "${SPEED[@]}" --items 12000 --paths dense --compile --tag speed-cuda-compiled
exit $status
