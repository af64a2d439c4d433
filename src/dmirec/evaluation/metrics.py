"""Top-N retrieval metrics as pure numpy functions of ``(recommended ids, targets)``.

The conventions are the ComiRec/REMI evaluation protocol (docs/design.md, section 1) and the dataset
docs/evaluation/metrics.md, which matter on data with repeat consumption (gowalla):

* ``recs`` is a ``(B, N)`` integer matrix of recommended item ids per user, best first; ``-1``
  (any negative id) means "no item" and never hits.
* ``targets[b]`` is the list of items after the user's cut, repeats included. It must not be
  empty.
* A recommended item counts once: if an id occurs twice in a row of ``recs``, only its first
  occurrence can be a hit.
* Recall@n = (distinct recommended items among the first n that occur in the targets)
  / ``len(targets)``, where the length counts repeats (ComiRec). With repeated targets a
  perfect list therefore scores below 1.
* HitRate@n = 1 when at least one of the first n items is a hit.
* NDCG@n (standard) = DCG / IDCG, DCG = sum over hits at 1-based rank r of 1 / log2(r + 1),
  IDCG = the DCG of min(number of distinct targets, n) hits at ranks 1, 2, ...
* NDCG@n (ComiRec variant) = the same DCG divided by the IDCG of the number of hits (so any
  list whose hits are all at the top scores 1); 0 when there is no hit.
* MRR@n = 1 / (1-based rank of the first hit among the first n); 0 when there is none.
* Catalogue coverage@n (a list-level number, not per user) = distinct item ids in the first n
  positions of all rows / catalogue size.

The new-items view (:func:`drop_seen_targets`) removes from each user's targets the items that
already occur in the user's history; the caller also excludes history items from the candidates
and skips users left with no target.

Every metric returns the per-user array ``(B,)`` of float64; :func:`summarize` averages them
over users. Nothing loops over users except building the flat target array; membership is one
sort plus ``searchsorted`` over ``(row, item)`` keys, so memory is O(B * N + total targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "hit_matrix",
    "recall_at",
    "hitrate_at",
    "ndcg_at",
    "ndcg_comirec_at",
    "mrr_at",
    "catalogue_coverage",
    "per_user",
    "summarize",
    "drop_seen_targets",
]

Targets = Sequence[np.ndarray] | Sequence[Sequence[int]]


@dataclass(frozen=True)
class _Prepared:
    hits: np.ndarray  # (B, N) bool, first-occurrence hits
    n_targets: np.ndarray  # (B,) int64, targets counted with repeats
    n_distinct: np.ndarray  # (B,) int64, distinct targets


def _as_recs(recs: np.ndarray) -> np.ndarray:
    arr = np.asarray(recs)
    if arr.ndim != 2:
        raise ValueError(f"recs must be a (B, N) matrix, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"recs must hold integer item ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _flatten_targets(targets: Targets, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-user targets: returns (row index per target, item id per target)."""
    if len(targets) != batch:
        raise ValueError(f"recs has {batch} rows but targets has {len(targets)} users")
    parts = [np.asarray(t, dtype=np.int64).ravel() for t in targets]
    lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=batch)  # (B,)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise ValueError(
            f"user row {int(empty[0])} has no targets "
            f"({empty.size} user(s) with empty targets in total)"
        )
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # (T_total,)
    if flat.size and flat.min() < 0:
        bad = int(np.repeat(np.arange(batch), lengths)[np.argmax(flat < 0)])
        raise ValueError(f"user row {bad} has a negative target id")
    rows = np.repeat(np.arange(batch, dtype=np.int64), lengths)  # (T_total,)
    return rows, flat


def _first_occurrence(recs: np.ndarray) -> np.ndarray:
    """(B, N) bool: True where recs[b, j] does not occur earlier in row b."""
    order = np.argsort(recs, axis=1, kind="stable")  # (B, N)
    srt = np.take_along_axis(recs, order, axis=1)  # (B, N)
    dup_sorted = np.zeros(recs.shape, dtype=bool)  # (B, N)
    # With a stable sort, the earliest position of each value comes first in its run.
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return ~dup


def _prepare(recs: np.ndarray, targets: Targets) -> _Prepared:
    recs = _as_recs(recs)  # (B, N)
    batch, width = recs.shape
    rows, flat = _flatten_targets(targets, batch)
    if batch == 0:
        z = np.zeros(0, dtype=np.int64)
        return _Prepared(np.zeros((0, width), dtype=bool), z, z)
    # Keys (row, id + 1) packed into one int64; id + 1 >= 1 for targets, so a rec of -1 (key
    # offset 0) can never collide with a target.
    top = max(int(flat.max()), int(recs.max()) if recs.size else 0)
    base = top + 2
    if batch * base >= 2**62:
        raise ValueError("item ids too large to pack (row, id) keys into int64")
    tkeys = np.unique(rows * base + flat + 1)  # (U,) sorted distinct (row, target)
    n_distinct = np.bincount(tkeys // base, minlength=batch).astype(np.int64)  # (B,)
    n_targets = np.bincount(rows, minlength=batch).astype(np.int64)  # (B,)

    valid = recs >= 0  # (B, N)
    rkeys = np.arange(batch, dtype=np.int64)[:, None] * base + np.where(valid, recs + 1, 0)
    pos = np.searchsorted(tkeys, rkeys)  # (B, N)
    found = tkeys[np.minimum(pos, tkeys.size - 1)] == rkeys  # (B, N)
    hits = found & valid & _first_occurrence(recs)  # (B, N)
    return _Prepared(hits, n_targets, n_distinct)


def _check_n(n: int, width: int) -> int:
    n = int(n)
    if n < 1 or n > width:
        raise ValueError(f"n must be in [1, {width}] (the width of recs), got {n}")
    return n


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))  # (n,) rank r -> 1/log2(r+1)


def _ideal(n: int) -> np.ndarray:
    """(n + 1,) IDCG of h hits at ranks 1..h, for h = 0..n."""
    return np.concatenate([[0.0], np.cumsum(_discounts(n))])


def _recall(p: _Prepared, n: int) -> np.ndarray:
    return p.hits[:, :n].sum(axis=1) / p.n_targets  # (B,)


def _hitrate(p: _Prepared, n: int) -> np.ndarray:
    return p.hits[:, :n].any(axis=1).astype(np.float64)  # (B,)


def _ndcg(p: _Prepared, n: int) -> np.ndarray:
    dcg = p.hits[:, :n] @ _discounts(n)  # (B,)
    idcg = _ideal(n)[np.minimum(p.n_distinct, n)]  # (B,), > 0 as targets are non-empty
    return dcg / idcg


def _ndcg_comirec(p: _Prepared, n: int) -> np.ndarray:
    h = p.hits[:, :n]  # (B, n)
    dcg = h @ _discounts(n)  # (B,)
    idcg = _ideal(n)[h.sum(axis=1)]  # (B,), 0 where no hit
    out = np.zeros(h.shape[0], dtype=np.float64)
    np.divide(dcg, idcg, out=out, where=idcg > 0)
    return out


def _mrr(p: _Prepared, n: int) -> np.ndarray:
    h = p.hits[:, :n]  # (B, n)
    first = h.argmax(axis=1)  # (B,) 0-based rank of the first hit (0 when none)
    return np.where(h.any(axis=1), 1.0 / (first + 1.0), 0.0)  # (B,)


_METRICS = (("recall", _recall), ("hitrate", _hitrate), ("ndcg", _ndcg), ("ndcg_comirec", _ndcg_comirec),
            ("mrr", _mrr))


def hit_matrix(recs: np.ndarray, targets: Targets) -> np.ndarray:
    """(B, N) bool: ``recs[b, j]`` is in ``targets[b]`` and not earlier in row b; -1 never hits."""
    return _prepare(recs, targets).hits


def recall_at(recs: np.ndarray, targets: Targets, n: int) -> np.ndarray:
    """(B,) Recall@n: distinct hits among the first n / len(targets) (repeats counted)."""
    p = _prepare(recs, targets)
    return _recall(p, _check_n(n, p.hits.shape[1]))


def hitrate_at(recs: np.ndarray, targets: Targets, n: int) -> np.ndarray:
    """(B,) HitRate@n: 1.0 where at least one of the first n items is a hit."""
    p = _prepare(recs, targets)
    return _hitrate(p, _check_n(n, p.hits.shape[1]))


def ndcg_at(recs: np.ndarray, targets: Targets, n: int) -> np.ndarray:
    """(B,) standard NDCG@n: DCG of hits / IDCG of min(distinct targets, n) hits."""
    p = _prepare(recs, targets)
    return _ndcg(p, _check_n(n, p.hits.shape[1]))


def ndcg_comirec_at(recs: np.ndarray, targets: Targets, n: int) -> np.ndarray:
    """(B,) ComiRec NDCG@n: DCG of hits / IDCG of the number of hits; 0 without a hit."""
    p = _prepare(recs, targets)
    return _ndcg_comirec(p, _check_n(n, p.hits.shape[1]))


def mrr_at(recs: np.ndarray, targets: Targets, n: int) -> np.ndarray:
    """(B,) MRR@n: 1 / rank of the first hit among the first n; 0 without a hit."""
    p = _prepare(recs, targets)
    return _mrr(p, _check_n(n, p.hits.shape[1]))


def catalogue_coverage(recs: np.ndarray, num_items: int, n: int) -> float:
    """Share of the catalogue (items 1..num_items) that appears in the first n slots of any row."""
    recs = _as_recs(recs)  # (B, N)
    if num_items < 1:
        raise ValueError(f"num_items must be positive, got {num_items}")
    top = recs[:, :_check_n(n, recs.shape[1])]  # (B, n)
    ids = np.unique(top[(top >= 1) & (top <= num_items)])
    return float(ids.size / num_items)


def per_user(recs: np.ndarray, targets: Targets, ns: Sequence[int] = (20, 50)) -> dict[str, np.ndarray]:
    """Every metric of :func:`summarize` per user, ``{"recall@n": (B,) float64, ...}`` (no averaging)."""
    p = _prepare(recs, targets)
    return {f"{name}@{int(n)}": fn(p, _check_n(n, p.hits.shape[1])) for name, fn in _METRICS for n in ns}


def summarize(
    recs: np.ndarray, targets: Targets, ns: Sequence[int] = (20, 50)
) -> dict[str, float | int]:
    """User means of every metric at every n in ``ns``, plus ``users``.

    Keys: ``recall@n``, ``hitrate@n``, ``ndcg@n``, ``ndcg_comirec@n``, ``mrr@n`` for each n, and
    ``users``.
    """
    p = _prepare(recs, targets)
    if p.hits.shape[0] == 0:
        raise ValueError("cannot summarize metrics over zero users")
    out: dict[str, float | int] = {}
    for name, fn in _METRICS:
        for n in ns:
            out[f"{name}@{int(n)}"] = float(fn(p, _check_n(n, p.hits.shape[1])).mean())
    out["users"] = int(p.hits.shape[0])
    return out


def drop_seen_targets(
    targets: Targets, histories: Sequence[np.ndarray] | Sequence[Sequence[int]]
) -> tuple[list[np.ndarray], np.ndarray]:
    """The new-items view of the targets: each user's targets minus the items of their history.

    Returns (targets without history items, repeats among the new ones kept; (B,) bool mask of the
    users left with at least one target). Users whose every target is a history item get an empty
    array and False in the mask: the caller skips (and counts) them.
    """
    if len(histories) != len(targets):
        raise ValueError(f"targets has {len(targets)} users but histories has {len(histories)}")
    batch = len(targets)
    t_parts = [np.asarray(t, dtype=np.int64).ravel() for t in targets]
    h_parts = [np.asarray(h, dtype=np.int64).ravel() for h in histories]
    t_len = np.fromiter((p.size for p in t_parts), dtype=np.int64, count=batch)  # (B,)
    h_len = np.fromiter((p.size for p in h_parts), dtype=np.int64, count=batch)  # (B,)
    t_flat = np.concatenate(t_parts) if batch else np.zeros(0, dtype=np.int64)  # (T,)
    h_flat = np.concatenate(h_parts) if batch else np.zeros(0, dtype=np.int64)  # (H,)
    base = int(max(t_flat.max(initial=0), h_flat.max(initial=0))) + 1
    t_rows = np.repeat(np.arange(batch, dtype=np.int64), t_len)  # (T,)
    h_keys = np.repeat(np.arange(batch, dtype=np.int64), h_len) * base + h_flat  # (H,)
    new = ~np.isin(t_rows * base + t_flat, h_keys)  # (T,)
    counts = np.bincount(t_rows[new], minlength=batch)  # (B,)
    kept = np.split(t_flat[new], np.cumsum(counts)[:-1]) if batch else []
    keep = np.fromiter((k.size > 0 for k in kept), dtype=bool, count=batch)  # (B,)
    return kept, keep
