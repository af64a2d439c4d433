#!/usr/bin/env python
"""Evaluate one trained DMI checkpoint under several evaluation-time settings (no retraining).

    python scripts/dmi_eval_variants.py RUN_DIR [--split valid] [--label NAME]

Settings compared on the same weights: the run's own, the reverse chain at several (T', S),
stochastic reverse, the no-noise path, and fusion weight 0 (the backbone alone). This isolates what the
evaluation procedure does from what training does. Results are added to
bench_results/dmi_eval_variants.json under ``--label`` (read by `scripts/bench.py report`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dmirec.evaluation.evaluate import evaluate_model, load_run
from dmirec.runs import rundir

VARIANTS = [
    ("as trained", {}),
    ("T'=10, S=1", {"start_step": 10, "reverse_steps": 1}),
    ("T'=10, S=5", {"start_step": 10, "reverse_steps": 5}),
    ("T'=10, S=10", {"start_step": 10, "reverse_steps": 10}),
    ("T'=5, S=1", {"start_step": 5, "reverse_steps": 1}),
    ("T'=1, S=1", {"start_step": 1, "reverse_steps": 1}),
    ("T'=10, S=1, stochastic", {"start_step": 10, "reverse_steps": 1, "sampler": "ancestral"}),
    ("no noise (t=0)", {"no_noise": True}),
    ("fusion weight 0 (backbone)", {"fusion_weight": 0.0}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--label", default=None)
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--grid", default=None, metavar="KEY=V1,V2,...",
                        help="evaluate these values of one evaluation-time key instead of the fixed variants "
                             "(e.g. guidance=1,2,4)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bench_results"
                        / "dmi_eval_variants.json")
    args = parser.parse_args()
    cfg = rundir.read_config(args.run_dir)
    if cfg.model != "dmi":
        raise SystemExit(f"{args.run_dir} is a {cfg.model} run, not dmi")
    ckpt = rundir.load_checkpoint(args.run_dir / "checkpoints" / f"{args.checkpoint}.pt")
    rows = []
    variants = VARIANTS
    if args.grid:
        key, values = args.grid.split("=", 1)
        variants = [(f"{key}={v}", {key: v}) for v in values.split(",")]
    for name, over in variants:
        if int(over.get("reverse_steps", cfg.reverse_steps)) > (int(over.get("start_step", cfg.start_step))
                                                                 or cfg.diffusion_steps):
            continue
        torch.manual_seed(0)
        model, variant, data = load_run(args.run_dir, args.checkpoint, overrides=over)
        metrics = evaluate_model(model, data, args.split, variant.seq_len)
        rows.append({"variant": name, "overrides": over, **{k: metrics[k] for k in
                                                           ("recall@20", "recall@50", "hitrate@50", "ndcg@50")}})
        print(f"{name:<28} R@20 {metrics['recall@20']:.4f}  R@50 {metrics['recall@50']:.4f}", flush=True)
    label = args.label or args.run_dir.name
    store = json.loads(args.out.read_text()) if args.out.exists() else {}
    store[label] = {"run_dir": str(args.run_dir), "checkpoint": args.checkpoint, "step": ckpt.get("step"),
                    "split": args.split, "rows": rows}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(store, indent=2))


if __name__ == "__main__":
    main()
