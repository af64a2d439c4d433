"""ComiRec-DR: multi-interest extraction by capsule dynamic routing.

Cen et al., "Controllable Multi-Interest Framework for Recommendation", KDD 2020.
Each history position has its own bilinear map from an item embedding to K interest
predictions (a ``(1, seq_len, K * D, D)`` weight, as in the public ComiRec/REMI code); routing
starts from zero logits and runs ``routing_iters`` rounds (:mod:`dmirec.models.routing`, which
documents the normalisation axis, the stop-gradient and the padding rules). Training reads out
the interest closest to the target (hard argmax), or, with ``label_aware_pow > 0``, the
label-aware soft read-out (the reference code's ``hard_readout=False`` is ``p = 1``).
Parameters start from Kaiming-normal draws, as in the reference.
"""

from __future__ import annotations

import torch

from ..config import Config
from .base import RetrievalModel, TrainOutput, argmax_readout, reference_init
from .routing import CapsuleRouting, label_aware_readout


class ComiRecDR(RetrievalModel):
    # what distinguishes the capsule models (MIND subclasses this with its own two)
    bilinear = "per_position"
    init_logits = "zeros"

    def __init__(self, num_items: int, embedding_dim: int = 64, num_interests: int = 4, seq_len: int = 20,
                 routing_iters: int = 3, routing_axis: str = "positions", label_aware_pow: float = 0.0,
                 relu_layer: bool = False, renormalise: bool = False):
        super().__init__(num_items, embedding_dim)
        self.num_interests = num_interests
        self.seq_len = seq_len
        self.label_aware_pow = label_aware_pow
        self.routing = CapsuleRouting(embedding_dim, num_interests, seq_len, bilinear=self.bilinear,
                                      routing_iters=routing_iters, axis=routing_axis, init_logits=self.init_logits,
                                      relu_layer=relu_layer, renormalise=renormalise)
        reference_init(self)

    @classmethod
    def from_config(cls, cfg: Config, num_items: int) -> "ComiRecDR":
        return cls(num_items, cfg.embedding_dim, cfg.num_interests, cfg.seq_len, cfg.routing_iters,
                   cfg.routing_axis, cfg.label_aware_pow,
                   renormalise=cfg.routing_renormalise)

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.item_emb(history)  # (B, L, D)
        return self.routing(emb, mask)  # (B, K, D), (B, K, L)

    def train_forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                      users: torch.Tensor | None = None) -> TrainOutput:
        vecs, weights = self.interests(history, mask)  # (B, K, D), (B, K, L)
        target_emb = self.item_emb(target)  # (B, D)
        if self.label_aware_pow > 0:
            user = label_aware_readout(vecs, target_emb, self.label_aware_pow)  # (B, D)
        else:
            user = argmax_readout(vecs, target_emb)  # (B, D)
        return TrainOutput(user=user, interests=vecs, weights=weights, aux_loss=self.routing_loss(weights))
