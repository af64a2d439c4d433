"""Most-popular baseline: every user gets the items most interacted with in the training split.

It honours the model contract with D = 1: :meth:`item_embeddings` is a fixed (N + 1, 1) buffer of
``log(1 + count)`` (row 0, the padding item, is a very large negative number so it never ranks)
and every user has a single query vector ``1``, so inner-product retrieval ranks items by
training count (ties by the lower id). Nothing is learnt (:attr:`trainable` is False); the
counts are saved with the weights.

The reference code's ``Pop`` counts the targets of the training batches it has seen; we count
every interaction of the training users, which is the same distribution without sampling noise.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import RetrievalModel, TrainOutput

PADDING_SCORE = -1e9


class MostPopular(RetrievalModel):
    def __init__(self, num_items: int, popularity: np.ndarray | torch.Tensor | None = None):
        nn.Module.__init__(self)  # no item table: the contract's embeddings are the counts below
        self.num_items = num_items
        self.embedding_dim = 1
        self.num_interests = 1
        counts = torch.zeros(num_items + 1, dtype=torch.float64)
        if popularity is not None:
            counts = torch.as_tensor(np.asarray(popularity), dtype=torch.float64).clone()
            if counts.shape != (num_items + 1,):
                raise ValueError(f"popularity must have shape ({num_items + 1},), got {tuple(counts.shape)}")
        scores = torch.log1p(counts.clamp(min=0)).float()  # (N + 1,)
        scores[0] = PADDING_SCORE
        self.register_buffer("scores", scores.unsqueeze(1))  # (N + 1, 1)
        self.bank = None  # the interest bank (dmirec.models.attach_bank), as RetrievalModel.__init__ declares it

    @property
    def trainable(self) -> bool:
        return False

    def item_embeddings(self) -> torch.Tensor:
        return self.scores  # (N + 1, 1)

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, length = history.shape
        m = mask.to(self.scores.dtype)  # (B, L)
        weights = (m / m.sum(dim=1, keepdim=True).clamp(min=1.0)).unsqueeze(1)  # (B, 1, L)
        return self.scores.new_ones(b, 1, 1), weights  # (B, 1, 1), (B, 1, L)

    def train_forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                      users: torch.Tensor | None = None) -> TrainOutput:
        vecs, weights = self.interests(history, mask)  # (B, 1, 1), (B, 1, L)
        return TrainOutput(user=vecs[:, 0], interests=vecs, weights=weights, aux_loss=self.routing_loss(weights))
