"""Exact multi-interest top-N inner-product search in plain PyTorch: the reference backend.

This module also holds the types every retrieval backend shares (:class:`SearchResult`,
:class:`ExcludeCSR` and the input normalisers), so that the faiss backend and any later one
speak the same interface.

The serving protocol (docs/design.md, section 1): each of the K interest vectors of a user retrieves
its own top n items, the K * n candidates are merged by score, de-duplicated keeping the best
score, and cut to n. That is exactly the top n items ranked by ``max_k <q_k, e_i>`` (an item in
that top n is also in the top n of the interest that attains its max), so the exact backend
scores ``max_k`` directly and never materialises the per-interest lists.

Memory bound of :class:`ExactTorchSearch`: users are processed ``user_chunk`` at a time and the
catalogue ``item_block`` rows at a time, keeping a running top n per user. The peak working set
is about ``user_chunk * K * item_block`` float32 scores for one block (plus the same order of
``user_chunk * (n + item_block)`` for the running top-n merge), never ``B * K * N``. With the
defaults (``user_chunk`` 512, ``item_block`` chosen so a block has at most 2**24 scores) that is
about 64 MiB of scores for any catalogue size.

Ties among equal scores are broken by the lower item id in the returned order; which of several
tied items make the cut at position n is not specified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "SearchResult",
    "ExcludeCSR",
    "ExactTorchSearch",
    "as_exclude_csr",
    "as_queries",
    "as_items",
    "brute_force_scores",
]

#: Default bound on the number of float32 scores held for one (user chunk x item block) tile.
DEFAULT_BLOCK_ELEMS = 2**24


@dataclass(frozen=True)
class SearchResult:
    """Top-n results per user, best first. Missing slots (fewer than n items) are padded."""

    ids: np.ndarray  # (B, n) int64 item ids in 1..N, -1 where no item
    scores: np.ndarray  # (B, n) float32 max over interests of the inner product, -inf where no item
    interest: np.ndarray  # (B, n) int64 interest (0..K-1) that produced the item, -1 where no item


@dataclass(frozen=True)
class ExcludeCSR:
    """Item ids to exclude per user in CSR form: user b excludes ``indices[indptr[b]:indptr[b+1]]``.

    Any object with ``indptr`` and ``indices`` attributes (e.g. a scipy CSR matrix whose column
    index is the item id) is accepted wherever an ExcludeCSR is.
    """

    indptr: np.ndarray  # (B + 1,) int64
    indices: np.ndarray  # (nnz,) int64 item ids


def as_exclude_csr(exclude: Any, batch: int, num_items: int) -> ExcludeCSR | None:
    """Normalise an exclusion spec to a CSR with ids in 1..num_items, de-duplicated per user.

    ``exclude`` is None, an object with ``indptr``/``indices``, or a sequence of length
    ``batch`` of id sequences (None entries mean nothing to exclude). Ids <= 0 (padding) are
    dropped; ids > num_items are an error.
    """
    if exclude is None:
        return None
    if hasattr(exclude, "indptr") and hasattr(exclude, "indices"):
        indptr = np.asarray(exclude.indptr, dtype=np.int64).ravel()
        indices = np.asarray(exclude.indices, dtype=np.int64).ravel()
        if indptr.size != batch + 1:
            raise ValueError(f"exclude CSR has {indptr.size - 1} rows, expected {batch}")
        if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
            raise ValueError("exclude CSR indptr is not a valid offset array")
    else:
        if len(exclude) != batch:
            raise ValueError(f"exclude has {len(exclude)} users, expected {batch}")
        parts = [
            np.zeros(0, dtype=np.int64) if e is None else np.asarray(e, dtype=np.int64).ravel()
            for e in exclude
        ]
        lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=batch)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (B + 1,)
        indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # (nnz,)
    if indices.size and indices.max() > num_items:
        raise ValueError(
            f"exclude holds item id {int(indices.max())} but the catalogue has {num_items} items"
        )
    # Drop padding ids and duplicates, keep CSR order by (row, id).
    rows = np.repeat(np.arange(batch, dtype=np.int64), np.diff(indptr))  # (nnz,)
    keep = indices > 0
    keys = np.unique(rows[keep] * (num_items + 1) + indices[keep])  # (nnz',)
    rows, ids = keys // (num_items + 1), keys % (num_items + 1)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=batch))]).astype(np.int64)
    return ExcludeCSR(indptr=indptr, indices=ids.astype(np.int64))


def as_queries(queries: Any) -> torch.Tensor:
    """(B, K, D) float32 tensor from a tensor or array; a (B, D) input is taken as K = 1."""
    q = queries if isinstance(queries, torch.Tensor) else torch.as_tensor(np.asarray(queries))
    q = q.detach()
    if q.dim() == 2:
        q = q.unsqueeze(1)  # (B, 1, D)
    if q.dim() != 3:
        raise ValueError(f"queries must be (B, K, D), got shape {tuple(q.shape)}")
    return q.float()


def as_items(items: Any) -> torch.Tensor:
    """(N + 1, D) float32 tensor; row 0 is the padding item."""
    e = items if isinstance(items, torch.Tensor) else torch.as_tensor(np.asarray(items))
    e = e.detach()
    if e.dim() != 2 or e.shape[0] < 1:
        raise ValueError(f"items must be (N + 1, D) with row 0 = padding, got {tuple(e.shape)}")
    return e.float()


def _empty_result(batch: int, n: int) -> SearchResult:
    return SearchResult(
        ids=np.full((batch, n), -1, dtype=np.int64),
        scores=np.full((batch, n), -np.inf, dtype=np.float32),
        interest=np.full((batch, n), -1, dtype=np.int64),
    )


class ExactTorchSearch:
    """Exact top-n by ``max_k <q_k, e_i>`` over items 1..N, in bounded memory.

    ``items``: (N + 1, D) tensor or array, row 0 = padding (never returned). Searches run on
    the items' device (or ``device``). ``user_chunk`` users and ``item_block`` items are scored
    per tile; ``item_block=None`` picks the largest block with at most ``max_block_elems``
    scores for the query's K.
    """

    def __init__(
        self,
        items: Any,
        *,
        user_chunk: int = 512,
        item_block: int | None = None,
        max_block_elems: int = DEFAULT_BLOCK_ELEMS,
        device: str | torch.device | None = None,
    ) -> None:
        if user_chunk < 1:
            raise ValueError("user_chunk must be >= 1")
        if item_block is not None and item_block < 1:
            raise ValueError("item_block must be >= 1")
        e = as_items(items)  # (N + 1, D)
        if device is not None:
            e = e.to(device)
        self.items = e  # (N + 1, D)
        self.num_items = e.shape[0] - 1
        self.dim = e.shape[1]
        self.user_chunk = int(user_chunk)
        self.item_block = item_block
        self.max_block_elems = int(max_block_elems)

    @property
    def device(self) -> torch.device:
        return self.items.device

    def _block_size(self, chunk: int, k: int) -> int:
        if self.item_block is not None:
            return self.item_block
        return max(1, self.max_block_elems // max(1, chunk * k))

    @torch.no_grad()
    def search(self, queries: Any, n: int, exclude: Any = None) -> SearchResult:
        """Top n items per user (see :class:`SearchResult`); ``exclude``: ``as_exclude_csr``."""
        q, n, excl = check_search_args(queries, n, exclude, self.dim, self.num_items)
        q = q.to(self.device)  # (B, K, D)
        batch, k, _ = q.shape
        if batch == 0 or self.num_items == 0 or k == 0:
            return _empty_result(batch, n)

        ids_out, sc_out, int_out = [], [], []
        for u0 in range(0, batch, self.user_chunk):
            u1 = min(batch, u0 + self.user_chunk)
            ids, sc, it = self._search_chunk(q[u0:u1], n, excl, u0, u1)
            ids_out.append(ids)
            sc_out.append(sc)
            int_out.append(it)
        return SearchResult(
            ids=np.concatenate(ids_out),
            scores=np.concatenate(sc_out),
            interest=np.concatenate(int_out),
        )

    def _search_chunk(
        self, q: torch.Tensor, n: int, excl: ExcludeCSR | None, u0: int, u1: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chunk, k, _ = q.shape  # q: (C, K, D)
        dev = self.device
        best_sc = torch.full((chunk, n), float("-inf"), device=dev)  # (C, n)
        best_id = torch.full((chunk, n), -1, dtype=torch.long, device=dev)  # (C, n)
        best_it = torch.full((chunk, n), -1, dtype=torch.long, device=dev)  # (C, n)

        ex_rows = ex_ids = None
        if excl is not None:
            lo, hi = int(excl.indptr[u0]), int(excl.indptr[u1])
            counts = np.diff(excl.indptr[u0 : u1 + 1])  # (C,)
            ex_rows = torch.as_tensor(np.repeat(np.arange(chunk), counts), device=dev)  # (nnz,)
            ex_ids = torch.as_tensor(excl.indices[lo:hi], device=dev)  # (nnz,)

        block = self._block_size(chunk, k)
        qk = q.transpose(0, 1).contiguous()  # (K, C, D): one (C, D) x (D, Nb) product per interest
        for s in range(1, self.num_items + 1, block):
            t = min(self.num_items + 1, s + block)
            emb_t = self.items[s:t].T  # (D, Nb)
            per_k = [qk[j] @ emb_t for j in range(k)]  # K x (C, Nb)
            sc = per_k[0].clone() if k > 1 else per_k[0]  # (C, Nb) max over interests
            for tile in per_k[1:]:
                torch.maximum(sc, tile, out=sc)
            if ex_ids is not None and ex_ids.numel():
                sel = (ex_ids >= s) & (ex_ids < t)  # (nnz,)
                sc[ex_rows[sel], ex_ids[sel] - s] = float("-inf")
            top_sc, pos = sc.topk(min(n, t - s), dim=1)  # (C, m) the block's best, then merged below
            top_it = torch.stack([tile.gather(1, pos) for tile in per_k]).argmax(dim=0)  # (C, m) first max
            del per_k, sc
            cat_sc = torch.cat([best_sc, top_sc], dim=1)  # (C, n + m)
            best_sc, keep = cat_sc.topk(n, dim=1)  # (C, n)
            best_id = torch.cat([best_id, pos + s], dim=1).gather(1, keep)  # (C, n)
            best_it = torch.cat([best_it, top_it], dim=1).gather(1, keep)  # (C, n)

        # Order: score descending, then item id ascending among equal scores.
        order = best_id.argsort(dim=1, stable=True)  # (C, n)
        best_sc, best_id, best_it = (x.gather(1, order) for x in (best_sc, best_id, best_it))
        order = best_sc.argsort(dim=1, descending=True, stable=True)  # (C, n)
        best_sc, best_id, best_it = (x.gather(1, order) for x in (best_sc, best_id, best_it))
        missing = torch.isneginf(best_sc)  # (C, n) excluded items or fewer than n items
        best_id = best_id.masked_fill(missing, -1)
        best_it = best_it.masked_fill(missing, -1)
        return (
            best_id.cpu().numpy().astype(np.int64),
            best_sc.cpu().numpy().astype(np.float32),
            best_it.cpu().numpy().astype(np.int64),
        )


def check_search_args(queries: Any, n: Any, exclude: Any, dim: int, num_items: int
                      ) -> tuple[torch.Tensor, int, "ExcludeCSR | None"]:
    """Validate the arguments every backend's ``search`` takes: (queries (B, K, D), n, exclusions)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    q = as_queries(queries)  # (B, K, D)
    if q.shape[2] != dim:
        raise ValueError(f"queries have D={q.shape[2]} but items have D={dim}")
    return q, n, as_exclude_csr(exclude, q.shape[0], num_items)


def brute_force_scores(queries: Any, items: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every item's ``max_k`` score and argmax interest, (B, N + 1) each; for tests and checks.

    Column 0 (padding) is -inf / -1. Allocates B * K * (N + 1): small inputs only.
    """
    q = as_queries(queries).cpu().double()  # (B, K, D)
    e = as_items(items).cpu().double()  # (N + 1, D)
    full = torch.einsum("bkd,nd->bkn", q, e)  # (B, K, N + 1)
    sc, it = full.max(dim=1)  # (B, N + 1)
    sc[:, 0] = float("-inf")
    it[:, 0] = -1
    return sc.numpy(), it.numpy()

