"""Multi-interest top-N search through a faiss index: the fast backend.

Each of a user's K interest vectors queries the index for its own top ``n`` (plus the number
of items that user excludes, so that exclusion never leaves a list short); the K lists are
merged by score, de-duplicated keeping each item's best score (and the interest that gave it),
excluded items dropped, and the result cut to ``n`` — the serving protocol of docs/design.md.

Every index dmirec builds is made by ``faiss.index_factory`` from a string (:func:`item_index`:
``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``, ``"IVF1024,PQ16"``) under an ``IDMap2``, with the
items added under their own ids 1..N (:func:`add_items`; the padding row is not indexed), so a
label is an item id. The default index is the exact ``IDMap2,Flat``, which must agree with
:class:`dmirec.retrieval.exact.ExactTorchSearch` up to float rounding and ties. A prebuilt index
can be passed instead; it must use the inner-product metric. One without an id map (built by
hand, or a bundle's index from before the id map) must hold items 1..N in order, so that faiss'
sequential label l is item l + 1; it is read that way. Search parameters (``efSearch``,
``nprobe``) are set by :func:`set_search_params`, and scores are whatever the index returns
(approximate for compressed indexes).

:func:`merge_candidates` is the numpy merge on its own, reusable by any backend that produces
per-interest candidate lists.

An approximate index can return fewer than ``n`` distinct items for a user (IVF with a small
``nprobe`` visits few cells; HNSW's graph search can stop short for a large ``n``). Those users
are searched again exactly (a flat inner-product index over the same items), so an answer holds
``n`` items whenever the catalogue, minus the excluded items, does. ``exact_fallbacks`` counts
the users answered that way.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from dmirec.retrieval.exact import (
    ExcludeCSR,
    SearchResult,
    _empty_result,
    as_exclude_csr,
    as_items,
    check_search_args,
)

__all__ = ["FaissSearch", "merge_candidates", "item_index", "add_items", "add_rows", "search_index",
           "set_search_params", "inner_index"]


def item_index(spec: str, dim: int) -> Any:
    """An empty inner-product index from a ``faiss.index_factory`` string, under an ``IDMap2`` so
    that its labels are the ids it is given (item ids)."""
    return faiss.index_factory(int(dim), f"IDMap2,{spec}", faiss.METRIC_INNER_PRODUCT)


def add_items(index: Any, items: np.ndarray, chunk: int = 262_144) -> Any:
    """Add ``items[1:]`` ((N + 1, D), row 0 = padding) under their item ids 1..N; returns ``index``."""
    return add_rows(index, items[1:], 1, chunk)


def add_rows(index: Any, rows: np.ndarray, first_id: int, chunk: int = 262_144) -> Any:
    """Add ``rows`` (R, D) under the ids ``first_id .. first_id + R - 1``, ``chunk`` rows at a time
    (no copy of a float32 C-contiguous array beyond the index's own); returns ``index``."""
    x = np.ascontiguousarray(rows, dtype=np.float32)  # (R, D)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]  # (C, D)
        index.add_with_ids(part, np.arange(first_id + start, first_id + start + len(part), dtype=np.int64))
    return index


def search_index(index: Any, q: np.ndarray, n: int, excl: ExcludeCSR | None, label_offset: int = 0) -> SearchResult:
    """One index query per interest, then the merge: q (C, K, D) -> top n per user. A label plus
    ``label_offset`` is an item id; each interest asks for n plus the most items a user excludes."""
    chunk, k, dim = q.shape
    extra = int(np.diff(excl.indptr).max()) if excl is not None and chunk else 0
    kk = min(index.ntotal, n + extra)
    if kk == 0:
        return _empty_result(chunk, n)
    dist, lab = index.search(np.ascontiguousarray(q.reshape(chunk * k, dim)), kk)  # (C*K, kk) each
    ids = np.where(lab >= 0, lab + label_offset, -1).reshape(chunk, k * kk)  # (C, K*kk) item ids
    sc = dist.astype(np.float32).reshape(chunk, k * kk)  # (C, K*kk)
    it = np.broadcast_to(np.repeat(np.arange(k), kk), (chunk, k * kk))  # (C, K*kk)
    return merge_candidates(ids, sc, it, n, excl)


def inner_index(index: Any) -> Any:
    """The index under an id map (the index itself when there is none), as its own faiss class."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def set_search_params(index: Any, params: dict[str, Any]) -> Any:
    """Apply the search-time knobs in ``params`` (``ef_search``, ``nprobe``) to the index, through
    an id map; returns ``index``."""
    inner = inner_index(index)
    if "ef_search" in params and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(params["ef_search"])
    if "nprobe" in params and hasattr(inner, "nprobe"):
        inner.nprobe = int(params["nprobe"])
    return index


def _rows_csr(excl: ExcludeCSR | None, rows: np.ndarray) -> list[np.ndarray] | None:
    """The exclusions of the selected rows, as one id array per row."""
    if excl is None:
        return None
    return [excl.indices[excl.indptr[r]:excl.indptr[r + 1]] for r in rows.tolist()]


def _slice_csr(excl: ExcludeCSR | None, u0: int, u1: int) -> ExcludeCSR | None:
    if excl is None:
        return None
    lo, hi = int(excl.indptr[u0]), int(excl.indptr[u1])
    return ExcludeCSR(indptr=excl.indptr[u0 : u1 + 1] - lo, indices=excl.indices[lo:hi])


def merge_candidates(
    ids: np.ndarray,
    scores: np.ndarray,
    interest: np.ndarray,
    n: int,
    exclude: ExcludeCSR | None = None,
) -> SearchResult:
    """Merge per-user candidates into the top n distinct items by score.

    ``ids`` (B, C) item ids (<= 0 means no candidate), ``scores`` (B, C), ``interest`` (B, C)
    the interest that proposed each candidate; ``exclude`` a normalised CSR over the same B
    rows. Duplicates keep their best score (lowest interest index on equal scores). The output
    is ordered by score descending, then item id ascending, and padded with -1 / -inf.
    """
    ids = np.asarray(ids, dtype=np.int64)  # (B, C)
    scores = np.asarray(scores, dtype=np.float32)  # (B, C)
    interest = np.asarray(interest, dtype=np.int64)  # (B, C)
    batch, cands = ids.shape
    if batch == 0 or cands == 0:
        return _empty_result(batch, n)

    valid = ids > 0  # (B, C)
    if exclude is not None and exclude.indices.size:
        base = int(max(ids.max(), exclude.indices.max())) + 1
        rows = np.arange(batch, dtype=np.int64)[:, None]  # (B, 1)
        ex_rows = np.repeat(np.arange(batch, dtype=np.int64), np.diff(exclude.indptr))  # (nnz,)
        ekeys = ex_rows * base + exclude.indices  # (nnz,)
        valid &= ~np.isin(rows * base + np.maximum(ids, 0), ekeys)
    neg_inf = np.float32(-np.inf)
    sc = np.where(valid, scores, neg_inf)  # (B, C)
    ids = np.where(valid, ids, -1)  # (B, C)
    interest = np.where(valid, interest, -1)  # (B, C)

    # De-duplicate: sort each row by (id, -score, interest); the first of each id run is kept.
    order = np.lexsort((interest, -sc, ids), axis=-1)  # (B, C)
    s_ids = np.take_along_axis(ids, order, axis=1)  # (B, C)
    dup_sorted = np.zeros_like(valid)  # (B, C)
    dup_sorted[:, 1:] = s_ids[:, 1:] == s_ids[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    sc = np.where(dup, neg_inf, sc)
    ids = np.where(dup, -1, ids)
    interest = np.where(dup, -1, interest)

    # Rank: score descending, then id ascending; -1 / -inf slots sink to the end.
    sort_ids = np.where(ids > 0, ids, np.iinfo(np.int64).max)  # (B, C)
    order = np.lexsort((sort_ids, -sc), axis=-1)[:, :n]  # (B, min(C, n))
    out = _empty_result(batch, n)
    width = order.shape[1]
    out.ids[:, :width] = np.take_along_axis(ids, order, axis=1)
    out.scores[:, :width] = np.take_along_axis(sc, order, axis=1)
    out.interest[:, :width] = np.take_along_axis(interest, order, axis=1)
    missing = out.ids < 0  # (B, n)
    out.scores[missing] = neg_inf
    out.interest[missing] = -1
    return out


class FaissSearch:
    """Per-interest faiss search plus the K * n merge.

    ``items``: (N + 1, D), row 0 = padding. ``index``: a prebuilt inner-product faiss index over
    items 1..N (labels = item ids; see the module docstring for one without an id map), or None
    for the exact ``IDMap2,Flat``. ``user_chunk``
    users are searched at a time, bounding the candidate arrays to ``user_chunk * K * (n +
    max excluded)`` entries. ``num_threads``, when given, calls ``faiss.omp_set_num_threads``
    (a process-wide setting).
    """

    def __init__(
        self,
        items: Any,
        index: Any = None,
        *,
        user_chunk: int = 1024,
        num_threads: int | None = None,
    ) -> None:
        if user_chunk < 1:
            raise ValueError("user_chunk must be >= 1")
        e = as_items(items).cpu().numpy()  # (N + 1, D)
        self.num_items = e.shape[0] - 1
        self.dim = e.shape[1]
        self.user_chunk = int(user_chunk)
        if num_threads is not None:
            faiss.omp_set_num_threads(int(num_threads))
        self.approximate = index is not None and not isinstance(inner_index(index), faiss.IndexFlat)
        self._items = e if self.approximate else None  # (N + 1, D), for the exact fallback
        self._exact: Any = None
        self.exact_fallbacks = 0
        if index is None:
            index = self._flat_index(e)
        else:
            if index.d != self.dim:
                raise ValueError(f"index has d={index.d} but items have D={self.dim}")
            if index.ntotal != self.num_items:
                raise ValueError(
                    f"index holds {index.ntotal} vectors but items has {self.num_items} "
                    "(rows 1..N; the padding row must not be indexed)"
                )
            if index.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise ValueError("index must use the inner-product metric (METRIC_INNER_PRODUCT)")
            if isinstance(index, faiss.IndexIDMap):
                ids = faiss.vector_to_array(index.id_map)  # (N,)
                if not np.array_equal(np.sort(ids), np.arange(1, self.num_items + 1)):
                    raise ValueError(f"the index's ids must be the item ids 1..{self.num_items}")
        self.index = index
        # labels are item ids under an id map; a plain index holds items 1..N in order (label + 1)
        self._label_offset = 0 if isinstance(index, faiss.IndexIDMap) else 1

    def _flat_index(self, e: np.ndarray) -> Any:
        return add_items(item_index("Flat", self.dim), e)

    def _search_index(self, index: Any, q: np.ndarray, n: int, excl: ExcludeCSR | None) -> SearchResult:
        """One index query per interest, then the merge: q (C, K, D) -> top n per user."""
        return search_index(index, q, n, excl, self._label_offset if index is self.index else 0)

    def _fill_short(self, res: SearchResult, q: np.ndarray, n: int, excl: ExcludeCSR | None) -> None:
        """Search exactly, in place, the users for whom the approximate index found too few items."""
        excluded = np.diff(excl.indptr) if excl is not None else np.zeros(len(q), dtype=np.int64)  # (C,)
        want = np.minimum(n, self.num_items - excluded)  # (C,)
        short = np.flatnonzero((res.ids > 0).sum(axis=1) < want)
        if len(short) == 0:
            return
        if self._exact is None:
            self._exact = self._flat_index(self._items)
        sub = as_exclude_csr(_rows_csr(excl, short), len(short), self.num_items)
        fix = self._search_index(self._exact, q[short], n, sub)
        res.ids[short], res.scores[short], res.interest[short] = fix.ids, fix.scores, fix.interest
        self.exact_fallbacks += len(short)

    def search(self, queries: Any, n: int, exclude: Any = None) -> SearchResult:
        """Top n items per user; see :class:`SearchResult`. ``exclude``: see ``as_exclude_csr``."""
        q, n, excl = check_search_args(queries, n, exclude, self.dim, self.num_items)
        q = q.cpu().numpy()  # (B, K, D)
        batch, k, _ = q.shape
        if batch == 0 or self.num_items == 0 or k == 0:
            return _empty_result(batch, n)

        parts: list[SearchResult] = []
        for u0 in range(0, batch, self.user_chunk):
            u1 = min(batch, u0 + self.user_chunk)
            sub = _slice_csr(excl, u0, u1)
            res = self._search_index(self.index, q[u0:u1], n, sub)
            if self.approximate:
                self._fill_short(res, q[u0:u1], n, sub)
            parts.append(res)
        return SearchResult(
            ids=np.concatenate([p.ids for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            interest=np.concatenate([p.interest for p in parts]),
        )
