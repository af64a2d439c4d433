"""Filling short top-n lists with the most popular items (the fallback every ranker shares).

A ranker that scores only some items (an item-to-item model, a merged list of channels) may return
fewer than n items for a user; :func:`fill_popular` fills the empty slots (id -1) with the most
popular items not already in the list nor excluded, so that every user gets exactly n items
whenever the catalogue allows it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .exact import SearchResult


def fill_popular(res: SearchResult, popular_order: np.ndarray, exclude: Sequence[np.ndarray] | None = None
                 ) -> SearchResult:
    """Fill each row's empty slots (id <= 0) with the most popular items not already in the row (nor in
    ``exclude[b]``), in ``popular_order`` (N,). Filled slots get score 0 (no merged or item-to-item
    score is below 0) and interest -1; rows stay best first."""
    ids, scores, interest = res.ids.copy(), res.scores.copy(), res.interest.copy()
    popular_order = np.asarray(popular_order, dtype=np.int64)
    for b in np.flatnonzero((ids <= 0).any(axis=1)):
        have = ids[b][ids[b] > 0]
        if exclude is not None:
            have = np.concatenate([have, np.asarray(exclude[b], dtype=np.int64).ravel()])
        free = np.flatnonzero(ids[b] <= 0)
        cand = popular_order[:free.size + have.size]  # enough: at most have.size of them are taken
        picks = cand[~np.isin(cand, have)][:free.size]
        slots = free[:picks.size]
        ids[b, slots] = picks
        scores[b, slots] = 0.0
        interest[b, slots] = -1
    return SearchResult(ids=ids, scores=scores, interest=interest)
