"""MIND: Multi-Interest Network with Dynamic routing.

Li et al., "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall", CIKM 2019,
as implemented in the public ComiRec/REMI code. One ``D x D`` bilinear map is shared by all
positions and interests; the symmetry between the K capsules is broken by routing logits drawn
from a standard normal on every forward pass (see :mod:`dmirec.models.routing`).

Evaluation is stochastic by default, faithfully to the reference: the initial routing logits
are drawn at evaluation too (from torch's global generator, so seeding reproduces a run; the
reference's test R@50 for beauty varied by about +-0.003 between re-evaluations). An optional
bias-free ReLU layer follows the capsules (``mind_relu_layer``; the reference enables it only for
Amazon Books). Training reads out the interest closest to the target (hard argmax, the reference
default) or, with ``label_aware_pow = p > 0``, the paper's label-aware attention
``sum_k softmax_k((V_k . e_target)^p) V_k``. Parameters start from Kaiming-normal draws, as in
the reference.
"""

from __future__ import annotations

import torch

from ..config import Config
from .base import RetrievalModel, TrainOutput, argmax_readout, reference_init
from .routing import CapsuleRouting, label_aware_readout


class MIND(RetrievalModel):
    def __init__(self, num_items: int, embedding_dim: int = 64, num_interests: int = 4, seq_len: int = 20,
                 routing_iters: int = 3, routing_axis: str = "positions", label_aware_pow: float = 0.0,
                 relu_layer: bool = False, renormalise: bool = False):
        super().__init__(num_items, embedding_dim)
        self.num_interests = num_interests
        self.seq_len = seq_len
        self.label_aware_pow = label_aware_pow
        self.routing = CapsuleRouting(embedding_dim, num_interests, seq_len, bilinear="shared",
                                      routing_iters=routing_iters, axis=routing_axis, init_logits="normal",
                                      relu_layer=relu_layer, renormalise=renormalise)
        reference_init(self)

    @classmethod
    def from_config(cls, cfg: Config, num_items: int) -> "MIND":
        return cls(num_items, cfg.embedding_dim, cfg.num_interests, cfg.seq_len, cfg.routing_iters,
                   cfg.routing_axis, cfg.label_aware_pow, cfg.mind_relu_layer,
                   renormalise=cfg.routing_renormalise)

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.item_emb(history)  # (B, L, D)
        return self.routing(emb, mask)  # (B, K, D), (B, K, L)

    def train_forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> TrainOutput:
        vecs, weights = self.interests(history, mask)  # (B, K, D), (B, K, L)
        target_emb = self.item_emb(target)  # (B, D)
        if self.label_aware_pow > 0:
            user = label_aware_readout(vecs, target_emb, self.label_aware_pow)  # (B, D)
        else:
            user = argmax_readout(vecs, target_emb)  # (B, D)
        return TrainOutput(user=user, interests=vecs, weights=weights, aux_loss=vecs.new_zeros(()))
