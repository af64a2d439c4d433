"""Blockwise top-n scoring of users against an item-item matrix, with history exclusion.

``scores = user_rows @ sim``: (B, N + 1) user rows (weights of history items, from
:func:`~dmirec.channels.interactions.user_item_matrix`) times an (N + 1, N + 1) item-item matrix
(sparse CSR or a dense array). Users are processed ``block`` at a time, so the working set is one
block of scores (at most ``block * (N + 1)`` values, far fewer for a sparse ``sim``).

Returned items, per user, best first (higher score, then lower id among equal scores):

* only items with a positive score are returned: an item no history item reaches (score 0), or
  one the history argues against (a negative EASE score), is not a candidate;
* item 0 (padding) and the user's excluded items are never returned;
* where fewer than n items qualify, the row is padded with id -1 and score -inf, as in
  :class:`dmirec.retrieval.SearchResult`; :func:`fill_popular` fills those slots with the most
  popular items the row does not hold.

One user against a sparse matrix (a served request) takes a shorter path (:func:`_one_sparse`):
the rows of ``sim`` its history selects are gathered and summed item by item, in the order
scipy's sparse product sums them, so its scores are the same floats as the batch path's (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..retrieval.exact import SearchResult, as_exclude_csr
from ..retrieval.fill import fill_popular as fill_lists
from .itemknn import rows_topk

__all__ = ["top_items", "fill_popular", "exclusion_csr"]

#: Default bound on the number of scores held for one block of users.
DEFAULT_BLOCK_ELEMS = 2**24


def exclusion_csr(exclude: Any, batch: int, num_items: int):
    """The exclusion spec as an ExcludeCSR (see :func:`dmirec.retrieval.exact.as_exclude_csr`)."""
    if exclude is None:
        return None
    return as_exclude_csr(exclude, batch, num_items)


def _check_sim(sim: Any, num_cols: int) -> Any:
    if sp.issparse(sim):
        sim = sim if sim.format == "csr" else sp.csr_matrix(sim)
    else:
        sim = np.asarray(sim)
        if sim.ndim != 2:
            raise ValueError(f"sim must be a 2-D matrix, got shape {sim.shape}")
    if sim.shape != (num_cols, num_cols):
        raise ValueError(f"sim has shape {sim.shape}, expected ({num_cols}, {num_cols}) for user rows "
                         f"with {num_cols} columns")
    return sim


def _place(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, batch: int, n: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """(batch, n) ids / scores from candidate entries: top n per row by (-value, col), padded."""
    keep = rows_topk(rows, cols, vals, n)  # (row, -value, col) order
    r = rows[keep]
    first = np.searchsorted(r, r, side="left")
    slot = np.arange(len(keep)) - first  # 0-based position in the row
    ids = np.full((batch, n), -1, dtype=np.int64)  # (B, n)
    scores = np.full((batch, n), -np.inf, dtype=np.float32)  # (B, n)
    ids[r, slot] = cols[keep]
    scores[r, slot] = vals[keep]
    return ids, scores


def _block_sparse(scores: sp.csr_matrix, excl_keys: np.ndarray | None, u0: int, n1: int, n: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    batch = scores.shape[0]
    rows = np.repeat(np.arange(batch, dtype=np.int64), np.diff(scores.indptr))  # (nnz,)
    cols = scores.indices.astype(np.int64)  # (nnz,)
    vals = scores.data  # (nnz,)
    ok = (vals > 0) & (cols > 0)
    if excl_keys is not None and excl_keys.size:
        ok &= ~np.isin((rows + u0) * n1 + cols, excl_keys)
    return _place(rows[ok], cols[ok], vals[ok], batch, n)


def _one_sparse(row: sp.csr_matrix, sim: sp.csr_matrix, excl_items: np.ndarray | None, n: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Top n of one user row (1, N + 1) against CSR ``sim``, without building the product matrix.

    scipy's CSR product sums, for each output column, ``a_k * sim[k, j]`` over the row's items k in
    stored (ascending) order, in the result dtype; ``np.add.at`` adds in input order, so gathering
    the selected rows in that order gives the same sums, hence the same ranking.
    """
    k = row.indices.astype(np.int64)  # (h,) the row's items, ascending
    dtype = np.result_type(row.data.dtype, sim.data.dtype)
    starts = sim.indptr[k].astype(np.int64)  # (h,)
    lens = sim.indptr[k + 1].astype(np.int64) - starts  # (h,)
    total = int(lens.sum())
    pos = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)  # (total,) into sim.data
    cols = sim.indices[pos].astype(np.int64)  # (total,)
    prods = np.repeat(row.data.astype(dtype), lens) * sim.data[pos].astype(dtype)  # (total,)
    if total * 8 >= sim.shape[1]:  # many entries: a dense accumulator over the catalogue, no sort
        dense = np.zeros(sim.shape[1], dtype=dtype)  # (N + 1,)
        np.add.at(dense, cols, prods)
        uniq = np.flatnonzero(dense)  # (c,) ascending, as np.unique gives them
        acc = dense[uniq]
    else:  # few entries in a large catalogue: accumulate over the distinct columns only
        uniq, inv = np.unique(cols, return_inverse=True)  # (c,), (total,)
        acc = np.zeros(len(uniq), dtype=dtype)  # (c,)
        np.add.at(acc, inv, prods)
    ok = (acc > 0) & (uniq > 0)
    if excl_items is not None and excl_items.size:
        ok &= ~np.isin(uniq, excl_items)
    cols, vals = uniq[ok], acc[ok]
    if len(vals) > n:  # keep the top n and their ties before the exact (-value, col) sort
        thr = np.partition(vals, len(vals) - n)[len(vals) - n]  # the n-th best score
        keep = vals >= thr
        cols, vals = cols[keep], vals[keep]
    return _place(np.zeros(len(cols), dtype=np.int64), cols, vals, 1, n)


def _block_dense(scores: np.ndarray, excl, u0: int, u1: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    batch, n1 = scores.shape
    scores = np.array(scores, dtype=np.float32)  # (b, N + 1) own copy
    scores[scores <= 0] = -np.inf
    scores[:, 0] = -np.inf
    if excl is not None:
        lo, hi = int(excl.indptr[u0]), int(excl.indptr[u1])
        ex_rows = np.repeat(np.arange(batch), np.diff(excl.indptr[u0:u1 + 1]))  # (nnz,)
        scores[ex_rows, excl.indices[lo:hi]] = -np.inf
    if n < n1:
        thr = -np.partition(-scores, n - 1, axis=1)[:, n - 1]  # (b,) n-th best score
        cand = np.isfinite(scores) & (scores >= thr[:, None])  # (b, N + 1) the top n plus ties
    else:
        cand = np.isfinite(scores)
    rows, cols = np.nonzero(cand)
    return _place(rows.astype(np.int64), cols.astype(np.int64), scores[rows, cols], batch, n)


def top_items(user_rows, sim, n: int, *, exclude: Any = None, block: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Top n items per user by ``user_rows @ sim``: ids (B, n) int64 and scores (B, n) float32.

    ``user_rows``: (B, N + 1) sparse. ``sim``: (N + 1, N + 1) CSR or dense. ``exclude``: per-user
    id lists or a CSR-like object (``indptr``/``indices``), as :func:`exclusion_csr` takes.
    ``block``: users per block (default: as many as keep a block at 2**24 scores).
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not sp.issparse(user_rows) or user_rows.ndim != 2:
        raise ValueError("user_rows must be a 2-D scipy sparse matrix (users x (N + 1) items)")
    user_rows = user_rows if user_rows.format == "csr" else sp.csr_matrix(user_rows)
    batch, n1 = user_rows.shape
    sim = _check_sim(sim, n1)
    if block is None:
        block = max(1, DEFAULT_BLOCK_ELEMS // max(1, n1))
    if int(block) < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    block = int(block)
    excl = exclusion_csr(exclude, batch, n1 - 1)
    if batch == 1 and sp.issparse(sim):
        excl_items = None if excl is None else np.asarray(excl.indices[excl.indptr[0]:excl.indptr[1]], dtype=np.int64)
        return _one_sparse(user_rows, sim, excl_items, n)
    excl_keys = None
    if excl is not None and sp.issparse(sim):
        ex_rows = np.repeat(np.arange(batch, dtype=np.int64), np.diff(excl.indptr))
        excl_keys = np.sort(ex_rows * n1 + excl.indices)  # (nnz,) (user, item) keys
    ids_out, sc_out = [], []
    for u0 in range(0, batch, block):
        u1 = min(batch, u0 + block)
        part = user_rows[u0:u1] @ sim  # (b, N + 1)
        if sp.issparse(part):
            ids, sc = _block_sparse(sp.csr_matrix(part), excl_keys, u0, n1, n)
        else:
            ids, sc = _block_dense(np.asarray(part), excl, u0, u1, n)
        ids_out.append(ids)
        sc_out.append(sc)
    if not ids_out:
        return np.zeros((0, n), dtype=np.int64), np.zeros((0, n), dtype=np.float32)
    return np.concatenate(ids_out), np.concatenate(sc_out)


def fill_popular(ids: np.ndarray, popularity: np.ndarray, exclude: Any = None) -> np.ndarray:
    """A copy of ``ids`` (B, n) whose -1 slots hold the most popular items not already in the row
    and not excluded (popularity: (N + 1,) counts, entry 0 ignored; ties: lower id first), by
    :func:`dmirec.retrieval.fill.fill_popular`. Slots stay -1 only when the catalogue runs out of items."""
    ids = np.array(ids, dtype=np.int64)  # (B, n)
    pop = np.asarray(popularity, dtype=np.float64).ravel()  # (N + 1,)
    num_items = len(pop) - 1
    excl = exclusion_csr(exclude, ids.shape[0], num_items)
    per_user = None if excl is None else [excl.indices[excl.indptr[b]:excl.indptr[b + 1]] for b in range(ids.shape[0])]
    order = np.lexsort((np.arange(1, num_items + 1), -pop[1:])) + 1  # (N,) most popular first
    empty = np.zeros(ids.shape, dtype=np.float32)
    return fill_lists(SearchResult(ids=ids, scores=empty, interest=np.zeros_like(ids)), order, per_user).ids
