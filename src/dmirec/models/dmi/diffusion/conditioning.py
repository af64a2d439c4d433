"""What DMI's denoiser reads: conditioning sources, each a small function returning key tokens.

Every source gives ``keys (B, K, M_s, D)`` and ``mask (B, K, M_s)`` (True = a real token) for the
K interests of B users; :func:`concat_sources` joins the sources along the token axis and flattens
to the denoiser's ``(B*K, M, D)`` / ``(B*K, M)`` rows. Sources:

* :func:`pruned_items`: the interest's own most relevant history items (the figure's "item
  pruning"): the top-m positions by the item-to-interest weight, a threshold, or all.
* :func:`neighbour_interests`: the n interests of other (training) users nearest to this interest
  in the interest bank (:mod:`dmirec.collab.neighbours`): collaborative information.
* :func:`other_interests`: the same user's other K-1 interests.

Padding never becomes a real token: padded history positions and missing neighbours are masked.
"""

from __future__ import annotations

import torch


def prune_items(weights: torch.Tensor, mask: torch.Tensor, rule: str = "topm", m: int = 5
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which history positions guide each interest.

    weights (B, K, L) item-to-interest weights; mask (B, L) True on real items. Returns
    ``index (B, K, M)`` history positions and ``keep (B, K, M)`` True where the position is a
    real, selected item. Padded positions are never kept, whatever their weight.

    * ``topm``: the ``m`` real positions with the largest ``W_k`` (fewer when the history is
      shorter; ``M = min(m, L)``), in descending weight order.
    * ``threshold``: real positions with ``W_k > 1 / L_valid`` (``M = L``), plus the top one so
      that no interest of a non-empty history is left without items (uniform weights pass none).
    * ``none``: every real position (``M = L``, ``index = 0..L-1``).
    """
    b, k, length = weights.shape
    valid = mask.unsqueeze(1).expand(b, k, length)  # (B, K, L)
    if rule == "none":
        index = torch.arange(length, device=weights.device).expand(b, k, length)  # (B, K, L)
        return index, valid
    scores = weights.detach().masked_fill(~valid, float("-inf"))  # (B, K, L)
    if rule == "topm":
        top, index = scores.topk(min(m, length), dim=-1)  # (B, K, M)
        return index, valid.gather(-1, index)
    if rule == "threshold":
        top, index = scores.sort(dim=-1, descending=True, stable=True)  # (B, K, L)
        n_valid = mask.sum(-1).clamp(min=1).to(weights.dtype).view(b, 1, 1)  # (B, 1, 1)
        keep = valid.gather(-1, index) & (top > 1.0 / n_valid)  # (B, K, L)
        keep[..., 0] = valid.gather(-1, index[..., :1]).squeeze(-1)  # the top real item always
        return index, keep
    raise ValueError(f"unknown pruning rule {rule!r}")


def pruned_items(item_table, history: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,
                 rule: str = "topm", m: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The interest's pruned history items: keys (B, K, M, D), mask (B, K, M).

    ``item_table``: the (N + 1, D) table, or a function from ids to rows (``item_rows``)."""
    index, keep = prune_items(weights, mask, rule, m)  # (B, K, M), (B, K, M)
    b, k, count = index.shape
    ids = history.gather(1, index.reshape(b, k * count)).reshape(b, k, count)  # (B, K, M)
    rows = item_table[ids] if isinstance(item_table, torch.Tensor) else item_table(ids)  # (B, K, M, D)
    return rows, keep  # (B, K, M, D), (B, K, M)


def neighbour_interests(neighbours: torch.Tensor, found: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour interests from the bank as keys: ``neighbours (B, K, n, D)``, ``found (B, K, n)``."""
    return neighbours, found


def other_interests(vecs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each interest's K-1 sibling interests: keys (B, K, K-1, D), mask all True (B, K, K-1)."""
    b, k, d = vecs.shape
    if k == 1:
        return vecs.new_zeros(b, 1, 0, d), torch.zeros(b, 1, 0, dtype=torch.bool, device=vecs.device)
    others = torch.stack([torch.cat([vecs[:, :j], vecs[:, j + 1:]], dim=1) for j in range(k)], dim=1)  # (B, K, K-1, D)
    return others, torch.ones(b, k, k - 1, dtype=torch.bool, device=vecs.device)


def concat_sources(sources: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Join sources along the token axis and flatten users x interests: (B*K, M, D), (B*K, M)."""
    keys = torch.cat([s[0] for s in sources], dim=2)  # (B, K, M, D)
    mask = torch.cat([s[1] for s in sources], dim=2)  # (B, K, M)
    b, k, m, d = keys.shape
    return keys.reshape(b * k, m, d), mask.reshape(b * k, m)
