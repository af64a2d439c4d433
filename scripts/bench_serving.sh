#!/usr/bin/env bash
# Regenerates every serving number in BENCHMARKS.md (bench_results/serve.json and batch.json).
# Needs the trained benchmark runs bench_runs/beauty-comirec-sa-s2021 and bench_runs/beauty-dmi-s2021
# (python scripts/bench.py run zoo / run dmi). Run it on an otherwise idle machine: about 6 minutes.
#   bash scripts/bench_serving.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DMIREC="$PY -m dmirec"
mkdir -p bundles bench_results
rm -f bench_results/serve.json
for model in comirec-sa dmi; do
  run=bench_runs/beauty-$model-s2021
  if [ ! -f "$run/checkpoints/best.pt" ]; then echo "skip $model: $run missing"; continue; fi
  $DMIREC export "$run" "bundles/beauty-$model" --overwrite
  $PY scripts/bench_serve.py "bundles/beauty-$model" --rates 50,100,200 --duration 15 --pin --label "beauty $model (exact)"
done
# 1,000,000-item clustered catalogue with an IVF and an HNSW index
$PY scripts/gen_catalogue.py bundles/synth-1m --overwrite
$DMIREC index bundles/synth-1m --kind ivf --nlist 1024 --nprobe 16
$PY scripts/bench_serve.py bundles/synth-1m --rates 50,100,200 --duration 15 --pin --label "synthetic 1M, IVF"
$DMIREC index bundles/synth-1m --kind hnsw --hnsw-m 32 --ef-construction 100 --ef-search 128
$PY scripts/bench_serve.py bundles/synth-1m --rates 50,100,200 --duration 15 --pin --label "synthetic 1M, HNSW"
# batch candidates for every beauty user, with peak memory of the process
for model in comirec-sa dmi; do
  [ -d "bundles/beauty-$model" ] || continue
  $PY scripts/bench_batch.py "bundles/beauty-$model" --input ../shared/datasets/beauty/interactions.csv --label "beauty $model"
done
$PY scripts/bench.py report
