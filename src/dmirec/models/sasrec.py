"""SASRec: a causal Transformer over the history, its last position as the single user vector.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. The input is the item
embedding plus a learned position embedding, ``E[s] + P`` (padding positions zeroed), with dropout;
``num_blocks`` self-attention blocks follow, each

    x = x + Dropout(MHA(LN(x)))          causal: position i attends to positions <= i
    x = x + Dropout(FFN(LN(x)))          FFN = Linear(D, D) -> ReLU -> Dropout -> Linear(D, D)

that is, layer normalisation *before* each sub-layer (pre-LN, the paper's ``x + Dropout(g(LN(x)))``),
with a final LayerNorm after the last block (as the paper's public code). The hidden state at the
last position (the last column: histories are left-padded, the most recent item is at ``L - 1``)
is the user vector, K = 1: ``interests`` returns V (B, 1, D) and W (B, 1, L), W being the last
position's attention over the history in the last block, averaged over heads (zero at padding).

The attention is ``nn.MultiheadAttention`` under a per-history boolean mask: causal, and padding
keys blocked. A padding query (a position before the first real item) has no real key at or before
it; it attends to itself only, so no row of the softmax is empty, and its output never reaches a
real position (its key is blocked). An all-padding history gives a zero user vector.

The item table is the library's shared input/output table (:class:`RetrievalModel`): the score of
item ``j`` is ``<u, E[j]>``, as for every model here. Training is the library's: one target per
history (its next item) against shared sampled negatives, scored at the last position only. The
paper instead scores every position of the sequence against its next item with a binary
cross-entropy and one negative per position; that and the rest of the differences are listed in
docs/sasrec.md.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .base import RetrievalModel, reference_init


def attention_block_mask(mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Boolean mask of the attention logits, True where a query may NOT look: (B * H, L, L).

    Query ``i`` may look at key ``j`` when ``j <= i`` and ``j`` is a real item; every query may
    look at itself (padding queries would otherwise have an empty row)."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # (L, L)
    allowed = causal.unsqueeze(0) & mask.unsqueeze(1)  # (B, L, L): key j real and j <= i
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=mask.device).unsqueeze(0)  # (B, L, L)
    return (~allowed).repeat_interleave(num_heads, dim=0)  # (B * H, L, L)


class SASRecBlock(nn.Module):
    """One pre-LN Transformer block: causal multi-head self-attention, then the point-wise FFN."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.attn_drop = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, block_mask: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, L, D) -> (B, L, D), and the head-averaged attention (B, L, L) when asked."""
        q = self.attn_norm(x)  # (B, L, D)
        h, weights = self.attn(q, q, q, attn_mask=block_mask, need_weights=need_weights,
                               average_attn_weights=True)  # (B, L, D), (B, L, L) or None
        x = x + self.attn_drop(h)  # (B, L, D)
        x = x + self.ffn(self.ffn_norm(x))  # (B, L, D)
        return x, weights


class SASRec(RetrievalModel):
    def __init__(self, num_items: int, embedding_dim: int = 64, seq_len: int = 20, num_blocks: int = 2,
                 num_heads: int = 1, dropout: float = 0.2):
        super().__init__(num_items, embedding_dim)
        if embedding_dim % num_heads:
            raise ValueError(f"sasrec: embedding_dim {embedding_dim} is not divisible by sasrec_heads {num_heads}")
        self.num_interests = 1
        self.seq_len = seq_len
        self.num_heads = num_heads
        self.positions = nn.Parameter(torch.empty(1, seq_len, embedding_dim))
        reference_init(self)  # the item table and the positions as every model here: Kaiming-normal
        self.input_drop = nn.Dropout(dropout)
        # the blocks keep PyTorch's own initialisation of their layers (LayerNorm 1/0, Xavier for the projections)
        self.blocks = nn.ModuleList(SASRecBlock(embedding_dim, num_heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(embedding_dim)

    @classmethod
    def from_config(cls, cfg: Config, num_items: int) -> "SASRec":
        if cfg.num_interests != 1:
            raise ValueError(f"sasrec has a single interest; got num_interests={cfg.num_interests}")
        return cls(num_items, cfg.embedding_dim, cfg.seq_len, cfg.sasrec_blocks, cfg.sasrec_heads, cfg.sasrec_dropout)

    def hidden_states(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of every position after the last block (B, L, D) and the last block's
        head-averaged attention (B, L, L)."""
        keep = mask.unsqueeze(-1).to(self.positions.dtype)  # (B, L, 1)
        x = (self.item_emb(history) + self.positions[:, -history.shape[1]:]) * keep  # (B, L, D)
        x = self.input_drop(x)  # (B, L, D)
        block_mask = attention_block_mask(mask, self.num_heads)  # (B * H, L, L)
        weights = None
        for i, block in enumerate(self.blocks):
            x, weights = block(x, block_mask, need_weights=i == len(self.blocks) - 1)  # (B, L, D)
            x = x * keep  # (B, L, D) padding positions stay zero
        if weights is None:  # no blocks: the embeddings themselves, attention on the position itself
            weights = torch.eye(history.shape[1], dtype=x.dtype, device=x.device).expand(history.shape[0], -1, -1)
        return self.final_norm(x), weights  # (B, L, D), (B, L, L)

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, weights = self.hidden_states(history, mask)  # (B, L, D), (B, L, L)
        real = mask.any(dim=1, keepdim=True).to(states.dtype)  # (B, 1): 0 for an all-padding history
        user = states[:, -1:] * real.unsqueeze(-1)  # (B, 1, D)
        last = weights[:, -1:] * mask.unsqueeze(1).to(weights.dtype)  # (B, 1, L) zero at padding
        return user, last  # (B, 1, D), (B, 1, L)
