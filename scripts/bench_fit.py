#!/usr/bin/env python
"""``dmirec fit`` on a benchmark dataset with no flag beyond ``--budget``, recorded.

    python scripts/bench_fit.py DATASET [--budget standard] [--out bench_runs/fit-DATASET] [--set KEY=VALUE ...]

Runs the product path (:func:`dmirec.pipeline.fit.fit`) on ``../shared/datasets/DATASET/interactions.csv``
(prepare, REMI to early stopping, neighbour rule, channels and merger on validation users, test
metrics, bundle) with one torch thread, and writes ``bench_results/fit/DATASET-BUDGET.json``: the
test table of ``report.json``, every choice of ``recipe.yaml``, commit, data fingerprint, machine
and wall time. ``--set KEY=VALUE`` passes a config key to the fit as ``dmirec fit --KEY=VALUE``
would (e.g. ``--set bank_search=hnsw``); the record is then
``bench_results/fit/DATASET-BUDGET-KEY=VALUE.json`` and holds the settings. The folder is
resumable: a killed run goes on when the command is run again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench import SHARED, data_fingerprint, git_commit, machine  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("--budget", default="standard", choices=["quick", "standard", "full"])
    p.add_argument("--out", default=None)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key for the fit, as `dmirec fit --KEY=VALUE` (repeatable)")
    a = p.parse_args()

    import torch

    from dmirec.config import parse_overrides
    from dmirec.pipeline.fit import fit

    overrides = parse_overrides([f"--{kv}" for kv in a.settings]) or None
    suffix = "".join(f"-{kv}" for kv in a.settings)

    torch.set_num_threads(1)
    src = SHARED / a.dataset / "interactions.csv"
    if not src.exists():
        sys.exit(f"{src} not found: the benchmark datasets live in ../shared/datasets")
    out = Path(a.out) if a.out else ROOT / "bench_runs" / f"fit-{a.dataset}-{a.budget}{suffix}"
    commit = git_commit()
    start = time.perf_counter()
    report = fit(src, out, a.budget, overrides=overrides, progress=False, threads=1)
    record = {"dataset": a.dataset, "budget": a.budget, "settings": overrides or {},
              "command": " ".join(["python", *sys.argv]),
              "test": report, "recipe": yaml.safe_load((out / "recipe.yaml").read_text()),
              "commit": commit, "data_fingerprint": data_fingerprint(out / "data"), "machine": machine(),
              "wall_s_last_call": round(time.perf_counter() - start, 1)}
    dest = ROOT / "bench_results" / "fit"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{a.dataset}-{a.budget}{suffix}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"test recall@50: recipe {report['recipe']['recall@50']:.4f}; "
          + ", ".join(f"{k} {v['recall@50']:.4f}" for k, v in report.items() if k != "recipe"))
