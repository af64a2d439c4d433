"""REMI's training scheme: routing regularisation (and, in :mod:`dmirec.objectives.losses`, hard negatives).

Xie et al., "Rethinking Multi-Interest Learning for Candidate Matching", RecSys 2023.
REMI is ComiRec-SA (or DR) trained with two additions: interest-aware hard-negative weighting of
the sampled softmax (``hard_negative_beta``) and a regulariser on the item-to-interest weights
that keeps an interest from collapsing its attention onto a single item (``routing_reg``).
"""

from __future__ import annotations

import torch


def routing_regularizer(weights: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """Sum over users of the squared norm of the per-interest attention variances.

    weights (B, K, L). For each interest, ``c_k = sum_l (w_kl - mean_l w_k)^2 / D`` (the diagonal of
    the centred Gram matrix scaled by the embedding size, as in the reference code); the penalty
    is ``sum_b ||c_b||^2``. Uniform attention gives 0; peaked attention gives more than spread.
    """
    centred = weights - weights.mean(dim=2, keepdim=True)  # (B, K, L)
    var = (centred * centred).sum(dim=2) / embedding_dim  # (B, K)
    return (var * var).sum()
