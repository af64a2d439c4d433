"""Merging the candidate lists of several retrieval channels into one list of n items.

Each channel gives, per user, its top-M candidates with scores (a :class:`dmirec.retrieval.SearchResult`:
ids ``(B, M)`` best first, ``-1`` where the channel has no more items, scores ``-inf`` there). A
merger turns the C lists into one ranked list per user:

* ``rrf`` (weighted reciprocal-rank fusion): ``m(i) = sum_c w_c / (k + r_c(i))``, with ``r_c(i)``
  the 1-based rank of item i in channel c's list; an item absent from a list gets nothing from it.
* ``score`` (calibrated score fusion): ``m(i) = sum_c w_c * z_c(i)``, with ``z_c`` the channel's
  scores min-max normalised per user over its own list (best 1, its M-th item 0); an item absent
  from a list gets 0 from it, as if ranked at the list's end.

Ties are broken by the lower item id, so the result does not depend on the channels' order.
With one-hot weights the merged list is that channel's list (both mergers rank the channel's items
by its own order; zero-weight channels add nothing). The merged scores are returned as the
list's scores; the ``interest`` field holds the index of the channel that ranked the item best
(the one with the largest share of its merged score).

:class:`CandidateTable` holds the union of the candidates once, so that fitting the weights on
validation users evaluates each grid point with one matrix product (:func:`merge_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..retrieval import SearchResult

MERGERS = ("rrf", "score")


@dataclass(frozen=True)
class CandidateTable:
    """The union of C channels' candidates per user, dense over a per-user candidate slot.

    ``ids`` (B, W) candidate ids of each user in ascending id order, -1 in unused slots; ``rank``
    (B, W, C) the 1-based rank of the candidate in each channel's list (0 where absent); ``norm``
    (B, W, C) its min-max normalised score in that list (0 where absent)."""

    ids: np.ndarray  # (B, W) int64
    rank: np.ndarray  # (B, W, C) int32
    norm: np.ndarray  # (B, W, C) float32

    @property
    def channels(self) -> int:
        return int(self.rank.shape[2])


def _minmax(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-row min-max normalisation of the valid entries of ``scores`` (B, M): best 1, worst 0
    (1 for every valid entry of a row whose scores are all equal)."""
    s = np.where(valid, scores.astype(np.float64), np.nan)  # (B, M)
    with np.errstate(all="ignore"):
        hi = np.nanmax(np.where(valid, s, -np.inf), axis=1, keepdims=True)  # (B, 1)
        lo = np.nanmin(np.where(valid, s, np.inf), axis=1, keepdims=True)  # (B, 1)
        span = hi - lo
        z = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 1.0)  # (B, M)
    return np.where(valid, z, 0.0).astype(np.float32)


def candidate_table(lists: Sequence[SearchResult]) -> CandidateTable:
    """The union of the channels' lists (each (B, M_c)); a channel's repeated id counts at its first rank."""
    if not lists:
        raise ValueError("merging needs at least one channel")
    batch = lists[0].ids.shape[0]
    for c, res in enumerate(lists):
        if res.ids.shape[0] != batch:
            raise ValueError(f"channel {c} has {res.ids.shape[0]} users, channel 0 has {batch}")
    rows, ids, chans, ranks, norms = [], [], [], [], []
    for c, res in enumerate(lists):
        valid = res.ids > 0  # (B, M)
        z = _minmax(res.scores, valid)  # (B, M)
        r, col = np.nonzero(valid)
        rows.append(r)
        ids.append(res.ids[r, col])
        chans.append(np.full(r.size, c, np.int64))
        ranks.append(col + 1)
        norms.append(z[r, col])
    rows_a, ids_a = np.concatenate(rows), np.concatenate(ids)
    chans_a, ranks_a, norms_a = np.concatenate(chans), np.concatenate(ranks), np.concatenate(norms)
    # one slot per distinct (user, id): sort by user, id, channel, rank (a repeat keeps its best rank)
    order = np.lexsort((ranks_a, chans_a, ids_a, rows_a))
    rows_a, ids_a, chans_a = rows_a[order], ids_a[order], chans_a[order]
    ranks_a, norms_a = ranks_a[order], norms_a[order]
    new_pair = np.ones(rows_a.size, dtype=bool)
    new_pair[1:] = (rows_a[1:] != rows_a[:-1]) | (ids_a[1:] != ids_a[:-1])
    pair = np.cumsum(new_pair) - 1  # (E,) distinct (user, id) index
    first_of_row = np.searchsorted(rows_a[new_pair], np.arange(batch))  # (B,) first pair of each user
    slot = pair - first_of_row[rows_a]  # (E,) the pair's slot within its user
    per_user = np.bincount(rows_a[new_pair], minlength=batch)  # (B,)
    width = max(int(per_user.max(initial=0)), 1)
    out_ids = np.full((batch, width), -1, np.int64)
    out_rank = np.zeros((batch, width, len(lists)), np.int32)
    out_norm = np.zeros((batch, width, len(lists)), np.float32)
    out_ids[rows_a, slot] = ids_a
    first_in_channel = np.ones(rows_a.size, dtype=bool)  # the first (best) rank of each (pair, channel)
    first_in_channel[1:] = new_pair[1:] | (chans_a[1:] != chans_a[:-1])
    keep = first_in_channel
    out_rank[rows_a[keep], slot[keep], chans_a[keep]] = ranks_a[keep]
    out_norm[rows_a[keep], slot[keep], chans_a[keep]] = norms_a[keep]
    return CandidateTable(out_ids, out_rank, out_norm)


def contributions(table: CandidateTable, merger: str, k: float = 60.0) -> np.ndarray:
    """(B, W, C) what each channel gives each candidate before weighting."""
    if merger == "rrf":
        r = table.rank.astype(np.float64)
        return np.where(r > 0, 1.0 / (float(k) + r), 0.0)
    if merger == "score":
        return table.norm.astype(np.float64)
    raise ValueError(f"unknown merger {merger!r}; expected one of {MERGERS}")


def merge_table(table: CandidateTable, weights: Sequence[float], n: int, merger: str = "rrf", k: float = 60.0,
                contrib: np.ndarray | None = None) -> SearchResult:
    """The top n of the merged scores per user (see the module docstring); ``contrib`` may be passed
    precomputed (:func:`contributions`) when many weightings are tried."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (table.channels,):
        raise ValueError(f"{table.channels} channels but {w.size} weights")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"merger weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    c = contributions(table, merger, k) if contrib is None else contrib  # (B, W, C)
    parts = c * w  # (B, W, C)
    merged = parts.sum(axis=2)  # (B, W)
    present = table.ids > 0
    # an item counts only when a channel with a positive weight listed it
    listed = ((table.rank > 0) & (w > 0)).any(axis=2) & present  # (B, W)
    key = np.where(listed, merged, -np.inf)  # (B, W)
    order = np.argsort(-key, axis=1, kind="stable")[:, :n]  # ids ascend within a user: ties to the lower id
    batch = table.ids.shape[0]
    r = np.arange(batch)[:, None]
    ids = np.where(np.isfinite(key[r, order]), table.ids[r, order], -1)  # (B, n')
    scores = np.where(ids > 0, key[r, order], -np.inf).astype(np.float32)
    lister = np.where((table.rank > 0) & (w > 0), parts, -np.inf)  # (B, W, C) shares of the listing channels
    best = np.where(ids > 0, lister[r, order].argmax(axis=2), -1)
    out = SearchResult(ids=np.full((batch, n), -1, np.int64), scores=np.full((batch, n), -np.inf, np.float32),
                       interest=np.full((batch, n), -1, np.int64))
    width = ids.shape[1]
    out.ids[:, :width], out.scores[:, :width], out.interest[:, :width] = ids, scores, best
    return out


def merge(lists: Sequence[SearchResult], weights: Sequence[float], n: int, merger: str = "rrf",
          k: float = 60.0) -> SearchResult:
    """Merge C channels' lists into the top n per user (one call of :func:`candidate_table` + :func:`merge_table`)."""
    return merge_table(candidate_table(lists), weights, n, merger, k)
