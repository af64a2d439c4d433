"""DMI's denoiser network ``f(x_t, t, keys, key_mask) -> raw prediction`` (a network only).

``attention`` (default): the query is the noised vector ``x_t`` (one token per interest); the
keys and values are the conditioning tokens (:mod:`dmirec.models.dmi.diffusion.conditioning`: the
interest's pruned history items, and optionally neighbour interests, the user's other
interests) plus one diffusion-step token ``e_t = MLP(sinusoidal(t))``. ``blocks`` pre-norm
blocks of multi-head cross-attention and a feed-forward layer, each with a residual connection
and LayerNorm, then a linear head. The residual stream starts at ``x_t`` so the vector's
magnitude survives the blocks.

``mlp`` (the no-cross-attention ablation): the head reads ``[x_t, e_t]`` alone.

What the output means (``x0`` itself, or a correction to the identity guess of ``x0``) is the
diffusion process's prediction type (:class:`dmirec.models.dmi.diffusion.process.DiffusionProcess`);
``zero_init_head`` starts the head at exactly zero, which makes a residual prediction start as
the identity.

All rows run as one batch: ``x_t (N, D)``, ``t (N,)``, ``keys (N, M, D)``, ``key_mask (N, M)``
(True = a real key; masked keys get exactly zero attention, and a row with no real key and no
step token attends to nothing).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sin/cos features of integer steps: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    angles = t.float().unsqueeze(-1) * freqs  # (N, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (N, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb  # (N, dim)


class StepEmbedding(nn.Module):
    """``e_t = MLP(sinusoidal(t))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim))  # (N, D)


class CrossAttention(nn.Module):
    """Multi-head attention of one query token per row over M key/value tokens, with a key mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, m, d = memory.shape
        h = self.heads
        q = self.q(query).view(n, h, 1, d // h)  # (N, H, 1, d)
        k = self.k(memory).view(n, m, h, d // h).transpose(1, 2)  # (N, H, M, d)
        v = self.v(memory).view(n, m, h, d // h).transpose(1, 2)  # (N, H, M, d)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)  # (N, H, 1, M)
        keep = mask.view(n, 1, 1, m)  # (N, 1, 1, M)
        any_key = keep.any(dim=-1, keepdim=True)  # (N, 1, 1, 1)
        scores = scores.masked_fill(~keep, float("-inf"))
        scores = torch.where(any_key, scores, torch.zeros_like(scores))  # no real key: avoid NaN
        attn = torch.softmax(scores, dim=-1) * any_key  # (N, H, 1, M), exact zeros on masked keys
        ctx = (attn @ v).reshape(n, d)  # (N, D)
        return self.out(ctx)  # (N, D)


class DenoiserBlock(nn.Module):
    """Pre-norm cross-attention + feed-forward, each with a residual connection."""

    def __init__(self, dim: int, heads: int, ff_factor: int = 4):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_factor * dim), nn.GELU(), nn.Linear(ff_factor * dim, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(memory), mask)  # (N, D)
        return x + self.ff(self.norm_ff(x))  # (N, D)


class Denoiser(nn.Module):
    """x0-predicting denoiser of DMI; see the module docstring for the variants."""

    def __init__(self, dim: int, heads: int = 2, blocks: int = 1, kind: str = "attention", step_token: bool = True,
                 zero_init_head: bool = True, ff_factor: int = 4):
        super().__init__()
        if kind not in ("attention", "mlp"):
            raise ValueError(f"unknown denoiser kind {kind!r}")
        if blocks <= 0:
            raise ValueError(f"denoiser blocks must be positive, got {blocks}")
        self.dim = dim
        self.kind = kind
        self.use_step_token = step_token
        self.step_emb = StepEmbedding(dim) if step_token else None
        if kind == "attention":
            self.blocks = nn.ModuleList([DenoiserBlock(dim, heads, ff_factor) for _ in range(blocks)])
            self.head = nn.Linear(dim, dim)
        else:
            width = ff_factor * dim
            layers: list[nn.Module] = [nn.Linear(2 * dim if step_token else dim, width), nn.GELU()]
            for _ in range(blocks - 1):
                layers += [nn.Linear(width, width), nn.GELU()]
            self.mlp = nn.Sequential(*layers)
            self.head = nn.Linear(width, dim)
        if zero_init_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, v_t: torch.Tensor, t: torch.Tensor, keys: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``v_t (N, D)``, ``t (N,)`` steps, ``keys (N, M, D)``, ``key_mask (N, M)`` -> ``(N, D)``."""
        n = v_t.shape[0]
        step = self.step_emb(t.expand(n) if t.dim() == 0 else t) if self.step_emb is not None else None  # (N, D)
        if self.kind == "mlp":
            x = torch.cat([v_t, step], dim=-1) if step is not None else v_t  # (N, 2D) or (N, D)
            out = self.head(self.mlp(x))  # (N, D)
        else:
            if keys is None:
                keys = v_t.new_zeros(n, 0, self.dim)
                key_mask = torch.zeros(n, 0, dtype=torch.bool, device=v_t.device)
            elif key_mask is None:
                key_mask = torch.ones(keys.shape[:2], dtype=torch.bool, device=v_t.device)
            keys = keys * key_mask.unsqueeze(-1).to(keys.dtype)  # (N, M, D), masked keys zeroed
            if step is not None:
                memory = torch.cat([keys, step.unsqueeze(1)], dim=1)  # (N, M + 1, D)
                mem_mask = torch.cat([key_mask, key_mask.new_ones(n, 1)], dim=1)  # (N, M + 1)
            else:
                memory, mem_mask = keys, key_mask
            x = v_t
            for block in self.blocks:
                x = block(x, memory, mem_mask)  # (N, D)
            out = self.head(x)  # (N, D)
        return out  # (N, D)
