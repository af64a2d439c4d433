#!/usr/bin/env bash
# The newcomer's path, timed: a fresh clone, `make demo`, `dmirec fit` on a second log (a synthetic
# one with planted interests, written by `dmirec synth`), `dmirec serve` and one recommendation.
#
#     bash scripts/newcomer_check.sh [WORKDIR]        # default: a new folder under /tmp
#
# Writes bench_results/newcomer.json (wall time of each step, commit, machine) in this checkout.
# It needs what `make demo` needs (Python 3.11, the torch wheel through constraints.txt); it sends
# one request to a server on 127.0.0.1 and stops it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d /tmp/dmirec-newcomer.XXXXXX)}"
mkdir -p "$work"
declare -A wall
step() {  # name command...
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  wall[$name]=$(echo "$(date +%s.%N) - $t0" | bc)
  echo "[newcomer] $name: ${wall[$name]} s"
}
step clone git clone -q "$repo" "$work/dmirec"
cd "$work/dmirec"
step make_demo make demo
step synth_log .venv/bin/dmirec synth "$work/second.csv" --preset small --seed 7
step fit .venv/bin/dmirec fit "$work/second.csv" --out "$work/fitted" --budget quick --no-progress
port=$(.venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
.venv/bin/dmirec serve "$work/fitted/bundle" --port "$port" > "$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
t0=$(date +%s.%N)
until curl -sf "127.0.0.1:$port/health" > /dev/null; do sleep 0.2; done
wall[serve_ready]=$(echo "$(date +%s.%N) - $t0" | bc)
history=$(.venv/bin/python -c "
import pandas as pd; df = pd.read_csv('$work/second.csv'); u = df.iloc[0, 0]
print(df[df.iloc[:, 0] == u].iloc[:, 1].astype(str).tolist()[-5:])" | tr "'" '"')
answer=$(curl -sf "127.0.0.1:$port/recommend" -H 'content-type: application/json' -d "{\"history\": $history, \"n\": 10}")
echo "[newcomer] one recommendation: ${answer:0:200}"
kill $server
commit=$(git -C "$repo" rev-parse HEAD)
"$repo/.venv/bin/python" - "$repo/bench_results/newcomer.json" "$commit" "$answer" \
  "clone=${wall[clone]}" "make_demo=${wall[make_demo]}" "synth_log=${wall[synth_log]}" "fit=${wall[fit]}" \
  "serve_ready=${wall[serve_ready]}" <<'EOF'
import json, os, platform, sys
out, commit, answer, *walls = sys.argv[1:]
record = {"command": "bash scripts/newcomer_check.sh", "commit": commit,
          "wall_s": {k: round(float(v), 1) for k, v in (w.split("=") for w in walls)},
          "recommendation_items": len(json.loads(answer)["items"]),
          "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                      "load_avg_1min_at_end": os.getloadavg()[0]}}
open(out, "w").write(json.dumps(record, indent=2) + "\n")
print(json.dumps(record["wall_s"]))
EOF
