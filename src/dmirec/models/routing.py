"""Capsule dynamic routing shared by ComiRec-DR and MIND, and the label-aware read-out.

Behaviour-to-interest routing (Sabour et al. 2017, as used by Li et al., CIKM 2019 and Cen et al.,
KDD 2020). Every history item ``e_l`` is mapped to one prediction per interest,
``u_kl = W_kl e_l``, and ``routing_iters`` rounds of agreement refine the routing logits
``b_kl`` (B, K, L):

    c = softmax(b) ; masked to 0 on padding
    s_k = sum_l c_kl u_kl ;  v_k = squash(s_k) = |s|^2 / (1 + |s|^2) * s / |s|
    b_kl += <u_kl, v_k>        (all rounds but the last)

The maps ``W_kl`` come in two kinds (``bilinear``):

* ``"per_position"`` (ComiRec-DR): a weight tensor of shape ``(1, seq_len, K * D, D)``, one
  ``(K * D, D)`` map per history position, as in the public ComiRec/REMI code. It is kept in
  that 4-d shape so that :func:`~dmirec.models.base.reference_init` gives it the reference's
  Kaiming-normal scale (fan-in ``seq_len * K * D * D``, hence very small initial predictions).
  Our histories are left-padded, so the map of position ``seq_len - 1`` always sees the most
  recent item (the reference right-pads, so its position index counts from the oldest item of
  the window); the model class is the same, only the position labels differ.
* ``"shared"`` (MIND): one ``D x D`` linear map shared by every position and interest.

Stop-gradient: the predictions enter every round but the last detached (``u.detach()``), so the
bilinear map learns only through the last round, and the routing logits, hence the returned
coefficients, carry no gradient. This is what both the original TensorFlow code and the PyTorch
ports do. (Those codes hard-code the switch as ``i < 2``; we use ``i < routing_iters - 1``,
which is the same for the default of 3 iterations.)

Initial logits (``init_logits``): zeros for ComiRec-DR; standard normal draws for MIND, fresh on
every forward pass, evaluation included, from torch's global generator (so ``torch.manual_seed``
reproduces them). This makes the reference MIND's evaluation stochastic; we keep it because the
reference numbers were produced that way. (The TensorFlow code draws a truncated normal.)

Normalisation axis (``axis``):

* ``"positions"`` (default): the softmax runs over the L history positions, as in the PyTorch
  ports, including the REMI reference code that produced the numbers in BENCHMARKS.md; that is
  why it is the default. As in those ports, the softmax runs over all L slots and padding is
  zeroed *afterwards*: padded slots keep their initial logit (0 for DR, a normal draw for
  MIND, because their predictions are 0) and take their share of the mass, so a short history's
  coefficients sum to less than 1. Set ``renormalise=True`` to exclude padding from the softmax
  instead (not the reference behaviour).
* ``"interests"``: the softmax runs over the K interests for each position, as in the original
  TensorFlow ComiRec/MIND code and the capsule-network papers (each item distributes itself
  over the interests). Padding is zeroed afterwards; no mass leaks since each position is
  normalised on its own.

Padding: history embeddings are zeroed on padding before the maps (so padded item ids never
matter), and the returned coefficients are exactly zero on padded positions.
"""

from __future__ import annotations

import torch
from torch import nn

BILINEAR = ("per_position", "shared")
AXES = ("positions", "interests")
INITS = ("zeros", "normal")


def squash(s: torch.Tensor) -> torch.Tensor:
    """Capsule squash along the last axis, with the reference's epsilon inside the root."""
    norm2 = (s * s).sum(dim=-1, keepdim=True)  # (..., 1)
    return norm2 / (1.0 + norm2) / torch.sqrt(norm2 + 1e-9) * s


def label_aware_readout(interests: torch.Tensor, target_emb: torch.Tensor, power: float) -> torch.Tensor:
    """MIND's label-aware attention: ``softmax_k((V_k . e)^p)``-weighted sum of interests, (B, D).

    interests (B, K, D), target_emb (B, D). An integral ``power`` uses the plain power (as the
    papers and the reference, whose soft read-out uses p = 1; an even p rewards large negative
    scores too); a fractional one uses ``sign(x) |x|^p``, since a fractional power of a negative
    score is undefined.
    """
    scores = torch.einsum("bkd,bd->bk", interests, target_emb)  # (B, K)
    if float(power).is_integer():
        scores = scores.pow(int(power))  # (B, K)
    else:
        scores = scores.sign() * scores.abs().pow(power)  # (B, K)
    att = torch.softmax(scores, dim=1)  # (B, K)
    return torch.einsum("bk,bkd->bd", att, interests)  # (B, D)


class CapsuleRouting(nn.Module):
    """Dynamic routing from L masked item embeddings to K interest capsules.

    forward(emb (B, L, D), mask (B, L) bool) -> V (B, K, D), W (B, K, L) where W are the final
    routing coefficients (zero on padding, no gradient) and V the squashed capsules (optionally
    passed through a bias-free ReLU layer, MIND's ``relu_layer``).
    """

    def __init__(self, embedding_dim: int, num_interests: int, seq_len: int, bilinear: str = "per_position",
                 routing_iters: int = 3, axis: str = "positions", init_logits: str = "zeros",
                 relu_layer: bool = False, renormalise: bool = False):
        super().__init__()
        if bilinear not in BILINEAR:
            raise ValueError(f"bilinear must be one of {BILINEAR}, got {bilinear!r}")
        if axis not in AXES:
            raise ValueError(f"routing axis must be one of {AXES}, got {axis!r}")
        if init_logits not in INITS:
            raise ValueError(f"init_logits must be one of {INITS}, got {init_logits!r}")
        if routing_iters < 1:
            raise ValueError(f"routing_iters must be >= 1, got {routing_iters}")
        self.embedding_dim = embedding_dim
        self.num_interests = num_interests
        self.seq_len = seq_len
        self.bilinear = bilinear
        self.routing_iters = routing_iters
        self.axis = axis
        self.init_logits = init_logits
        self.renormalise = renormalise
        if bilinear == "per_position":
            self.w = nn.Parameter(torch.empty(1, seq_len, num_interests * embedding_dim, embedding_dim))
        else:
            self.linear = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.relu = nn.Sequential(nn.Linear(embedding_dim, embedding_dim, bias=False), nn.ReLU()) if relu_layer else None

    def predictions(self, emb: torch.Tensor) -> torch.Tensor:
        """Per-interest predictions ``u`` (B, K, L, D) of the masked item embeddings (B, L, D)."""
        b, length, d = emb.shape
        k = self.num_interests
        if self.bilinear == "per_position":
            if length > self.seq_len:
                raise ValueError(f"history length {length} exceeds the model's seq_len {self.seq_len}")
            w = self.w[0, self.seq_len - length:]  # (L, K*D, D), aligned to the most recent position
            hat = torch.einsum("bld,ljd->blj", emb, w)  # (B, L, K*D)
            return hat.view(b, length, k, d).transpose(1, 2)  # (B, K, L, D)
        return self.linear(emb).unsqueeze(1).expand(b, k, length, d)  # (B, K, L, D)

    def initial_logits(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        shape = (batch, self.num_interests, length)
        if self.init_logits == "normal":
            return torch.randn(shape, device=device)  # (B, K, L), global RNG, train and eval alike
        return torch.zeros(shape, device=device)  # (B, K, L)

    def coefficients(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Routing coefficients (B, K, L) from logits (B, K, L), zero on padding."""
        keep = mask.unsqueeze(1)  # (B, 1, L)
        if self.axis == "interests":
            c = torch.softmax(logits, dim=1)  # (B, K, L)
        elif self.renormalise:
            c = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=2)  # (B, K, L)
            c = torch.nan_to_num(c, nan=0.0)  # an all-padding history gives zeros
        else:
            c = torch.softmax(logits, dim=2)  # (B, K, L), padding slots share the mass (reference)
        return c.masked_fill(~keep, 0.0)  # (B, K, L)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = emb * mask.unsqueeze(-1).to(emb.dtype)  # (B, L, D)
        hat = self.predictions(emb)  # (B, K, L, D)
        hat_iter = hat.detach()  # (B, K, L, D) stop-gradient for all but the last round
        logits = self.initial_logits(emb.shape[0], emb.shape[1], emb.device)  # (B, K, L)
        for i in range(self.routing_iters):
            c = self.coefficients(logits, mask)  # (B, K, L)
            if i < self.routing_iters - 1:
                v = squash(torch.einsum("bkl,bkld->bkd", c, hat_iter))  # (B, K, D)
                logits = logits + torch.einsum("bkld,bkd->bkl", hat_iter, v)  # (B, K, L)
            else:
                v = squash(torch.einsum("bkl,bkld->bkd", c, hat))  # (B, K, D)
        if self.relu is not None:
            v = self.relu(v)  # (B, K, D)
        return v, c
