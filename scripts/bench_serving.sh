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
$PY - <<'PYEOF'
import json, os, subprocess, sys, time
from pathlib import Path
out = {}
for model in ("comirec-sa", "dmi"):
    bundle = Path(f"bundles/beauty-{model}")
    if not bundle.exists():
        continue
    cmd = [sys.executable, "-m", "dmirec", "recommend", str(bundle), "--input", "../shared/datasets/beauty/interactions.csv",
           "--output", f"bundles/beauty-{model}-candidates.parquet", "-n", "200", "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    text = proc.stdout.read()
    assert status == 0, text
    wall = time.perf_counter() - start
    import pyarrow.parquet as pq
    table = pq.read_table(f"bundles/beauty-{model}-candidates.parquet", columns=["user"])
    users = len(set(table.column("user").to_pylist()))
    out[f"beauty {model}"] = {"users": users, "n": 200, "wall_s": wall, "users_per_second": users / wall,
                              "peak_rss_mb": usage.ru_maxrss / 1024, "command": " ".join(["dmirec"] + cmd[3:])}
    print(out[f"beauty {model}"])
Path("bench_results/batch.json").write_text(json.dumps(out, indent=2))
PYEOF
$PY scripts/bench.py report
