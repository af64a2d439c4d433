"""ComiRec-SA: multi-interest extraction by self-attention.

Cen et al., "Controllable Multi-Interest Framework for Recommendation", KDD 2020.
``A = softmax_L(W2 tanh(W1 (E[s] + P)^T))`` gives K attention rows over the history, and
``V = A E[s]`` the K interests. Padding positions get zero attention. Parameters start from
Kaiming-normal draws, as in the public reference code.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import RetrievalModel, reference_init


def attention_logits(w1: nn.Linear, w2: nn.Linear, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``W2 tanh(W1 x)`` at the valid positions of ``x (B, L, D_in)``, -inf at padding: (B, K, L).

    Only the valid positions go through the two layers (packed), so the cost follows the number of
    real history items, not B x L: most short histories are mostly padding. The valid positions
    are found once (one ``nonzero`` forward, none backward: gathers and copies by flat index). ``tanh`` is computed as
    ``2 sigmoid(2z) - 1`` (the same function; torch's CPU sigmoid kernel is several times faster)."""
    valid = mask.reshape(-1).nonzero().squeeze(1)  # (V,) flat indices of the valid positions, found once
    z = w1(x.reshape(-1, x.shape[-1]).index_select(0, valid))  # (V, H)
    packed = w2(2.0 * torch.sigmoid(2.0 * z) - 1.0)  # (V, K): W2 tanh(W1 x)
    logits = packed.new_full((mask.numel(), packed.shape[-1]), float("-inf"))  # (B * L, K)
    logits = logits.index_copy(0, valid, packed).view(*mask.shape, -1)  # (B, L, K)
    return logits.transpose(1, 2)  # (B, K, L)


class ComiRecSA(RetrievalModel):
    def __init__(self, num_items: int, embedding_dim: int = 64, num_interests: int = 4, seq_len: int = 20,
                 hidden_factor: int = 4, add_positions: bool = True):
        super().__init__(num_items, embedding_dim)
        self.num_interests = num_interests
        self.seq_len = seq_len
        self.add_positions = add_positions
        self.positions = nn.Parameter(torch.empty(1, seq_len, embedding_dim)) if add_positions else None
        self.w1 = nn.Linear(embedding_dim, embedding_dim * hidden_factor, bias=False)
        self.w2 = nn.Linear(embedding_dim * hidden_factor, num_interests, bias=False)
        reference_init(self)

    def attention(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention weights (B, K, L) and the masked history embeddings (B, L, D)."""
        emb = self.item_emb(history) * mask.unsqueeze(-1)  # (B, L, D)
        x = emb + self.positions[:, -history.shape[1]:] if self.positions is not None else emb  # (B, L, D)
        logits = attention_logits(self.w1, self.w2, x, mask)  # (B, K, L)
        weights = torch.softmax(logits, dim=-1)  # (B, K, L)
        return torch.nan_to_num(weights, nan=0.0), emb  # an all-padding row gives zeros, not NaN

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, emb = self.attention(history, mask)  # (B, K, L), (B, L, D)
        return weights @ emb, weights  # (B, K, D), (B, K, L)
