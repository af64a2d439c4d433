"""Item-to-item models of the zoo: ItemKNN, RP3beta and EASE (``--model itemknn / rp3beta / ease``).

Both hold one sparse item-item matrix S of shape (N + 1, N + 1), fitted in closed form on the
training users' item sets (:meth:`ItemItemModel.fit`): ItemKNN the shrunk cosine between items
(Sarwar et al., WWW 2001; :func:`dmirec.channels.itemknn.fit_itemknn`), RP3beta the three-step
random walk over the user-item graph with a popularity penalty (Paudel et al., TiiS 2017;
:func:`dmirec.channels.rp3beta.fit_rp3beta`), EASE the ridge regression of
every item on all others with a zero diagonal (Steck, WWW 2019; :func:`dmirec.channels.ease.fit_ease`).
A user's whole history, each distinct item weighted 1 (or ``exp(-history_decay * age)`` summed over
its visits), scores items as ``x_u S``; the top n are the list, filled with the most popular items
when fewer than n items score (:meth:`ItemItemModel.rank_histories`). Evaluation, serving and
batch candidates call that method instead of the vector search (:func:`dmirec.evaluation.evaluate.rank_users`,
:meth:`dmirec.serving.bundle.Bundle.recommend_ids`).

The model contract is honoured as most-popular honours it (D = 1: item "embeddings" are
``log(1 + training count)`` and every user's single query vector is 1), so code that only knows
vectors sees a popularity ranker. Nothing is trained (:attr:`trainable` is False); the matrix is a
buffer of the state dict (CSR arrays), so checkpoints and bundles carry and checksum it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..channels.ease import fit_ease
from ..channels.interactions import sequences_matrix, user_item_matrix
from ..channels.itemknn import fit_itemknn
from ..channels.rp3beta import fit_rp3beta
from ..channels.scoring import top_items
from ..retrieval import SearchResult
from ..retrieval.fill import fill_popular
from .most_popular import MostPopular

_CSR = ("sim_indptr", "sim_indices", "sim_values")


class ItemItemModel(MostPopular):
    """Base of the item-to-item models: the matrix as CSR buffers and the scoring; the vector
    contract is most-popular's (a popularity ranker with D = 1, nothing to train)."""

    def __init__(self, num_items: int, popularity: np.ndarray | None = None, history_decay: float = 0.0):
        super().__init__(num_items, popularity)  # the popularity "embeddings", K = 1, nothing to train
        self.history_decay = float(history_decay)
        counts = np.zeros(num_items + 1) if popularity is None else np.asarray(popularity, dtype=np.float64)
        self.register_buffer("sim_indptr", torch.zeros(num_items + 2, dtype=torch.int64))  # (N + 2,)
        self.register_buffer("sim_indices", torch.zeros(0, dtype=torch.int64))  # (nnz,)
        self.register_buffer("sim_values", torch.zeros(0, dtype=torch.float32))  # (nnz,)
        order = np.lexsort((np.arange(num_items + 1), -counts))  # most popular first, then lower id
        self._popular = order[order > 0].astype(np.int64)  # (N,)
        self._matrix: sp.csr_matrix | None = None

    # -- fitting -----------------------------------------------------------------------------
    def fit_matrix(self, train: sp.csr_matrix) -> sp.csr_matrix:
        raise NotImplementedError

    def fit(self, train_split) -> "ItemItemModel":
        """Fit S on a prepared split's sequences (the training users)."""
        self.set_matrix(self.fit_matrix(sequences_matrix(train_split, self.num_items)))
        return self

    def set_matrix(self, matrix) -> None:
        m = sp.csr_matrix(matrix, dtype=np.float32)
        if m.shape != (self.num_items + 1, self.num_items + 1):
            raise ValueError(f"the item-item matrix has shape {m.shape}, expected "
                             f"({self.num_items + 1}, {self.num_items + 1})")
        m.sort_indices()
        self.sim_indptr = torch.from_numpy(m.indptr.astype(np.int64))
        self.sim_indices = torch.from_numpy(m.indices.astype(np.int64))
        self.sim_values = torch.from_numpy(m.data.astype(np.float32))
        self._matrix = m

    def matrix(self) -> sp.csr_matrix:
        """S as a scipy CSR matrix (N + 1, N + 1)."""
        if self._matrix is None:
            n = self.num_items + 1
            self._matrix = sp.csr_matrix((self.sim_values.numpy(), self.sim_indices.numpy(), self.sim_indptr.numpy()),
                                         shape=(n, n))
        return self._matrix

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        for name in _CSR:  # the matrix's size is known only from the saved arrays
            if name in state_dict:
                self._buffers[name] = state_dict[name].detach().clone().cpu()
        self._matrix = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- ranking -----------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.sim_indices.numel() > 0

    def rank_histories(self, histories, n: int, exclude=None) -> SearchResult:
        """Top n per history (each a 1-D id array, oldest first): ``x_u S``, then most popular.

        ``exclude``: per-user ids never returned (history exclusion), or None."""
        rows = user_item_matrix(histories, self.num_items, decay=self.history_decay)  # (B, N + 1)
        ids, scores = top_items(rows, self.matrix(), int(n), exclude=exclude)  # (B, n) each
        interest = np.where(ids > 0, 0, -1).astype(np.int64)
        res = SearchResult(ids=ids, scores=scores.astype(np.float32), interest=interest)
        return fill_popular(res, self._popular, exclude)


class ItemKNN(ItemItemModel):
    """Item-based kNN: shrunk cosine between item columns, top ``neighbours`` per item kept."""

    def __init__(self, num_items: int, popularity=None, *, shrink: float = 10.0, neighbours: int = 200,
                 history_decay: float = 0.0):
        super().__init__(num_items, popularity, history_decay)
        self.shrink, self.neighbours = float(shrink), int(neighbours)

    def fit_matrix(self, train: sp.csr_matrix) -> sp.csr_matrix:
        return fit_itemknn(train, shrink=self.shrink, topk=self.neighbours)


class EASE(ItemItemModel):
    """EASE: closed-form ridge item-item weights with a zero diagonal, ``neighbours`` kept per item."""

    def __init__(self, num_items: int, popularity=None, *, lam: float = 200.0, neighbours: int = 500,
                 max_items: int = 50_000, history_decay: float = 0.0):
        super().__init__(num_items, popularity, history_decay)
        self.lam, self.neighbours, self.max_items = float(lam), int(neighbours), int(max_items)

    def fit_matrix(self, train: sp.csr_matrix) -> sp.csr_matrix:
        b = fit_ease(train, lam=self.lam, max_items=self.max_items, topk=self.neighbours or None)
        return sp.csr_matrix(b)


class RP3beta(ItemItemModel):
    """RP3beta: the 3-step walk item -> user -> item, probabilities to the power alpha, the target
    divided by its popularity to the power beta; top ``neighbours`` per item kept."""

    def __init__(self, num_items: int, popularity=None, *, alpha: float = 1.0, beta: float = 0.5,
                 neighbours: int = 200, history_decay: float = 0.0):
        super().__init__(num_items, popularity, history_decay)
        self.alpha, self.beta, self.neighbours = float(alpha), float(beta), int(neighbours)

    def fit_matrix(self, train: sp.csr_matrix) -> sp.csr_matrix:
        return fit_rp3beta(train, alpha=self.alpha, beta=self.beta, topk=self.neighbours)
