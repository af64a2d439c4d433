#!/usr/bin/env python
"""Batch candidates of a bundle: users per second and peak memory of ``dmirec recommend``.

    python scripts/bench_batch.py BUNDLE --input LOG --label NAME [-n 200]

Runs ``dmirec recommend BUNDLE --input LOG -n N`` in a fresh process (one torch thread), counts the
users of its output, and writes ``bench_results/batch.json[NAME]``: users, n, wall seconds,
users/s, the process's peak RSS, the command, the machine's load average when it started, commit
and machine. A bundle with a recipe (``dmirec fit``, or ``dmirec export`` of a run with one) is
served through the same ``Recipe.rank`` as ``/recommend``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench import git_commit, machine  # noqa: E402

OUT = ROOT / "bench_results" / "batch.json"


def measure(bundle: Path, log: Path, n: int) -> dict:
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "candidates.parquet"
        cmd = [sys.executable, "-m", "dmirec", "recommend", str(bundle), "--input", str(log), "--output", str(out),
               "-n", str(n), "--no-progress"]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        text = proc.stdout.read()
        wall = time.perf_counter() - start
        if status:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
        users = len(set(pq.read_table(out, columns=["user"]).column("user").to_pylist()))
    return {"users": users, "n": n, "wall_s": wall, "users_per_second": users / wall,
            "peak_rss_mb": usage.ru_maxrss / 1024, "load_average_at_start": load,
            "command": " ".join(["dmirec", *cmd[3:7], "-n", str(n)]), "commit": git_commit(), "machine": machine()}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--input", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("-n", type=int, default=200)
    a = p.parse_args()
    row = measure(Path(a.bundle), Path(a.input), a.n)
    records = json.loads(OUT.read_text()) if OUT.exists() else {}
    records[a.label] = row
    OUT.write_text(json.dumps(records, indent=2) + "\n")
    print(f"{a.label}: {row['users']:,} users in {row['wall_s']:.1f} s = {row['users_per_second']:,.0f} users/s, "
          f"peak RSS {row['peak_rss_mb']:,.0f} MB (load {row['load_average_at_start']:.1f} at start)")
