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
* **Inference rule**: the neighbour rule of :mod:`dmirec.collab.neighbours` with ``neighbour_alpha`` and
  ``neighbours`` (``v_k + alpha * cosine-weighted mean of the n nearest bank interests``).

Where we differ from COIN's code (see docs/models/collaborative.md, COIN): the bank holds one entry per training user
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
        """COIN's bank InfoNCE for anchors (B, D) given the targets' embeddings (B, D).

        Written for the CPU: the candidates are the bank's cached unit interests, each of the two
        scorings (target, anchor) is one matrix product against all S*K candidate interests, and the
        chosen logits are gathered from the anchor's scores, so no (B, negatives, D) block of
        vectors is ever copied (that gather was most of a step).
        """
        bank = getattr(self, "bank", None)
        if bank is None or bank.size == 0 or self.contrast_weight == 0:
            return anchor.new_zeros(())
        unit, owners = bank.unit_vectors(), bank.owners  # (U, K, D), (U,)
        if bank.size > self.bank_sample:
            pick = torch.randperm(bank.size, device=anchor.device)[:self.bank_sample]  # (S,)
            unit, owners = unit[pick], owners[pick]
        s, k, d = unit.shape
        flat = unit.reshape(s * k, d)  # (S*K, D) candidate c*K + j is user c's interest j
        sims = (F.normalize(target_emb.detach(), dim=-1) @ flat.T).view(-1, s, k)  # (B, S, K) target vs candidates
        per_k = sims.unbind(2)  # K x (B, S)
        best, worst = per_k[0].clone(), per_k[0].clone()  # (B, S) each user's best and worst interest
        for one in per_k[1:]:
            torch.maximum(best, one, out=best)
            torch.minimum(worst, one, out=worst)
        if users is not None:  # never the user's own entry
            own = owners.unsqueeze(0) == users.unsqueeze(1)  # (B, S)
            best = best.masked_fill(own, float("-inf"))
            worst = worst.masked_fill(own, float("inf"))
        n_pos = min(self.num_positives, s)
        n_neg = min(self.num_negatives, s)
        pos_s, pos_i = best.topk(n_pos, dim=1)  # (B, n)
        neg_s, neg_i = (-worst).topk(n_neg, dim=1, sorted=False)  # (B, m) their order does not matter
        pos_k = sims.gather(1, pos_i.unsqueeze(2).expand(-1, -1, k)).argmax(2)  # (B, n) which interest
        neg_k = sims.gather(1, neg_i.unsqueeze(2).expand(-1, -1, k)).argmin(2)  # (B, m)
        scores = F.normalize(anchor, dim=-1) @ flat.T  # (B, S*K) the anchor against every candidate interest
        logits = torch.cat([scores.gather(1, pos_i * k + pos_k), scores.gather(1, neg_i * k + neg_k)],
                           dim=1) / self.temperature  # (B, n + m)
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
