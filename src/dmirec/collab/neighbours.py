"""The interest bank and the training-free neighbour rule (collaborative information).

The bank holds the K interests of training users, each computed from the user's last
``seq_len`` training items, and answers exact nearest-neighbour queries by cosine similarity.
As in COIN (Collaborative Interest Modeling, RecSys 2025) a bank *entry* is a user: its score
for a query interest is the best cosine over the user's K interests, the top-n users are the
neighbours, and each contributes that best-matching interest (so two neighbours never come from
one user).

The neighbour rule refines every interest ``v_k`` of any model without training::

    v_k' = v_k + alpha * sum_m c_m u_m / sum_m c_m      (c_m the cosines of the n neighbours u_m)

``alpha = 0`` returns the vectors unchanged (exactly). The bank is a module with buffers, so it
lives in the model's state dict: checkpoints and serving bundles carry it and ``/recommend``
gives exactly what ``evaluate`` measures. Search is blocked over the bank (``block`` entries at a
time, by default about 2**22 scores per interest) so memory stays ``O(queries x block)`` whatever
the bank's size: each interest is scored with one matrix product per block and only each block's
top n users are merged into the running list; ``max_users`` caps the bank
with a seeded sample of training users.

Padding never enters: a user with no training items has no entry, and a query that finds fewer
than n entries (tiny banks, exclusions) marks the missing neighbours as not found.

Large banks (``bank_search=hnsw``): outside training (no exclusions, no sampling) the bank can be
searched through a faiss HNSW graph over its U*K unit interests (inner product = cosine). A query
asks for ``max(64, 4 n K)`` nearest interests; the first hit of each bank user is its best
interest, and the first n distinct users are the neighbours: the exact rule's definition with an
approximate candidate list. The graph is built on first use from the bank's buffers, on one
thread so that it is the same graph in every process (evaluate and serve agree), and dropped
whenever the bank changes; it is not stored. Training searches stay exact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.dataset import Sequences
from ..data.sampler import gather_windows


class InterestBank(nn.Module):
    """Training users' interests ``vectors (U, K, D)`` and their row ids in the train split ``owners (U,)``."""

    def __init__(self, dim: int, num_interests: int, search: str = "exact", hnsw_ef: int = 128):
        super().__init__()
        self.register_buffer("vectors", torch.zeros(0, num_interests, dim))  # (U, K, D)
        self.register_buffer("owners", torch.zeros(0, dtype=torch.long))  # (U,) train-split row ids
        self.search_kind = search  # exact | hnsw (outside training)
        self.hnsw_ef = hnsw_ef
        self._hnsw = None  # faiss graph over the unit interests, built on first use

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._hnsw = None
        # a bank's size is data, not architecture: take the stored shape before copying
        for name in ("vectors", "owners"):
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def size(self) -> int:
        return int(self.owners.numel())

    def set(self, vectors: torch.Tensor, owners: torch.Tensor) -> None:
        self.vectors = vectors.detach().float().to(self.vectors.device)  # (U, K, D)
        self.owners = owners.to(self.owners.device, torch.long)  # (U,)
        self._hnsw = None

    def unit_vectors(self) -> torch.Tensor:
        """The bank's interests scaled to unit length, (U, K, D): computed once per bank content
        (the cache holds the tensor it was made from and that tensor's version, so a new or
        modified bank is normalised again). Exact search reads it instead of normalising the whole
        bank on every call (one serving request would otherwise rewrite U x K x D floats)."""
        cache = getattr(self, "_unit_cache", None)
        if cache is None or cache[0] is not self.vectors or cache[1] != self.vectors._version:
            cache = (self.vectors, self.vectors._version, nn.functional.normalize(self.vectors, dim=-1))
            self._unit_cache = cache
        return cache[2]

    def _hnsw_index(self):
        """The HNSW graph over the bank's U*K unit interests (built once per bank content)."""
        if self._hnsw is None:
            import faiss

            unit = nn.functional.normalize(self.vectors.reshape(-1, self.vectors.shape[2]), dim=-1)  # (U*K, D)
            index = faiss.IndexHNSWFlat(unit.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # one thread: the same graph in every process
            try:
                index.add(np.ascontiguousarray(unit.cpu().numpy(), dtype=np.float32))
            finally:
                faiss.omp_set_num_threads(threads)
            self._hnsw = index
        return self._hnsw

    def _search_hnsw(self, queries: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`search` through the HNSW graph (no exclusions, no sampling)."""
        q, d = queries.shape
        k = self.vectors.shape[1]
        unit_q = nn.functional.normalize(queries.detach().float(), dim=-1)  # (Q, D)
        want = min(self.size * k, max(64, 4 * n * k))
        index = self._hnsw_index()
        index.hnsw.efSearch = max(self.hnsw_ef, want)
        scores, ids = index.search(np.ascontiguousarray(unit_q.cpu().numpy(), dtype=np.float32), want)  # (Q, m)
        users = np.where(ids >= 0, ids // k, -1)  # (Q, m) bank user of each hit, best hit first
        order = np.argsort(users, axis=1, kind="stable")  # (Q, m)
        sorted_users = np.take_along_axis(users, order, 1)
        first = np.ones_like(sorted_users, dtype=bool)
        first[:, 1:] = sorted_users[:, 1:] != sorted_users[:, :-1]
        first &= sorted_users >= 0
        is_first = np.zeros_like(first)
        np.put_along_axis(is_first, order, first, 1)  # (Q, m) a user's first (best) hit, in hit order
        chosen = is_first & (np.cumsum(is_first, axis=1) <= n)
        pos = np.argsort(~chosen, axis=1, kind="stable")[:, :n]  # (Q, <=n) chosen hits first, in order
        found = np.take_along_axis(chosen, pos, 1)
        hit = np.where(found, np.take_along_axis(ids, pos, 1), 0)  # (Q, <=n) flat interest ids
        sims = np.where(found, np.take_along_axis(scores, pos, 1), 0.0)
        device = queries.device
        found_t = torch.from_numpy(found).to(device)
        vectors = self.vectors.reshape(-1, d)[torch.from_numpy(hit).to(self.vectors.device)].to(device)  # (Q, <=n, D)
        vectors = vectors * found_t.unsqueeze(-1)
        sims_t = torch.from_numpy(sims.astype(np.float32)).to(device)
        missing = n - found.shape[1]
        if missing:  # fewer candidates than n
            vectors = torch.cat([vectors, vectors.new_zeros(q, missing, d)], dim=1)
            sims_t = torch.cat([sims_t, sims_t.new_zeros(q, missing)], dim=1)
            found_t = torch.cat([found_t, found_t.new_zeros(q, missing)], dim=1)
        return vectors, sims_t, found_t

    def search(self, queries: torch.Tensor, n: int, exclude: torch.Tensor | None = None, block: int | None = None,
               sample: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-n bank users for each query ``(Q, D)`` by their best cosine over the K interests.

        ``exclude (Q,)``: a train-split row id per query whose entry must not be returned (the
        query user itself in training; -1 for none). ``sample > 0`` searches a uniform random
        subset of that many bank users (global RNG; training uses it to bound the cost of a
        step). ``block``: bank users scored at a time (None: about 2**22 scores per interest).
        Returns ``vectors (Q, n, D)`` (each neighbour's best-matching interest), ``sims (Q,
        n)`` and ``found (Q, n)`` (False where fewer than n entries qualify; those rows of
        ``vectors`` and ``sims`` are 0).
        """
        if self.search_kind == "hnsw" and exclude is None and sample == 0 and self.size > 0:
            return self._search_hnsw(queries, n)
        bank_vecs, bank_unit, owners = self.vectors, self.unit_vectors(), self.owners
        if 0 < sample < self.size:
            pick = torch.randperm(self.size, device=bank_vecs.device)[:sample]  # (S,)
            bank_vecs, bank_unit, owners = bank_vecs[pick], bank_unit[pick], owners[pick]
        q, d = queries.shape
        if block is None:  # about 2**22 scores per interest and block (16 MiB), at least 256 bank users
            block = max(256, 2**22 // max(q, 1))
        unit_q = nn.functional.normalize(queries.detach().float(), dim=-1)  # (Q, D)
        best_s = torch.full((q, 0), float("-inf"), device=queries.device)
        best_u = torch.zeros(q, 0, dtype=torch.long, device=queries.device)
        best_k = torch.zeros(q, 0, dtype=torch.long, device=queries.device)
        for start in range(0, len(owners), block):
            unit = bank_unit[start:start + block]  # (b, K, D)
            per_k = [unit_q @ unit[:, j].T for j in range(unit.shape[1])]  # K x (Q, b)
            top_s = per_k[0].clone()  # (Q, b) each bank user's best interest
            for sims in per_k[1:]:
                torch.maximum(top_s, sims, out=top_s)
            if exclude is not None:
                own = owners[start:start + block].unsqueeze(0) == exclude.unsqueeze(1)  # (Q, b)
                top_s = top_s.masked_fill(own, float("-inf"))
            block_s, pos = top_s.topk(min(n, unit.shape[0]), dim=1)  # (Q, m) the block's best users
            block_k = torch.stack([sims.gather(1, pos) for sims in per_k]).argmax(dim=0)  # (Q, m) first best
            best_s = torch.cat([best_s, block_s], dim=1)  # (Q, <= 2n)
            best_u = torch.cat([best_u, pos + start], dim=1)
            best_k = torch.cat([best_k, block_k], dim=1)
            keep = min(n, best_s.shape[1])
            best_s, pos = best_s.topk(keep, dim=1)  # (Q, keep)
            best_u, best_k = best_u.gather(1, pos), best_k.gather(1, pos)
        found = torch.isfinite(best_s)  # (Q, m), m <= n
        vectors = bank_vecs[best_u, best_k] * found.unsqueeze(-1)  # (Q, m, D)
        sims = torch.where(found, best_s, torch.zeros_like(best_s))
        missing = n - best_s.shape[1]
        if missing:  # a bank smaller than n
            vectors = torch.cat([vectors, vectors.new_zeros(q, missing, d)], dim=1)
            sims = torch.cat([sims, sims.new_zeros(q, missing)], dim=1)
            found = torch.cat([found, found.new_zeros(q, missing)], dim=1)
        return vectors, sims, found

    def neighbours(self, vecs: torch.Tensor, n: int, exclude: torch.Tensor | None = None, sample: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per interest: ``vecs (B, K, D)`` -> neighbours (B, K, n, D), sims (B, K, n), found (B, K, n)."""
        b, k, d = vecs.shape
        ex = None if exclude is None else exclude.repeat_interleave(k)  # (B*K,)
        nb, sims, found = self.search(vecs.reshape(b * k, d), n, ex, sample=sample)
        return nb.view(b, k, n, d), sims.view(b, k, n), found.view(b, k, n)


def neighbour_rule(vecs: torch.Tensor, bank: InterestBank, alpha: float, n: int) -> torch.Tensor:
    """``v_k + alpha * (cosine-weighted mean of the n neighbour interests)``: (B, K, D)."""
    if alpha == 0.0 or bank.size == 0:
        return vecs
    nb, sims, found = bank.neighbours(vecs, n)  # (B, K, n, D), (B, K, n), (B, K, n)
    weights = sims * found  # (B, K, n)
    total = weights.sum(-1, keepdim=True)  # (B, K, 1)
    mean = (weights.unsqueeze(-1) * nb).sum(2) / total.where(total != 0, torch.ones_like(total))  # (B, K, D)
    return vecs + alpha * mean.to(vecs.dtype)


@torch.no_grad()
def build_bank(model, train: Sequences, seq_len: int, batch_size: int = 1024, device: str | torch.device = "cpu",
               max_users: int = 0, seed: int = 0) -> None:
    """Fill ``model.bank`` with ``model.bank_interests`` of every training user's last ``seq_len`` items.

    ``max_users > 0`` keeps a seeded sample of that many users (same sample on every rebuild).
    """
    rows = np.flatnonzero(train.lengths > 0)  # users with at least one training item
    if max_users and max_users < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_users, replace=False))
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        history, mask = gather_windows(train, chunk, train.lengths[chunk], seq_len)  # (b, L)
        hist = torch.from_numpy(history).to(device)
        msk = torch.from_numpy(mask).to(device)
        out.append(model.bank_interests(hist, msk).float())  # (b, K, D)
    model.train(was_training)
    dim, k = model.bank.vectors.shape[2], model.bank.vectors.shape[1]
    vectors = torch.cat(out) if out else torch.zeros(0, k, dim, device=device)
    model.bank.set(vectors, torch.from_numpy(rows).long())


def fill_bank(model, cfg, train: Sequences, device: str | torch.device = "cpu") -> None:
    """:func:`build_bank` with a run's settings (its ``seq_len``, batch size, user cap and seed):
    the one way training, evaluation, export and the benchmarks fill a model's bank."""
    build_bank(model, train, cfg.seq_len, cfg.eval_batch_size, device, cfg.bank_max_users, cfg.seed)
