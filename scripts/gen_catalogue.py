#!/usr/bin/env python
"""Write a synthetic serving bundle with a large clustered catalogue, to measure indexes and latency.

The catalogue is a Gaussian mixture: ``--clusters`` unit-norm centres in D dimensions, each item
its (random) cluster's centre plus isotropic noise of total norm about ``--spread``. The model is a
ComiRec-SA with random (seeded, Kaiming) attention weights whose item table is replaced by the
catalogue, so its interest vectors are attention-weighted averages of history items exactly as
a trained model's are. Synthetic users pick 1 to 3 clusters and draw 5 to 40 items from them; the
first ``--queries`` users' interest vectors are the bundle's query sample (index recall), and
``--histories`` more users are written as raw-id histories (JSON lines) for scripts/bench_serve.py.
Popularity is a Zipf law over a random permutation of the items.

    .venv/bin/python scripts/gen_catalogue.py bundles/synth-1m            # 1,000,000 items, ~1 min
    .venv/bin/python scripts/gen_catalogue.py /tmp/synth-100k --items 100000 --clusters 100

Writes BUNDLE (a format-1 bundle, no index yet) and BUNDLE.histories.jsonl beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dmirec.config import from_dict
from dmirec.models import build_model
from dmirec.serving.bundle import write_bundle


def make_users(rng: np.random.Generator, members: list[np.ndarray], count: int, min_len: int = 5,
               max_len: int = 40) -> list[np.ndarray]:
    """Item-id sequences (1-based) of ``count`` users with 1-3 cluster interests each."""
    users = []
    n_clusters = len(members)
    for _ in range(count):
        k = int(rng.integers(1, 4))
        clusters = rng.choice(n_clusters, size=k, replace=False)
        length = int(rng.integers(min_len, max_len + 1))
        which = clusters[rng.integers(0, k, size=length)]
        seq = np.array([members[c][rng.integers(0, len(members[c]))] for c in which], dtype=np.int64)
        users.append(seq + 1)
    return users


@torch.no_grad()
def interest_vectors(model, users: list[np.ndarray], seq_len: int, batch: int = 1024) -> np.ndarray:
    out = []
    for s in range(0, len(users), batch):
        part = users[s:s + batch]
        hist = np.zeros((len(part), seq_len), dtype=np.int64)  # (b, L) left-padded
        for b, seq in enumerate(part):
            tail = seq[-seq_len:]
            hist[b, seq_len - len(tail):] = tail
        h = torch.from_numpy(hist)
        out.append(model.user_vectors(h, h > 0).numpy())  # (b, K, D)
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle_dir", type=Path)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--interests", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--spread", type=float, default=1.0, help="norm of an item's offset from its cluster centre")
    p.add_argument("--queries", type=int, default=1000, help="sample users stored for recall measurement")
    p.add_argument("--histories", type=int, default=2000, help="user histories written for the load generator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    n, c, d = args.items, args.clusters, args.dim
    centres = rng.standard_normal((c, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # (C, D) unit norm
    assign = rng.integers(0, c, size=n)  # (N,) cluster of item i+1
    items = np.empty((n + 1, d), dtype=np.float32)  # (N + 1, D), row 0 = padding
    items[0] = 0.0
    step = 1 << 18
    for s in range(0, n, step):
        e = min(n, s + step)
        noise = rng.standard_normal((e - s, d)).astype(np.float32) * np.float32(args.spread / np.sqrt(d))
        items[1 + s:1 + e] = centres[assign[s:e]] + noise
    order = np.argsort(assign, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(assign, minlength=c))[:-1])  # item index (0-based) per cluster
    popularity = np.zeros(n + 1, dtype=np.int64)
    popularity[1 + rng.permutation(n)] = np.maximum(1, (1e6 / np.arange(1, n + 1) ** 0.8)).astype(np.int64)

    cfg = from_dict({"model": "comirec-sa", "embedding_dim": d, "num_interests": args.interests,
                     "seq_len": args.seq_len, "max_steps": 0})
    model = build_model(cfg, n, popularity)
    with torch.no_grad():
        model.item_emb.weight.copy_(torch.from_numpy(items))
    model.eval()

    users = make_users(rng, members, args.queries + args.histories)
    queries = interest_vectors(model, users[:args.queries], args.seq_len)  # (S, K, D)
    item_ids = [f"item{i}" for i in range(1, n + 1)]
    info = {
        "dataset": {"name": f"synthetic-catalogue-{n}", "num_items": n,
                    "generator": {"script": "scripts/gen_catalogue.py", "clusters": c, "spread": args.spread,
                                  "seed": args.seed}},
        "source": {"note": "random ComiRec-SA weights over a Gaussian-mixture item table; not trained"},
    }
    manifest = write_bundle(args.bundle_dir, model_state=model.state_dict(), config=cfg, item_ids=item_ids,
                            item_embeddings=items, popularity=popularity, query_sample=queries, info=info,
                            overwrite=args.overwrite)
    hist_path = args.bundle_dir.parent / f"{args.bundle_dir.name}.histories.jsonl"
    with open(hist_path, "w", encoding="utf-8") as fh:
        for seq in users[args.queries:]:
            fh.write(json.dumps([item_ids[i - 1] for i in seq]) + "\n")
    print(f"wrote {args.bundle_dir} ({n} items, {c} clusters, D={d}, K={args.interests}, "
          f"{manifest['query_sample_users']} sample users) and {hist_path} ({args.histories} histories) "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
