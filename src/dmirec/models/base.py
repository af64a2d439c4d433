"""The one model contract every retrieval model honours, and the shared argmax read-out.

A model maps a padded history ``(B, L)`` of item ids (0 = padding) and its mask to K interest
vectors and the item-to-interest weights:

    interests(history, mask) -> V (B, K, D), W (B, K, L)
    item_embeddings()        -> (N + 1, D), row 0 is the padding item and is never retrieved
    item_rows(ids)           -> (*ids.shape, D), the same rows through the embedding module
    user_vectors(history, mask) -> (B, K, D), the vectors used as retrieval queries (any history
                                  length; models override query_vectors, see RetrievalModel)
    train_forward(history, mask, target, users=None) -> TrainOutput
    bank_interests(history, mask) -> (B, K, D), what the interest bank stores for a training user

Any model may carry an interest bank (``model.bank``, :mod:`dmirec.collab.neighbours`; None
unless :func:`dmirec.models.build_model` attaches one because the config asks for it); its query
vectors then get the neighbour rule with ``model.neighbour_alpha`` and ``model.neighbours``. ``users`` in
``train_forward`` are the batch's train-split row ids, so that a model reading the bank can
leave the user's own entry out.

Models know nothing about training loops, files or HTTP.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..collab.neighbours import InterestBank, neighbour_rule
from .remi import routing_regularizer

#: Rows per block of the blocked table initialisation (:func:`blocked_table_rows`).
TABLE_INIT_BLOCK = 65_536
_table_device: torch.device | None = None  # where RetrievalModel puts its item table (None: the default)


@contextlib.contextmanager
def item_table_on_meta():
    """Models built inside get their item table on the meta device: shapes only, no memory and no
    draw from the global generator (a sharded run, or a blocked initialisation, fills it after)."""
    global _table_device
    before, _table_device = _table_device, torch.device("meta")
    try:
        yield
    finally:
        _table_device = before


def blocked_table_rows(seed: int, dim: int, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of the blocked initial item table: ``(stop - start, D)`` float32.

    The distribution is the reference's Kaiming-normal for an ``(N + 1, D)`` table, N(0, 2 / D),
    with row 0 (padding) zero; block ``j`` (rows ``j * TABLE_INIT_BLOCK`` onwards) comes from its
    own generator seeded by ``(seed, j)``, so any process draws any rows alone, the result does not
    depend on N or on who draws it, and memory is bounded by one block."""
    out = torch.empty(max(stop - start, 0), dim)
    std = math.sqrt(2.0 / dim)
    for j in range(start // TABLE_INIT_BLOCK, -(-stop // TABLE_INIT_BLOCK) if stop > start else 0):
        b0 = j * TABLE_INIT_BLOCK
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, j]).generate_state(1, np.uint64)[0] >> 1))
        block = torch.randn(TABLE_INIT_BLOCK, dim, generator=gen).mul_(std)  # (block rows, D)
        lo, hi = max(start, b0), min(stop, b0 + TABLE_INIT_BLOCK)
        out[lo - start:hi - start] = block[lo - b0:hi - b0]
    if start == 0 and stop > 0:
        out[0] = 0.0  # padding
    return out


def fill_blocked_table(model: nn.Module, seed: int) -> None:
    """Give every item table left on the meta device (:func:`item_table_on_meta`) its blocked
    initial rows (:func:`blocked_table_rows`), in memory on the CPU."""
    for module in model.modules():
        if isinstance(module, RetrievalModel) and module.item_emb.weight.is_meta:
            rows, dim = module.item_emb.weight.shape
            module.item_emb.to_empty(device="cpu")
            with torch.no_grad():
                module.item_emb.weight.copy_(blocked_table_rows(seed, dim, 0, rows))


@dataclass
class TrainOutput:
    """What the training loop needs from one forward pass."""

    user: torch.Tensor  # (B, D) read-out vector scored against the target and the negatives
    interests: torch.Tensor  # (B, K, D) the vectors the read-out chose from
    weights: torch.Tensor  # (B, K, L) item-to-interest weights (attention / routing)
    aux_loss: torch.Tensor  # scalar added to the retrieval loss: the model's own terms and REMI's routing regulariser


def argmax_readout(interests: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
    """Pick, per user, the interest with the largest inner product with the target: (B, D)."""
    scores = torch.einsum("bkd,bd->bk", interests, target_emb)  # (B, K)
    best = scores.argmax(dim=1)  # (B,)
    return interests[torch.arange(interests.shape[0], device=interests.device), best]  # (B, D)


class RetrievalModel(nn.Module):
    """Base class: an item embedding table plus the contract above.

    Subclasses implement :meth:`interests`. The default :meth:`train_forward` is the hard argmax
    read-out of ComiRec; the default :meth:`query_vectors` returns the interests themselves (with
    the neighbour rule when there is a bank). :meth:`user_vectors`, the entry point of evaluation
    and serving, accepts histories longer than the configured ``seq_len`` (``history_len``, set by
    :func:`dmirec.models.build_model`) and keeps their last ``seq_len`` items before calling
    :meth:`query_vectors`: models override ``query_vectors``, never ``user_vectors``.
    """

    history_len: int | None = None
    # weight of REMI's routing regulariser in aux_loss: cfg.routing_reg, set by build_model (and, in
    # a data-parallel run, times the world size by dmirec.training.strategy, as each rank sums over its users)
    routing_reg: float = 0.0
    # the neighbour rule's settings, read only when the model has a bank (dmirec.models.attach_bank)
    neighbour_alpha: float = 0.0
    neighbours: int = 0

    def __init__(self, num_items: int, embedding_dim: int):
        super().__init__()
        self.num_items = num_items  # real items are 1..num_items
        self.embedding_dim = embedding_dim
        self.item_emb = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0, device=_table_device)
        self.bank: InterestBank | None = None  # the interest bank, when the config asks for one (attach_bank)

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight  # (N + 1, D)

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the item table through the embedding module (sparse gradients when it is sparse)."""
        return self.item_emb(ids)  # (*ids.shape, D)

    def user_vectors(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The retrieval queries ``(B, K, D)`` of left-padded histories of any length: one longer
        than ``history_len`` keeps its last ``history_len`` columns (its most recent items)."""
        keep = self.history_len
        if keep and history.shape[-1] > keep:
            history, mask = history[..., -keep:], mask[..., -keep:]  # (B, L)
        return self.query_vectors(history, mask)

    def query_vectors(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The retrieval queries of histories of at most ``history_len`` items (what models override)."""
        return self.with_neighbours(self.interests(history, mask)[0])  # (B, K, D)

    def bank_interests(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.interests(history, mask)[0]  # (B, K, D)

    def with_neighbours(self, vecs: torch.Tensor) -> torch.Tensor:
        """The neighbour rule on query vectors (the vectors themselves without a bank or with alpha 0)."""
        if self.bank is None:
            return vecs
        return neighbour_rule(vecs, self.bank, self.neighbour_alpha, self.neighbours)

    def train_forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                      users: torch.Tensor | None = None) -> TrainOutput:
        vecs, weights = self.interests(history, mask)  # (B, K, D), (B, K, L)
        target_emb = self.item_emb(target)  # (B, D)
        user = argmax_readout(vecs, target_emb)  # (B, D)
        return TrainOutput(user=user, interests=vecs, weights=weights, aux_loss=self.routing_loss(weights))

    def routing_loss(self, weights: torch.Tensor) -> torch.Tensor:
        """REMI's routing regulariser on W (B, K, L) times ``routing_reg``, a sum over the batch's
        users; part of every model's ``aux_loss`` (a zero scalar when off)."""
        if self.routing_reg <= 0:
            return weights.new_zeros(())

        return self.routing_reg * routing_regularizer(weights, self.embedding_dim)

    @property
    def trainable(self) -> bool:
        """False for models with nothing to learn (most-popular)."""
        return True


def reference_init(module: nn.Module) -> None:
    """Kaiming-normal initialisation of every parameter, as the public ComiRec/REMI code does.

    The padding row of the item table is zeroed afterwards (it is masked out anyway).
    """
    for param in module.parameters():
        if param.dim() >= 2:
            nn.init.kaiming_normal_(param)
        else:
            nn.init.zeros_(param)
    item_emb = getattr(module, "item_emb", None)
    if isinstance(item_emb, nn.Embedding) and not item_emb.weight.is_meta:
        with torch.no_grad():
            item_emb.weight[0].zero_()
