"""YouTube-DNN-style single-interest baseline: mean pooling of the history, then a linear layer.

Covington et al., "Deep Neural Networks for YouTube Recommendations", RecSys 2016, in the reduced
form of the public ComiRec/REMI code's ``DNN``: the user vector is ``W mean(E[s])``, one bias-free
``D x D`` linear layer on the mean of the history embeddings (the reference keeps its ReLU
commented out, and so do we). K = 1: ``V`` is (B, 1, D) and ``W`` spreads the weight uniformly
over the valid positions.

Unlike the reference, the mean is masked: the reference sums the embeddings of all L slots,
padding included (its padding row is a Kaiming-normal draw that the loss can move), and divides
by the number of real items, so short histories carry a multiple of the padding vector.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .base import RetrievalModel, reference_init


class YouTubeDNN(RetrievalModel):
    def __init__(self, num_items: int, embedding_dim: int = 64, seq_len: int = 20):
        super().__init__(num_items, embedding_dim)
        self.num_interests = 1
        self.seq_len = seq_len
        self.linear = nn.Linear(embedding_dim, embedding_dim, bias=False)
        reference_init(self)

    @classmethod
    def from_config(cls, cfg: Config, num_items: int) -> "YouTubeDNN":
        if cfg.num_interests != 1:
            raise ValueError(f"youtube-dnn has a single interest; got num_interests={cfg.num_interests}")
        return cls(num_items, cfg.embedding_dim, cfg.seq_len)

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = mask.to(self.item_emb.weight.dtype)  # (B, L)
        weights = (m / m.sum(dim=1, keepdim=True).clamp(min=1.0)).unsqueeze(1)  # (B, 1, L)
        pooled = weights @ self.item_emb(history)  # (B, 1, D)
        return self.linear(pooled), weights  # (B, 1, D), (B, 1, L)
