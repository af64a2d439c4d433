#!/usr/bin/env python
"""Milliseconds per request of a bundle, one request at a time, in-process (no HTTP).

    python scripts/bench_request.py BUNDLE [BUNDLE ...] [--requests 300] [--history 8]

Loads each bundle (:func:`dmirec.serving.load_bundle`) in one process with one torch thread, asks
``Bundle.recommend`` (what ``/recommend`` calls) for the top 50 of ``--requests`` seeded random
histories of ``--history`` catalogue items after 20 warm-up requests, bundles alternating round by
round (3 rounds, the best round kept: the least disturbed by other load), and writes
``bench_results/request.json[BUNDLE name]``: ms per request of each round, the bundle's served
test Recall@50 from its manifest, the machine's load average, commit and machine. It measures
the cost of ranking, not of the HTTP server (``scripts/bench_serve.py`` does that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench import git_commit, machine  # noqa: E402

OUT = ROOT / "bench_results" / "request.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--history", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()

    import numpy as np
    import torch

    from dmirec.serving import load_bundle

    torch.set_num_threads(1)
    bundles = {Path(b).name: load_bundle(b) for b in a.bundles}
    histories = {}
    for name, path in zip(bundles, a.bundles):  # the same seeded histories for every bundle of one catalogue
        ids = [line for line in (Path(path) / "item_ids.txt").read_text().splitlines()[1:] if line]  # row 0: padding
        rng = np.random.default_rng(0)
        histories[name] = [list(rng.choice(ids, size=a.history)) for _ in range(a.requests + 20)]
    rounds: dict[str, list[float]] = {name: [] for name in bundles}
    load = os.getloadavg()[0]
    for _ in range(a.rounds):
        for name, bundle in bundles.items():
            hists = histories[name]
            for h in hists[:20]:
                bundle.recommend(h, n=50)
            start = time.perf_counter()
            for h in hists[20:]:
                bundle.recommend(h, n=50)
            rounds[name].append(1000 * (time.perf_counter() - start) / a.requests)
    records = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name, path in zip(bundles, a.bundles):
        manifest = bundles[name].manifest
        records[name] = {"bundle": path, "ms_per_request_rounds": rounds[name], "ms_per_request": min(rounds[name]),
                         "requests": a.requests, "history": a.history, "n": 50,
                         "served": manifest.get("served"), "model": manifest.get("model"),
                         "source": manifest.get("source"),
                         "load_average_at_start": load, "commit": git_commit(), "machine": machine()}
        print(f"{name}: {min(rounds[name]):.2f} ms/request (rounds {', '.join(f'{r:.2f}' for r in rounds[name])})")
    OUT.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
