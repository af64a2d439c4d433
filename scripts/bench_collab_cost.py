#!/usr/bin/env python
"""What collaborative information costs: training seq/s and per-request serving latency, against REMI.

    python scripts/bench_collab_cost.py [--dataset beauty] [--steps 200] [--requests 500]

Training: the full step (sampling, forward, loss, backward, Adam) of REMI, COIN, DMI as drawn and
the collaborative DMI variants, one torch thread, after a warm-up, with the interest bank filled
from the freshly initialised model (speed does not depend on the weights). Serving: a bundle is
exported from each model (weights as initialised, bank included where the model reads one) and
``Bundle.recommend`` answers one user per call for ``--requests`` test users (the HTTP server
adds its own overhead on top, see scripts/bench_serve.py): p50 and p99 in ms. Run it on a quiet
machine. Results: bench_results/collab_cost.json (resolved configs, commit, machine, wall time).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import DATA, RESULTS, ROOT, git_commit, machine, prepared
from bench_speed import timed_steps
from dmirec.collab.neighbours import fill_bank
from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import eval_split
from dmirec.models import build_model
from dmirec.training.train import make_config

VARIANTS = {
    "remi": ("remi", []),
    "remi + neighbour rule": ("remi", ["neighbour_alpha=1.2", "neighbours=8"]),
    "coin": ("coin", []),
    "dmi (figure)": ("dmi", []),
    "dmi collaborative keys": ("dmi", ["dmi_keys=items,neighbours,others"]),
    "dmi target-supervised": ("dmi", ["dmi_keys=items,neighbours,others", "dmi_target=next_item",
                                      "cond_dropout=0.1"]),
    # the main table's rows: the refiner trained after a frozen REMI (no backbone gradient), the rule inside
    "dmi-collab (refiner after REMI, rule)": ("dmi", ["freeze_backbone_steps=1000000", "dmi_keys=items,neighbours,others",
                                                      "neighbour_alpha=2.4", "neighbours=8"]),
    "dmi-collab-target (extra queries, rule)": ("dmi", ["freeze_backbone_steps=1000000",
                                                        "dmi_keys=items,neighbours,others", "neighbour_alpha=2.4",
                                                        "neighbours=8", "dmi_target=next_item", "cond_dropout=0.1",
                                                        "dmi_output=extra"]),
}


def build(dataset: str, model: str, extra: list[str]):
    data = load_dataset(DATA / dataset)
    over = dict(e.split("=", 1) for e in extra)
    cfg = make_config(model, [ROOT / "configs" / dataset / f"{model}.yaml"], {"progress": False, **over})
    torch.manual_seed(0)
    net = build_model(cfg, data.num_items, data.item_popularity())
    if getattr(net, "bank", None) is not None:
        fill_bank(net, cfg, data.splits["train"])
    return net, cfg, data


def recommend_latency(bundle, data, seq_len: int, requests: int) -> dict:
    """p50/p99 ms of ``bundle.recommend`` (top 50), one test user per call, after 20 warm-up calls."""
    ev = eval_split(data.splits["test"], seq_len, requests)
    histories = [[data.item_ids[i - 1] for i in row[m]] for row, m in zip(ev.history, ev.mask)]
    for h in histories[:20]:
        bundle.recommend(h, 50)
    times = []
    for h in histories:
        start = time.perf_counter()
        bundle.recommend(h, 50)
        times.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "requests": len(times)}


def serving_latency(net, cfg, data, requests: int) -> dict:
    from dmirec.serving.bundle import load_bundle, write_bundle

    net.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle"
        queries = np.zeros((0, 1, cfg.embedding_dim), np.float32)
        write_bundle(path, model_state=net.state_dict(), config=cfg, item_ids=data.item_ids,
                     item_embeddings=net.item_embeddings().detach().float().numpy(),
                     popularity=data.item_popularity("train"), query_sample=queries, info={})
        return recommend_latency(load_bundle(path), data, cfg.seq_len, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prepared(args.dataset)
    start = time.perf_counter()
    rows = {}
    for label, (model, extra) in VARIANTS.items():
        net, cfg, data = build(args.dataset, model, extra)
        speed = timed_steps(net, cfg, data, args.steps, warmup=20) if net.trainable and label != "remi + neighbour rule" else None  # trains as REMI
        net, cfg, data = build(args.dataset, model, extra)  # bank of the same (initial) weights
        lat = serving_latency(net, cfg, data, args.requests)
        rows[label] = {"train_seq_per_s": speed, **lat, "resolved_config": cfg.to_dict()}
        print(f"{label}: {speed or 0:,.0f} train seq/s; serving p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms",
              flush=True)
    import os

    out = {"dataset": args.dataset, "steps": args.steps, "rows": rows, "commit": git_commit(), "machine": machine(),
           "wall_s": time.perf_counter() - start, "load_average_at_end": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "collab_cost.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
