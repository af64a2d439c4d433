"""COIN: collaborative interest modelling (a baseline for DMI's collaborative variants).

Collaborative Interest Modeling in Recommender Systems (RecSys 2025), built on REMI's code and
protocol. Three parts, as its public code does them:

* **Encoder.** Item embeddings ``x`` (padding masked) plus learned positions go through one
  Transformer encoder layer (one head, padding as key mask) and a bidirectional GRU; the
  resulting ``(B, L, 2D)`` context only feeds the attention logits ``W2 tanh(W1 h)`` (2D -> 4D ->
  K, no bias), and each interest is the attention-weighted sum of the *raw* item embeddings:
  ``V = softmax_L(logits) x``. Training uses REMI's scheme (hard negatives, routing
  regulariser) with the hard argmax read-out of the unrefined interest.
* **Bank contrastive loss** (``coin_contrast_weight``, temperature ``coin_temperature``): the
  anchor is the selected interest (unit length). Bank users are scored by the cosine of the
  *target item's* embedding with their interests: the n best users (their best interest) are
  positives, the ``coin_negatives`` users whose worst interest is least similar (that worst
  interest) are negatives; per positive an InfoNCE term over all candidates. As in COIN's code
  the terms are averaged over all ``B * (n + negatives)`` candidate slots, which scales the loss
  by ``n / (n + negatives)``; a random ``coin_bank_sample`` users are scored per step.
* **Inference rule**: the neighbour rule of :mod:`dmirec.neighbours` with ``neighbour_alpha`` and
  ``neighbours`` (``v_k + alpha * cosine-weighted mean of the n nearest bank interests``).

Where we differ from COIN's code (see README, COIN): the bank holds one entry per training user
(its last ``seq_len`` items), rebuilt from the current model at every validation, instead of up
to ten prefix snapshots per user written after every step; the user's own entry is left out of
the contrastive candidates; the contrastive loss is on from the first bank (step 0) rather than
from the second epoch; the GRU runs on left-padded histories under a padding mask in the
attention logits only (the reference runs it over right padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import RetrievalModel, TrainOutput, argmax_readout, reference_init
from .comirec_sa import attention_logits


class COIN(RetrievalModel):
    def __init__(self, num_items: int, embedding_dim: int, num_interests: int, seq_len: int, gru_layers: int,
                 ff_dim: int, contrast_weight: float, temperature: float, bank_sample: int, negatives: int,
                 neighbours: int):
        """Settings come from the config (:meth:`from_config`); no defaults of its own."""
        super().__init__(num_items, embedding_dim)
        self.num_interests = num_interests
        self.seq_len = seq_len
        self.contrast_weight = contrast_weight
        self.temperature = temperature
        self.bank_sample = bank_sample
        self.num_negatives = negatives
        self.num_positives = neighbours
        self.positions = nn.Parameter(torch.empty(1, seq_len, embedding_dim))
        self.w1 = nn.Linear(2 * embedding_dim, 4 * embedding_dim, bias=False)
        self.w2 = nn.Linear(4 * embedding_dim, num_interests, bias=False)
        reference_init(self)  # Kaiming-normal for the table, positions and W1/W2, before the context layers
        self.context = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(embedding_dim, nhead=1, dim_feedforward=ff_dim, dropout=0.0, batch_first=True),
            num_layers=1, enable_nested_tensor=False)
        self.gru = nn.GRU(embedding_dim, embedding_dim, num_layers=gru_layers, batch_first=True, bidirectional=True)
        # the context layers' own initialisation, as COIN's code sets it
        nn.init.xavier_uniform_(self.gru.weight_ih_l0)
        nn.init.xavier_uniform_(self.gru.weight_hh_l0)
        for module in self.context.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, cfg, num_items: int) -> "COIN":
        return cls(num_items, cfg.embedding_dim, cfg.num_interests, cfg.seq_len, cfg.coin_gru_layers, cfg.coin_ff_dim,
                   cfg.coin_contrast_weight, cfg.coin_temperature, cfg.coin_bank_sample, cfg.coin_negatives,
                   cfg.neighbours)

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.item_emb(history) * mask.unsqueeze(-1)  # (B, L, D)
        h = x + self.positions[:, -history.shape[1]:]  # (B, L, D)
        empty = ~mask.any(dim=1)  # (B,) an all-padding row would make the encoder's softmax NaN
        key_pad = ~mask & ~empty.unsqueeze(1)  # (B, L)
        h = self.context(h, src_key_padding_mask=key_pad)  # (B, L, D)
        h, _ = self.gru(h)  # (B, L, 2D)
        logits = attention_logits(self.w1, self.w2, h, mask)  # (B, K, L), -inf at padding
        weights = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)  # (B, K, L)
        return weights @ x, weights  # (B, K, D), (B, K, L)

    def contrastive_loss(self, anchor: torch.Tensor, target_emb: torch.Tensor, users: torch.Tensor | None
                         ) -> torch.Tensor:
        """COIN's bank InfoNCE for anchors (B, D) given the targets' embeddings (B, D)."""
        bank = getattr(self, "bank", None)
        if bank is None or bank.size == 0 or self.contrast_weight == 0:
            return anchor.new_zeros(())
        size = bank.size
        pick = torch.randperm(size, device=anchor.device)[:self.bank_sample] if size > self.bank_sample else \
            torch.arange(size, device=anchor.device)  # (S,)
        cand = F.normalize(bank.vectors[pick], dim=-1)  # (S, K, D)
        scores = torch.einsum("bd,skd->bsk", F.normalize(target_emb.detach(), dim=-1), cand)  # (B, S, K)
        best, best_k = scores.max(dim=2)  # (B, S)
        worst, worst_k = scores.min(dim=2)  # (B, S)
        if users is not None:  # never the user's own entry
            own = bank.owners[pick].unsqueeze(0) == users.unsqueeze(1)  # (B, S)
            best = best.masked_fill(own, float("-inf"))
            worst = worst.masked_fill(own, float("inf"))
        n_pos = min(self.num_positives, len(pick))
        n_neg = min(self.num_negatives, len(pick))
        pos_s, pos_i = best.topk(n_pos, dim=1)  # (B, n)
        neg_s, neg_i = (-worst).topk(n_neg, dim=1)  # (B, m)
        rows = torch.arange(anchor.shape[0], device=anchor.device).unsqueeze(1)
        pos = cand[pos_i, best_k[rows, pos_i]]  # (B, n, D)
        neg = cand[neg_i, worst_k[rows, neg_i]]  # (B, m, D)
        a = F.normalize(anchor, dim=-1)  # (B, D)
        logits = torch.einsum("bd,bcd->bc", a, torch.cat([pos, neg], dim=1)) / self.temperature  # (B, n + m)
        valid = torch.cat([torch.isfinite(pos_s), torch.isfinite(neg_s)], dim=1)  # (B, n + m)
        logits = logits.masked_fill(~valid, float("-inf"))
        log_norm = torch.logsumexp(logits, dim=1, keepdim=True)  # (B, 1)
        terms = (log_norm - logits[:, :n_pos]) * torch.isfinite(pos_s)  # (B, n)
        return terms.sum() / (anchor.shape[0] * (n_pos + n_neg))

    def train_forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                      users: torch.Tensor | None = None) -> TrainOutput:
        vecs, weights = self.interests(history, mask)  # (B, K, D), (B, K, L)
        target_emb = self.item_emb(target)  # (B, D)
        user = argmax_readout(vecs, target_emb)  # (B, D)
        aux = self.routing_loss(weights) + self.contrast_weight * self.contrastive_loss(user, target_emb, users)
        return TrainOutput(user=user, interests=vecs, weights=weights, aux_loss=aux)
