"""Synthetic interaction data with planted interests, for tests and quick demos.

Items are split into ``num_clusters`` equal clusters. Every user has ``interests_per_user``
clusters and each event picks one of them at random, then an item of that cluster (with a mild
Zipf skew inside the cluster). A model that recovers the clusters retrieves the user's next items
far better than random or most-popular retrieval, which is what the end-to-end tests check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .dataset import FORMAT_VERSION, Sequences, save_split, write_ids


def planted_sequences(num_users: int = 600, num_items: int = 200, num_clusters: int = 10,
                      interests_per_user: int = 2, min_len: int = 10, max_len: int = 30,
                      seed: int = 0) -> list[np.ndarray]:
    """One item-id sequence (ids 1..num_items) per user."""
    rng = np.random.default_rng(seed)
    per_cluster = num_items // num_clusters
    skew = 1.0 / np.arange(1, per_cluster + 1) ** 0.5
    skew /= skew.sum()
    seqs = []
    for _ in range(num_users):
        clusters = rng.choice(num_clusters, size=interests_per_user, replace=False)
        length = int(rng.integers(min_len, max_len + 1))
        which = clusters[rng.integers(0, interests_per_user, size=length)]
        offsets = rng.choice(per_cluster, size=length, p=skew)
        seqs.append((which * per_cluster + offsets + 1).astype(np.int32))
    return seqs


def write_prepared(outdir: str | Path, seqs: list[np.ndarray], num_items: int, name: str = "synthetic") -> Path:
    """Write sequences as a prepared dataset folder (80/10/10 user split, in the given order)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    n = len(seqs)
    bounds = {"train": (0, int(0.8 * n)), "valid": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}
    splits_meta = {}
    for split, (lo, hi) in bounds.items():
        part = seqs[lo:hi]
        lengths = np.array([len(s) for s in part], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate(part) if part else np.zeros(0, np.int32)
        stamps = np.concatenate([np.arange(len(s)) for s in part]) if part else np.zeros(0, np.int64)
        save_split(outdir, split, Sequences(offsets, items, np.arange(lo, hi, dtype=np.int64), stamps))
        splits_meta[split] = {"users": hi - lo, "interactions": int(lengths.sum())}
    write_ids(outdir / "item_ids.txt", [f"i{k}" for k in range(1, num_items + 1)])
    write_ids(outdir / "user_ids.txt", [f"u{k}" for k in range(n)])
    meta = {"format_version": FORMAT_VERSION, "name": name, "num_items": num_items, "num_users": n,
            "splits": splits_meta, "source": "dmirec.data.synthetic (planted interests)"}
    (outdir / "meta.json").write_text(json.dumps(meta, indent=2))
    return outdir


def make_planted_dataset(outdir: str | Path, num_users: int = 600, num_items: int = 200, num_clusters: int = 10,
                         seed: int = 0) -> Path:
    """Generate and write a planted-interest dataset; returns its folder."""
    seqs = planted_sequences(num_users, num_items, num_clusters, seed=seed)
    return write_prepared(outdir, seqs, num_items)
