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

from ..config import Config
from .comirec_dr import ComiRecDR


class MIND(ComiRecDR):
    """ComiRec-DR's capsule model with MIND's shared map and random initial routing logits."""

    bilinear = "shared"
    init_logits = "normal"

    @classmethod
    def from_config(cls, cfg: Config, num_items: int) -> "MIND":
        return cls(num_items, cfg.embedding_dim, cfg.num_interests, cfg.seq_len, cfg.routing_iters,
                   cfg.routing_axis, cfg.label_aware_pow, cfg.mind_relu_layer,
                   renormalise=cfg.routing_renormalise)
