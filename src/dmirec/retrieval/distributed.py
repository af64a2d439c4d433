"""Exact search over an item table sharded row-wise over ``torch.distributed`` ranks.

:func:`rank_users`: every rank computes the query vectors of its share of the users (the history
rows through one sharded lookup per batch), the queries are all-gathered, every rank searches its
own rows exactly (top n per user, history exclusion translated to its rows), and the P candidate
lists are all-gathered and merged by score (then item id): the same top n as one exact search over
the whole table. The table is any module with the attributes of
:class:`dmirec.training.distributed.sharded.ShardedItemTable` (``world``, ``rank``, ``offset``,
``rows_here``, ``num_rows``, ``dim``, ``block``, ``prefetch``); this module needs only
``torch.distributed``, never TorchRec.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from . import ExcludeCSR, SearchResult, merge_candidates, resolve_backend
from .exact import ExactTorchSearch, _empty_result, as_exclude_csr
from .faiss_search import _slice_csr, add_rows, item_index, search_index


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """``(m, ...)`` from every rank (the same m) stacked in rank order: ``(P * m, ...)``."""
    parts = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def rank_users(model: nn.Module, eval_set, n: int, backend: str = "auto", exclude_history: bool = False,
               batch_size: int = 1024):
    """The exact top-n of every evaluation user with a sharded table; a collective, every rank gets
    the whole :class:`~dmirec.retrieval.SearchResult` (see the module docstring)."""
    table: ShardedItemTable = model.item_emb
    world, rank = table.world, table.rank
    users = len(eval_set.history)
    per = -(-users // world)  # users per rank, the last rank's share padded with user 0
    mine = np.arange(rank * per, (rank + 1) * per)
    mine = np.where(mine < users, mine, 0)
    was_training = model.training
    model.eval()
    parts = []
    for s in range(0, per, batch_size):  # the same number of batches, of the same sizes, on every rank
        rows = mine[s:s + batch_size]
        hist = torch.from_numpy(np.ascontiguousarray(eval_set.history[rows]))  # (b, L)
        mask = torch.from_numpy(np.ascontiguousarray(eval_set.mask[rows]))  # (b, L)
        table.prefetch(hist)
        parts.append(model.user_vectors(hist, mask).float())  # (b, K, D)
    model.train(was_training)
    k = getattr(model, "num_interests", 1)
    local = torch.cat(parts) if parts else torch.zeros(0, k, table.dim)  # (per, K, D)
    queries = _all_gather(local)[:users].numpy()  # (U, K, D)

    exclude = as_exclude_csr(eval_set.full_history, users, table.num_rows - 1) if exclude_history else None
    found = _search_rows(table, queries, n, backend, exclude)  # (U, n) of this rank's rows, global ids

    # the P lists of each user merged: score descending, then item id (the ranks' rows are disjoint)
    def gathered(x: np.ndarray) -> np.ndarray:  # (U, n) from every rank -> (U, P * n)
        return _all_gather(torch.from_numpy(x)).reshape(world, users, n).permute(1, 0, 2).reshape(users, -1).numpy()
    return merge_candidates(gathered(found.ids), gathered(found.scores), gathered(found.interest), n)


def _search_rows(table: ShardedItemTable, queries: np.ndarray, n: int, backend: str, exclude) -> "SearchResult":
    """Exact top n of each user among this rank's rows (global ids; the padding row never).

    faiss (``auto`` on the CPU): an ``IDMap2,Flat`` index holding the rows under their global ids,
    filled from the block without another copy. torch: the exact torch search over the block with
    a padding row in front (one copy of the block)."""
    block = table.block.detach()  # (rows here, D)
    users = len(queries)
    if resolve_backend(backend) == "torch":
        shift = max(table.offset - 1, 0)  # local id j is global id j + shift; local row 0 is padding
        items = block if table.offset == 0 else torch.cat([block.new_zeros(1, table.dim), block])
        local = None
        if exclude is not None:
            keep = (exclude.indices > shift) & (exclude.indices < table.offset + table.rows_here)  # (nnz,)
            owner = np.repeat(np.arange(users), np.diff(exclude.indptr))  # (nnz,)
            local = ExcludeCSR(indptr=np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=users))]
                                                     ).astype(np.int64),
                               indices=(exclude.indices[keep] - shift).astype(np.int64))
        found = ExactTorchSearch(items).search(queries, n, exclude=local)
        return SearchResult(ids=np.where(found.ids > 0, found.ids + shift, -1), scores=found.scores,
                            interest=found.interest)
    first = 1 if table.offset == 0 else 0  # rank 0's row 0 is the padding row
    index = add_rows(item_index("Flat", table.dim), block.numpy()[first:], table.offset + first)  # labels = ids
    parts = [search_index(index, queries[u0:u0 + 1024], n, _slice_csr(exclude, u0, min(users, u0 + 1024)))
             for u0 in range(0, users, 1024)]
    if not parts:
        return _empty_result(0, n)
    return SearchResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "scores", "interest")))
