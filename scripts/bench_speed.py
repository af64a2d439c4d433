#!/usr/bin/env python
"""Speed benchmark: training sequences/s per model, and DMI inference cost per 1,000 users.

    python scripts/bench_speed.py [--datasets beauty,gowalla] [--steps 300]

Run it alone on a quiet machine: throughput is what the other benchmark runs cannot measure
cleanly when the machine is shared. Training speed is the full step (batch sampling, forward,
sampled softmax over 1,280 shared negatives, backward, Adam) with the reference settings of each
dataset's config, after a warm-up, evaluation excluded. Inference is interests + refinement
(S reverse steps) + exact retrieval of the top 50 over the whole catalogue, for 1,000 test users.
Weights are freshly initialised: speed does not depend on their values. Results are written to
bench_results/speed.json (read by `scripts/bench.py report`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench import DATA, RESULTS, ROOT, machine, prepared
from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import TrainSampler, eval_split
from dmirec.models import build_model
from dmirec.objectives.losses import NegativeSampler
from dmirec.retrieval import search
from dmirec.training import optim
from dmirec.training.train import make_config, make_optimizer, train_step

MODELS = ["comirec-sa", "remi", "comirec-dr", "mind", "youtube-dnn", "dmi"]


def timed_steps(model, cfg, data, steps: int, warmup: int = 30) -> float:
    """Training seq/s of ``model``: ``warmup`` steps, then ``steps`` timed full steps (train_step)."""
    sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=0)
    negatives = NegativeSampler(data.num_items, cfg.negative_sampler)
    gen = torch.Generator().manual_seed(1)
    optim.setup_table(model, cfg, data.num_items)
    opt = make_optimizer(model, cfg)
    has_bank = getattr(model, "bank", None) is not None
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        train_step(model, opt, cfg, sampler.sample(), negatives, gen, "cpu", use_users=has_bank)
    return cfg.batch_size * steps / (time.perf_counter() - start)


def train_speed(dataset: str, model_name: str, steps: int, warmup: int = 30) -> float:
    data = load_dataset(DATA / dataset)
    cfg = make_config(model_name, [ROOT / "configs" / dataset / f"{model_name}.yaml"], {"progress": False})
    torch.manual_seed(0)
    model = build_model(cfg, data.num_items, data.item_popularity())
    return timed_steps(model, cfg, data, steps, warmup)


@torch.no_grad()
def inference_ms_per_1000(dataset: str, reverse_steps: int, repeats: int = 7) -> float:
    """Interests + refinement with S reverse steps (S=0: no refinement, fusion weight 0) + exact top-50 retrieval."""
    data = load_dataset(DATA / dataset)
    over = {"progress": False, "reverse_steps": reverse_steps} if reverse_steps else {"progress": False, "fusion_weight": 0.0}
    if reverse_steps:
        over["start_step"] = 10
    cfg = make_config("dmi", [ROOT / "configs" / dataset / "dmi.yaml"], over)
    torch.manual_seed(0)
    model = build_model(cfg, data.num_items, data.item_popularity()).eval()
    ev = eval_split(data.splits["test"], cfg.seq_len, 1000)
    hist, mask = torch.from_numpy(ev.history), torch.from_numpy(ev.mask)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        vecs = model.user_vectors(hist, mask)  # (1000, K, D)
        search(vecs, model.item_embeddings().detach(), 50, backend="torch")
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best * 1000 / len(ev.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="beauty,gowalla")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    out = {"machine": machine(), "steps": args.steps, "train_seq_per_s": {}, "dmi_inference_ms_per_1000_users": {}}
    start = time.perf_counter()
    for ds in args.datasets.split(","):
        prepared(ds)
        out["train_seq_per_s"][ds] = {}
        for name in MODELS:
            speed = train_speed(ds, name, args.steps)
            out["train_seq_per_s"][ds][name] = speed
            print(f"{ds} {name}: {speed:,.0f} train seq/s", flush=True)
        out["dmi_inference_ms_per_1000_users"][ds] = {}
        for s in (0, 1, 5, 10):
            ms = inference_ms_per_1000(ds, s)
            out["dmi_inference_ms_per_1000_users"][ds][str(s)] = ms
            print(f"{ds} DMI inference S={s}: {ms:.1f} ms per 1,000 users", flush=True)
    out["wall_s"] = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'speed.json'}")


if __name__ == "__main__":
    main()
