#!/usr/bin/env python
"""How much does a trained DMI refiner change its backbone's interests and recommendations?

    python scripts/dmi_correction.py RUN_DIR [RUN_DIR ...] [--split valid]

For each DMI run (its best checkpoint), on one split's users: the relative size of the fusion's
change ``||u_k - V_k|| / ||V_k||`` (mean and 90th percentile over users and interests), the mean
cosine between ``u_k`` and ``V_k``, the mean overlap of the merged top-50 lists served with and
without refinement (``fusion_weight = 0``: the backbone alone), and the share of users whose top-50 list
changes at all. A refiner that learned nothing shows a change near 0 and an overlap near 1.
Results are added to bench_results/dmi_correction.json (read by `scripts/bench.py report`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dmirec.data.sampler import eval_split
from dmirec.evaluation.evaluate import load_run, user_vectors
from dmirec.retrieval import search
from dmirec.runs import rundir

N = 50


def correction_stats(run_dir: Path, split: str) -> dict:
    cfg = rundir.read_config(run_dir)
    if cfg.model != "dmi":
        raise SystemExit(f"{run_dir} is a {cfg.model} run, not dmi")
    state = rundir.load_checkpoint(run_dir / "checkpoints" / "best.pt")
    vectors, items = {}, None
    for label, over in (("refined", {}), ("backbone", {"fusion_weight": 0.0})):
        model, _, data = load_run(run_dir, "best", overrides=over)
        eval_set = eval_split(data.splits[split], cfg.seq_len)
        vectors[label] = user_vectors(model, eval_set)  # (U, K, D)
        items = model.item_embeddings().detach().float().numpy()
    u, v = vectors["refined"], vectors["backbone"]
    rel = np.linalg.norm(u - v, axis=-1) / np.maximum(np.linalg.norm(v, axis=-1), 1e-12)  # (U, K)
    cos = (u * v).sum(-1) / np.maximum(np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-12)
    top_u = search(u, items, N).ids  # (U, N)
    top_v = search(v, items, N).ids
    overlap = np.array([len(set(a.tolist()) & set(b.tolist())) / N for a, b in zip(top_u, top_v)])
    return {"run_dir": str(run_dir), "split": split, "users": int(len(u)), "step": state.get("step"),
            "fusion_weight": cfg.fusion_weight, "no_noise": cfg.no_noise, "relative_change_mean": float(rel.mean()),
            "relative_change_p90": float(np.quantile(rel, 0.9)), "cosine_mean": float(cos.mean()),
            "top50_overlap_mean": float(overlap.mean()), "users_top50_changed": float((overlap < 1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bench_results"
                        / "dmi_correction.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = json.loads(args.out.read_text()) if args.out.exists() else {}
    for run_dir in args.run_dirs:
        stats = correction_stats(run_dir, args.split)
        store[run_dir.name] = stats
        print(f"{run_dir.name:<34} change {stats['relative_change_mean']:.4f} (p90 {stats['relative_change_p90']:.4f})"
              f"  cos {stats['cosine_mean']:.4f}  top-50 overlap {stats['top50_overlap_mean']:.4f}"
              f"  users changed {stats['users_top50_changed']:.3f}", flush=True)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(store, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
