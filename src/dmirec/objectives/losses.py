"""Sampled softmax with negatives shared by the batch, and REMI's interest-aware hard negatives.

Each row scores its own target against the same ``num_negatives`` sampled items. Negatives are
drawn uniformly over items 1..N (default) or log-uniformly over popularity rank (items are
numbered by descending count, so id order is rank order). Options: log-Q correction (subtract
the log sampling probability from every logit) and accidental-hit removal (a negative equal to
the row's target gets -inf). With ``hard_negative_beta > 0`` the negative mass is reweighted
as in REMI: ``w_j ∝ exp(beta * s_j)`` normalised to mean 1, so that a uniform weighting
(beta = 0) is the plain sampled softmax.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


class NegativeSampler:
    """Draws shared negatives (with replacement) from items 1..N."""

    def __init__(self, num_items: int, kind: str = "uniform", device: torch.device | str = "cpu"):
        self.num_items = num_items
        self.kind = kind
        if kind not in ("uniform", "log_uniform"):
            raise ValueError(f"unknown negative sampler {kind!r}")
        ranks = torch.arange(1, num_items + 1, dtype=torch.float64)
        if kind == "uniform":
            probs = torch.full((num_items,), 1.0 / num_items, dtype=torch.float64)
        else:  # P(rank r) = log((r + 1) / r) / log(N + 1)
            probs = torch.log1p(1.0 / ranks) / math.log(num_items + 1)
        self.log_probs = torch.cat([torch.zeros(1, dtype=torch.float64), probs.log()]).float().to(device)  # (N+1,)
        self._probs = probs.float().to(device)

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "uniform":
            return torch.randint(1, self.num_items + 1, (count,), generator=generator,
                                 device=self._probs.device)
        u = torch.rand(count, generator=generator, dtype=torch.float64, device=self._probs.device)
        # inverse CDF of the log-uniform rank distribution: floor(exp(u * log(N + 1)))
        ids = torch.floor(torch.exp(u * math.log(self.num_items + 1))).long()
        return ids.clamp_(1, self.num_items)


class _WeightedNegativeMass(torch.autograd.Function):
    """``log sum_j w_j e^{n_j}`` with REMI's weights ``w = S softmax(beta n)``, one row per user.

    Equal to ``LSE((1 + beta) n) - LSE(beta n) + log S``; computed from one shared shift ``m`` (the
    row max) as ``m + log sum e^{(1+beta) z} - log sum e^{beta z} + log S`` with ``z = n - m``, and
    differentiated by hand: ``d/dn_j = (1 + beta) p2_j - beta p1_j`` where p1, p2 are the two
    softmaxes. Two exponentials of the (B, S) scores forward (one when beta = 1, REMI's value) and three (B, S) operations backward,
    against about twenty for the same function through autograd (checked by gradcheck).
    """

    @staticmethod
    def forward(ctx, neg: torch.Tensor, beta: float) -> torch.Tensor:
        shift = neg.max(dim=1, keepdim=True).values  # (B, 1)
        z = neg - shift  # (B, S), <= 0
        e1 = torch.exp(z if beta == 1.0 else beta * z)  # (B, S) e^{beta z}
        e2 = e1 * (e1 if beta == 1.0 else torch.exp(z))  # (B, S) e^{(1 + beta) z}; beta 1: e^z is e1 itself
        s1, s2 = e1.sum(dim=1, keepdim=True), e2.sum(dim=1, keepdim=True)  # (B, 1)
        ctx.save_for_backward(e1, e2, s1, s2)
        ctx.beta = beta
        return (shift + torch.log(s2) - torch.log(s1)).squeeze(1) + math.log(neg.shape[1])  # (B,)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        e1, e2, s1, s2 = ctx.saved_tensors
        g = grad.unsqueeze(1)  # (B, 1)
        return e2 * (g * (1.0 + ctx.beta) / s2) - e1 * (g * ctx.beta / s1), None  # (B, S)


def sampled_softmax_loss(user: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor,
                         item_table: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
                         log_probs: torch.Tensor | None = None,
                         remove_accidental_hits: bool = False,
                         hard_negative_beta: float = 0.0) -> torch.Tensor:
    """Mean sampled-softmax loss.

    user (B, D) read-out vectors; target (B,) item ids; negatives (S,) shared item ids;
    item_table (N+1, D), or a function from ids to rows (a sparse embedding's lookup, so that the
    table's gradient stays row-sparse); log_probs (N+1,) sampling log-probabilities for log-Q correction.
    """
    if isinstance(item_table, torch.Tensor):
        target_emb = item_table[target]  # (B, D)
        neg_emb = item_table[negatives]  # (S, D)
    else:
        rows = item_table(torch.cat([target, negatives]))  # (B + S, D), one gather
        target_emb, neg_emb = rows[:len(target)], rows[len(target):]  # (B, D), (S, D)
    pos_logit = (user * target_emb).sum(-1, keepdim=True)  # (B, 1)
    neg_logit = user @ neg_emb.T  # (B, S)
    if log_probs is not None:
        pos_logit = pos_logit - log_probs[target].unsqueeze(1)
        neg_logit = neg_logit - log_probs[negatives].unsqueeze(0)
    if remove_accidental_hits:
        hit = negatives.unsqueeze(0) == target.unsqueeze(1)  # (B, S)
        neg_logit = neg_logit.masked_fill(hit, float("-inf"))
    if hard_negative_beta == 0.0:
        logits = torch.cat([pos_logit, neg_logit], dim=1)  # (B, 1 + S)
        return F.cross_entropy(logits, torch.zeros(len(target), dtype=torch.long, device=logits.device))
    # REMI: negatives weighted by softmax(beta * logit) rescaled to mean 1 (kept in the graph, as in
    # the reference code); loss = -log(e^pos / (e^pos + sum_j w_j e^neg_j)). With
    # log w_j = beta n_j - LSE(beta n) + log S, the weighted mass is the closed form
    # LSE((1 + beta) n) - LSE(beta n) + log S (_WeightedNegativeMass): the same function and gradient.
    pos = pos_logit.squeeze(1)  # (B,)
    log_neg_mass = _WeightedNegativeMass.apply(neg_logit, float(hard_negative_beta))  # (B,)
    log_denominator = torch.logaddexp(pos, log_neg_mass)  # (B,)
    return (log_denominator - pos).mean()
