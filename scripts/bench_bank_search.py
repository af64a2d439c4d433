#!/usr/bin/env python
"""Exact against HNSW search of the interest bank, on finished runs with their neighbour rule.

    python scripts/bench_bank_search.py bench_runs/beauty-remi-s2021 [RUN ...] [--requests 300] [--ef 128]
    python scripts/bench_bank_search.py --sizes 20000,200000,1000000 [--neighbours 8]   # synthetic banks

For each run, the neighbour rule it chose on validation users (bench_results/neighbour_rule/RUN.json)
is applied with ``bank_search=exact`` and ``bank_search=hnsw``: test metrics of both, the overlap
of the neighbour sets on the test users' interests (share of the exact top-n users that HNSW also
returns), the graph's build time, and the per-request latency of ``Bundle.recommend`` (top 50,
one test user per call, the bank included) for each. Records: bench_results/bank_search/RUN.json
with resolved configs, commit, data fingerprint, machine and wall time.

``--sizes``: banks of that many synthetic users (K=4, D=64, interests drawn around 2,000 random
centres), one query user (K searches) per call as a request makes them: p50/p99 ms per call for
the exact and the HNSW search, the overlap, and the graph's build time. Record:
bench_results/bank_search/synthetic.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench import data_fingerprint, git_commit, machine  # noqa: E402
from bench_collab_cost import recommend_latency  # noqa: E402
from dmirec.data.sampler import eval_split  # noqa: E402
from dmirec.evaluation.evaluate import evaluate_model, load_run, user_vectors  # noqa: E402
from dmirec.serving import load_bundle  # noqa: E402
from dmirec.serving.export import export_bundle  # noqa: E402

OUT = ROOT / "bench_results" / "bank_search"


def overlap(exact_bank, ann_bank, queries: torch.Tensor, n: int) -> float:
    """Mean share of each query's exact top-n neighbours that the HNSW search also returns. A
    neighbour is a bank row (a user's best-matching interest), compared by its bytes."""
    shares = []
    for start in range(0, len(queries), 4096):
        block = queries[start:start + 4096]  # (Q, D)
        ve, _, fe = exact_bank.search(block, n)
        va, _, fa = ann_bank.search(block, n)
        for re_, ok_e, ra, ok_a in zip(ve, fe, va, fa):
            want = {v.numpy().tobytes() for v, f in zip(re_, ok_e) if f}
            got = {v.numpy().tobytes() for v, f in zip(ra, ok_a) if f}
            shares.append(len(want & got) / max(len(want), 1))
    return float(np.mean(shares))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--sizes", default="", help="synthetic bank sizes (users), comma separated")
    p.add_argument("--neighbours", type=int, default=8, help="n for the synthetic banks")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--ef", type=int, default=128)
    p.add_argument("--overlap_users", type=int, default=500, help="test users whose interests are compared")
    args = p.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.sizes:
        synthetic(args)
    for run in args.runs:
        start = time.perf_counter()
        chosen = json.loads((ROOT / "bench_results" / "neighbour_rule" / f"{run.name}.json").read_text())["chosen"]
        rule = {"neighbour_alpha": chosen["alpha"], "neighbours": chosen["neighbours"]}
        row = {"run": run.name, "rule": rule, "ef": args.ef, "kinds": {}}
        models = {}
        for kind in ("exact", "hnsw"):
            over = {**rule, "bank_search": kind, "bank_hnsw_ef": args.ef}
            model, cfg, data = load_run(run, overrides=over)
            models[kind] = model
            t0 = time.perf_counter()
            if kind == "hnsw":
                model.bank._hnsw_index()
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            test = evaluate_model(model, data, "test", cfg.seq_len)
            eval_s = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as tmp:
                export_bundle(run, Path(tmp) / "b", overrides=over)
                latency = recommend_latency(load_bundle(Path(tmp) / "b"), data, cfg.seq_len, args.requests)
            row["kinds"][kind] = {"test": test, "graph_build_s": build_s, "test_pass_s": eval_s, **latency,
                                  "resolved_config": cfg.to_dict()}
            print(f"{run.name} {kind}: test R@50 {test['recall@50']:.4f}, p50 {latency['p50_ms']:.2f} ms, "
                  f"p99 {latency['p99_ms']:.2f} ms, build {build_s:.1f} s", flush=True)
        ev = eval_split(data.splits["test"], cfg.seq_len, args.overlap_users)
        models["exact"].neighbour_alpha = 0.0  # the query interests: the model without its rule
        vecs = torch.from_numpy(user_vectors(models["exact"], ev))  # (users, K, D)
        row["bank_users"] = models["exact"].bank.size
        row["neighbour_overlap"] = overlap(models["exact"].bank, models["hnsw"].bank,
                                           vecs.reshape(-1, vecs.shape[-1]), rule["neighbours"])
        row.update({"commit": git_commit(), "data_fingerprint": data_fingerprint(Path(data.path)), "machine": machine(),
                    "wall_s": time.perf_counter() - start})
        print(f"{run.name}: neighbour overlap {row['neighbour_overlap']:.4f} over {args.overlap_users} users", flush=True)
        (OUT / f"{run.name}.json").write_text(json.dumps(row, indent=2))


def synthetic(args) -> None:
    import faiss

    from dmirec.collab.neighbours import InterestBank

    faiss.omp_set_num_threads(1)  # one core per request, as a serving worker with --threads 1
    start_all = time.perf_counter()
    rows = []
    for size in [int(x) for x in args.sizes.split(",")]:
        g = torch.Generator().manual_seed(size)
        centres = torch.randn(2000, 64, generator=g)
        vectors = centres[torch.randint(0, 2000, (size, 4), generator=g)] + 0.5 * torch.randn(size, 4, 64, generator=g)
        queries = centres[torch.randint(0, 2000, (args.requests, 4), generator=g)] + 0.5 * torch.randn(
            args.requests, 4, 64, generator=g)  # (R, K, D): one user's interests per request
        banks = {}
        row = {"bank_users": size, "neighbours": args.neighbours, "ef": args.ef}
        for kind in ("exact", "hnsw"):
            bank = InterestBank(64, 4, search=kind, hnsw_ef=args.ef)
            bank.set(vectors, torch.arange(size))
            t0 = time.perf_counter()
            if kind == "hnsw":
                bank._hnsw_index()
            build = time.perf_counter() - t0
            for q in queries[:10]:
                bank.search(q, args.neighbours)
            times = []
            for q in queries:
                t0 = time.perf_counter()
                bank.search(q, args.neighbours)
                times.append(1000 * (time.perf_counter() - t0))
            banks[kind] = bank
            row[kind] = {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                         "graph_build_s": build}
        row["neighbour_overlap"] = overlap(banks["exact"], banks["hnsw"], queries.reshape(-1, 64), args.neighbours)
        print(f"bank {size:,} users: exact p50 {row['exact']['p50_ms']:.2f} ms, hnsw p50 {row['hnsw']['p50_ms']:.2f} ms, "
              f"overlap {row['neighbour_overlap']:.4f}, build {row['hnsw']['graph_build_s']:.0f} s", flush=True)
        rows.append(row)
    (OUT / "synthetic.json").write_text(json.dumps({
        "rows": rows, "argv": sys.argv[1:], "commit": git_commit(), "machine": machine(), "seed": "bank size",
        "wall_s": time.perf_counter() - start_all}, indent=2))


if __name__ == "__main__":
    main()
