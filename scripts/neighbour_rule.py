#!/usr/bin/env python
"""The training-free neighbour rule on finished runs: selection on validation users, then test.

    python scripts/neighbour_rule.py select RUN_DIR [RUN_DIR ...] [--grid configs/bench/neighbour_grid.yaml]
    python scripts/neighbour_rule.py apply RUN_DIR [RUN_DIR ...] --alpha A --neighbours N
    python scripts/neighbour_rule.py select RUN_DIR --grid configs/bench/neighbour_grid_wide.yaml --tag wide --reuse

``select`` evaluates every (n, alpha) of the grid on the run's VALIDATION users and picks by the
rule written in the grid file (highest valid Recall@50; ties within ``tie`` go to the smaller
alpha, then the smaller n); only the chosen setting is evaluated on test users. ``apply`` evaluates
a fixed setting (chosen on another seed or dataset) on valid and test users. The bank is rebuilt
from each run's best checkpoint and training users (deterministic). Records land in
bench_results/neighbour_rule/RUN_NAME.json with the resolved config, commit, data fingerprint,
machine and wall time. ``--tag T`` writes to bench_results/neighbour_rule/T/ instead (a second
grid beside the reported one); ``--reuse`` takes the valid metrics of settings the untagged
record already evaluated from it (same run, same bank: the numbers are deterministic) and
evaluates only the new settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench import data_fingerprint, git_commit, machine  # noqa: E402

from dmirec.evaluation.evaluate import METRIC_NS, evaluate_model, load_run  # noqa: E402

OUT = ROOT / "bench_results" / "neighbour_rule"


_LOADED: dict = {}


def metrics_of(run: Path, split: str, overrides: dict) -> dict:
    """Metrics with the rule set to ``overrides``; the run and its bank are loaded once (the bank
    does not depend on alpha or n), then only the rule's two settings change."""
    if run not in _LOADED:
        _LOADED.clear()
        _LOADED[run] = load_run(run, "best", "cpu", {"neighbour_alpha": 1.0})
    model, cfg, data = _LOADED[run]
    model.neighbour_alpha = overrides["neighbour_alpha"]
    model.neighbours = overrides.get("neighbours", cfg.neighbours)
    return evaluate_model(model, data, split, cfg.seq_len, METRIC_NS, cfg.retrieval_backend, cfg.exclude_history,
                          cfg.eval_batch_size)


def record(run: Path, rows: list[dict], chosen: dict, test: dict, base_test: dict, wall: float, rule: str,
           tag: str = "") -> None:
    from dmirec.runs import rundir

    cfg = rundir.read_config(run)
    data = Path(rundir.read_data_ref(run)["path"])
    folder = OUT / tag if tag else OUT
    folder.mkdir(parents=True, exist_ok=True)
    out = {"run": run.name, "model": cfg.model, "seed": cfg.seed, "rule": rule, "grid": rows, "chosen": chosen,
           "test": test, "test_without_rule": base_test, "resolved_config": cfg.to_dict(), "commit": git_commit(),
           "data_fingerprint": data_fingerprint(data), "machine": machine(), "wall_s": wall}
    (folder / f"{run.name}.json").write_text(json.dumps(out, indent=2))


def select(runs: list[Path], grid_file: Path, tag: str = "", reuse: bool = False) -> None:
    grid = yaml.safe_load(grid_file.read_text())
    for run in runs:
        start = time.perf_counter()
        rows = []
        known = {}
        if reuse and (OUT / f"{run.name}.json").exists():
            old = json.loads((OUT / f"{run.name}.json").read_text())
            known = {(r["neighbours"], r["alpha"]): r["valid"] for r in old["grid"] if r["neighbours"]}
        for n in grid["neighbours"]:
            for alpha in grid["alpha"]:
                m = known.get((n, alpha)) or metrics_of(run, "valid", {"neighbour_alpha": alpha, "neighbours": n})
                rows.append({"neighbours": n, "alpha": alpha, "valid": m})
                print(f"{run.name}: n={n} alpha={alpha} valid R@50 {m['recall@50']:.4f}", flush=True)
        base_valid = metrics_of(run, "valid", {"neighbour_alpha": 0.0})
        rows.append({"neighbours": 0, "alpha": 0.0, "valid": base_valid})
        top = max(r["valid"]["recall@50"] for r in rows)
        tied = [r for r in rows if r["valid"]["recall@50"] >= top - grid["tie"]]
        chosen = min(tied, key=lambda r: (r["alpha"], r["neighbours"]))
        over = {"neighbour_alpha": chosen["alpha"], "neighbours": chosen["neighbours"] or 4}
        test = metrics_of(run, "test", over)
        base_test = metrics_of(run, "test", {"neighbour_alpha": 0.0})
        record(run, rows, {k: chosen[k] for k in ("neighbours", "alpha")}, test, base_test,
               time.perf_counter() - start, f"select on valid ({grid_file.name})" + (
                   f"; {len(known)} settings reused from the untagged record" if known else ""), tag)
        print(f"{run.name}: chosen n={chosen['neighbours']} alpha={chosen['alpha']}; test R@50 "
              f"{test['recall@50']:.4f} (without {base_test['recall@50']:.4f})", flush=True)


def apply(runs: list[Path], alpha: float, n: int) -> None:
    for run in runs:
        start = time.perf_counter()
        over = {"neighbour_alpha": alpha, "neighbours": n}
        valid = metrics_of(run, "valid", over)
        test = metrics_of(run, "test", over)
        base_test = metrics_of(run, "test", {"neighbour_alpha": 0.0})
        record(run, [{"neighbours": n, "alpha": alpha, "valid": valid}], {"neighbours": n, "alpha": alpha}, test,
               base_test, time.perf_counter() - start, "fixed setting")
        print(f"{run.name}: n={n} alpha={alpha}: test R@50 {test['recall@50']:.4f} "
              f"(without {base_test['recall@50']:.4f})", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("select")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--grid", type=Path, default=ROOT / "configs" / "bench" / "neighbour_grid.yaml")
    p.add_argument("--tag", default="", help="write to bench_results/neighbour_rule/TAG/ (a second grid)")
    p.add_argument("--reuse", action="store_true", help="reuse the untagged record's valid metrics")
    p = sub.add_parser("apply")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--neighbours", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "select":
        select(args.runs, args.grid, args.tag, args.reuse)
    else:
        apply(args.runs, args.alpha, args.neighbours)
