"""Synthetic interaction logs at scale: planted interests, power-law popularity, streamed to disk.

:mod:`dmirec.data.synthetic` makes small prepared datasets for tests; this module makes raw logs
of any size (Books scale, 100M rows) for ``dmirec prepare`` and the scale benchmarks, in chunks
of users, so memory stays bounded by ``chunk_users`` whatever the log size.

The world (:func:`make_world`): item ``i`` has weight ``w_i = (rank_i + q) ** -alpha`` (ranks are a
random permutation of the ids, so id order says nothing) and a random cluster out of ``clusters``;
a cluster's mass is the sum of its items' weights. A user (:func:`user_chunk`) has 1 to
``max_interests`` clusters, drawn by mass, and a log-normal sequence length (median about
``median_len``, clipped to ``[min_len, max_len]``). The sequence is a run of segments: each event
keeps the current interest with probability ``stay``, else draws a new one of the user's clusters;
the item is drawn by weight within the cluster. A fraction ``noise`` of events ignores the
interests and draws from global popularity. Overall popularity is therefore the power law ``w``,
and a model that recovers the clusters retrieves far better than most-popular.

Deterministic per seed: the world comes from ``default_rng([seed, 0])`` and user chunk ``c``
from ``default_rng([seed, c + 1])``, so the log depends only on the spec (``chunk_users``
included), never on the machine.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .synthetic import write_prepared

PRESETS = {
    # Amazon Books in the ComiRec protocol is ~460k users, ~310k items, ~9M interactions
    "books": {"users": 460_000, "items": 310_000, "clusters": 2000},
    # the large log: 100M interactions over 5M items
    "100m": {"users": 5_000_000, "items": 5_000_000, "clusters": 20_000},
    "small": {"users": 2000, "items": 1000, "clusters": 20},
}


@dataclass(frozen=True)
class LogSpec:
    users: int = 10_000
    items: int = 5000
    clusters: int = 100
    max_interests: int = 4
    alpha: float = 0.9  # item popularity ~ (rank + rank_offset) ** -alpha (Zipf-Mandelbrot)
    rank_offset: float = 10.0
    median_len: float = 14.0  # log-normal sequence lengths; mean ~20 with sigma 0.85
    len_sigma: float = 0.85
    min_len: int = 5
    max_len: int = 500
    stay: float = 0.7  # P(an event keeps the current interest)
    noise: float = 0.05  # share of events drawn from global popularity
    seed: int = 0
    chunk_users: int = 100_000
    start_time: int = 1_500_000_000  # unix seconds of the earliest possible event

    def __post_init__(self) -> None:
        for key in ("users", "items", "clusters", "max_interests", "min_len", "chunk_users"):
            if getattr(self, key) < 1:
                raise ValueError(f"synthetic log: {key} must be >= 1, got {getattr(self, key)}")
        if self.max_len < self.min_len:
            raise ValueError(f"synthetic log: max_len {self.max_len} < min_len {self.min_len}")
        if not (0 <= self.stay <= 1 and 0 <= self.noise <= 1):
            raise ValueError("synthetic log: stay and noise must lie in [0, 1]")
        if self.clusters > self.items:
            raise ValueError(f"synthetic log: {self.clusters} clusters for {self.items} items")


@dataclass(frozen=True)
class World:
    """Items, their popularity weights and clusters, arranged for O(log N) draws."""

    item_cluster: np.ndarray  # (N,) int32 cluster of item id i + 1
    order: np.ndarray  # (N,) int64 item index (0-based) sorted by cluster
    cum: np.ndarray  # (N,) float64 cumulative weight along ``order``
    cluster_base: np.ndarray  # (C,) cumulative weight before each cluster
    cluster_mass: np.ndarray  # (C,) float64
    cluster_end: np.ndarray  # (C,) int64 one past the cluster's last position in ``order``
    cluster_cum: np.ndarray  # (C,) cumulative cluster mass (for drawing clusters by mass)


def make_world(spec: LogSpec) -> World:
    rng = np.random.default_rng([spec.seed, 0])
    ranks = rng.permutation(spec.items) + 1  # (N,) rank of item id i + 1
    weight = (ranks + spec.rank_offset) ** -spec.alpha  # (N,)
    cluster = rng.integers(0, spec.clusters, size=spec.items).astype(np.int32)  # (N,)
    order = np.argsort(cluster, kind="stable")  # (N,)
    cum = np.cumsum(weight[order])  # (N,)
    sizes = np.bincount(cluster, minlength=spec.clusters)  # (C,)
    end = np.cumsum(sizes)  # (C,)
    mass = np.bincount(cluster, weights=weight, minlength=spec.clusters)  # (C,)
    base = np.concatenate([[0.0], cum])[end - sizes]  # (C,)
    return World(cluster, order, cum, base, mass, end.astype(np.int64), np.cumsum(mass))


def _draw_in_clusters(world: World, clusters: np.ndarray, u: np.ndarray) -> np.ndarray:
    """0-based item indices drawn by weight within each given cluster; u uniform in [0, 1)."""
    target = world.cluster_base[clusters] + u * world.cluster_mass[clusters]  # (M,)
    pos = np.searchsorted(world.cum, target, side="right")  # (M,)
    pos = np.minimum(pos, world.cluster_end[clusters] - 1)  # float rounding at a cluster's top
    return world.order[pos]


def user_chunk(spec: LogSpec, world: World, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users ``[chunk * chunk_users, ...)``: (user ids (U,), offsets (U+1,), items (M,), timestamps (M,))."""
    rng = np.random.default_rng([spec.seed, chunk + 1])
    lo = chunk * spec.chunk_users
    n = min(spec.chunk_users, spec.users - lo)
    users = np.arange(lo, lo + n, dtype=np.int64)  # (U,)
    lengths = np.exp(np.log(spec.median_len) + spec.len_sigma * rng.standard_normal(n))  # (U,)
    lengths = np.clip(np.rint(lengths), spec.min_len, spec.max_len).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (U + 1,)
    m = int(offsets[-1])
    k = rng.integers(1, spec.max_interests + 1, size=n)  # (U,) interests per user
    interests = np.searchsorted(world.cluster_cum, rng.random((n, spec.max_interests)) * world.cluster_cum[-1],
                                side="right")  # (U, Kmax) clusters drawn by mass
    interests = np.minimum(interests, spec.clusters - 1)
    owner = np.repeat(np.arange(n), lengths)  # (M,) user row of each event
    first = np.zeros(m, dtype=bool)
    first[offsets[:-1]] = True
    switch = first | (rng.random(m) >= spec.stay)  # (M,) a new segment starts
    segment = np.cumsum(switch) - 1  # (M,)
    seg_owner = owner[switch]  # (S,)
    seg_slot = (rng.random(len(seg_owner)) * k[seg_owner]).astype(np.int64)  # (S,) which of the user's interests
    cluster = interests[owner, seg_slot[segment]]  # (M,)
    item = _draw_in_clusters(world, cluster, rng.random(m))  # (M,)
    noisy = rng.random(m) < spec.noise  # (M,)
    if noisy.any():
        pos = np.searchsorted(world.cum, rng.random(int(noisy.sum())) * world.cum[-1], side="right")
        item[noisy] = world.order[np.minimum(pos, spec.items - 1)]
    gaps = rng.exponential(86_400.0, size=m).astype(np.int64) + 1  # (M,) seconds between events
    gaps[first] = rng.integers(0, 3 * 365 * 86_400, size=n)  # each user's first event
    total = np.cumsum(gaps)  # (M,)
    stamps = spec.start_time + total - np.repeat(total[offsets[:-1]] - gaps[first], lengths)  # (M,) per user
    return users, offsets, (item + 1).astype(np.int64), stamps.astype(np.int64)


def chunks(spec: LogSpec) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    world = make_world(spec)
    for c in range(-(-spec.users // spec.chunk_users)):
        yield user_chunk(spec, world, c)


def write_log(spec: LogSpec, path: str | Path, format: str | None = None) -> dict:
    """Stream the log to ``path`` (``.parquet`` or ``.csv``): columns user_id, item_id, timestamp,
    one user's events in time order after another's. Writes ``PATH.json`` (the spec and counts)
    beside it and returns that record."""
    import pyarrow as pa

    path = Path(path)
    fmt = format or ("parquet" if path.suffix == ".parquet" else "csv")
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"synthetic log: format must be parquet or csv, got {fmt!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())])
    if fmt == "parquet":
        import pyarrow.parquet as pq

        writer = pq.ParquetWriter(path, schema)
    else:
        import pyarrow.csv as pcsv

        writer = pcsv.CSVWriter(path, schema)
    rows = 0
    try:
        for users, offsets, items, stamps in chunks(spec):
            table = pa.table({"user_id": np.repeat(users, np.diff(offsets)), "item_id": items, "timestamp": stamps},
                             schema=schema)
            writer.write_table(table)
            rows += len(items)
    finally:
        writer.close()
    record = {"spec": dataclasses.asdict(spec), "format": fmt, "rows": rows, "users": spec.users,
              "items": spec.items, "source": "dmirec.data.synth_log"}
    Path(f"{path}.json").write_text(json.dumps(record, indent=2))
    return record


def write_prepared_direct(spec: LogSpec, outdir: str | Path, name: str = "synth") -> Path:
    """The log as a prepared dataset without ``prepare`` (no k-core filter, item ids as generated,
    80/10/10 users in generation order): fast set-up for speed benchmarks at millions of items."""
    seqs = []
    for _, offsets, items, _ in chunks(spec):
        seqs.extend(np.split(items.astype(np.int32), offsets[1:-1]))
    return write_prepared(outdir, seqs, spec.items, name=name)


def spec_from(preset: str | None = None, **overrides) -> LogSpec:
    """A :class:`LogSpec` from a preset name (books, 100m, small) and explicit values (None = keep)."""
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[preset]) if preset else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return LogSpec(**values)
