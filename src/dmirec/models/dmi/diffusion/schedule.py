"""The noise schedule of DMI's diffusion refiner: forward noising and (strided) reverse steps.

Steps are numbered ``t = 0..T`` with ``t = 0`` the clean vector (``alpha_bar_0 = 1``).
``beta_t = s * schedule(t)`` for ``t = 1..T`` ("controllable" noise, docs/design.md 3.2): ``linear``
spaces ``beta`` evenly in ``[beta_start, beta_end]``; ``cosine`` takes the betas of the cosine
``alpha_bar`` curve (Nichol & Dhariwal 2021) and ignores ``beta_start``/``beta_end``. Betas are
clamped below 1; everything is computed in float64 and kept as float32 buffers.

Two readings of the forward process (``noise``):

* ``gaussian`` (default): ``v_t = sqrt(abar_t) v0 + sqrt(1 - abar_t) eps``, ``eps`` independent
  per dimension. The reverse step from ``t`` to any ``t' < t`` is the DDPM posterior
  ``q(v_t' | v_t, v0)`` of the marginal chain, written with ``alpha_bar`` ratios so that the same
  formula serves unit steps and DDIM-like strided jumps.
* ``dim_mask``: every dimension is independently replaced by a standard normal draw with
  probability ``1 - abar_t`` (more dimensions as ``t`` grows), and kept exactly otherwise; so
  ``E[v_t | v0] = abar_t v0``. Read as a chain in which a masked dimension stays masked with its
  noise value, the posterior keeps a still-masked dimension of ``v_t`` with probability
  ``r = (1 - abar_t') / (1 - abar_t)`` and reveals ``v0`` otherwise; its mean is
  ``r v_t + (1 - r) v0``.

In both readings a step to ``t' = 0`` returns ``v0_hat`` exactly, and a chain whose denoiser
returns the true ``v0`` stays on the noise-free mean ``mean_coef(t) v0`` when started there.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

IntOrTensor = int | torch.Tensor

_MAX_BETA = 0.999


def linear_betas(steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """``steps`` betas evenly spaced in ``[beta_start, beta_end]`` (float64)."""
    if steps == 1:
        return torch.tensor([beta_start], dtype=torch.float64)
    return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)


def cosine_betas(steps: int, offset: float = 0.008) -> torch.Tensor:
    """Betas of the cosine ``alpha_bar`` curve ``cos^2(((t/T + o) / (1 + o)) pi / 2)`` (float64)."""
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((grid + offset) / (1 + offset) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(min=1e-8, max=_MAX_BETA)


class NoiseSchedule(nn.Module):
    """Noise schedule with ``add_noise`` (forward) and ``step`` (reverse), for ``t`` in ``0..T``.

    Tensors of coefficients are non-persistent buffers (they follow ``.to(device)`` but are
    derived from the configuration, so they are not saved in checkpoints). ``t`` arguments are
    ints or integer tensors whose shape is a prefix of the data's shape (e.g. ``(B,)`` for
    ``(B, K, D)`` data); they broadcast over the remaining dimensions.
    """

    def __init__(self, steps: int = 10, kind: str = "linear", beta_start: float = 1e-4, beta_end: float = 2e-2,
                 scale: float = 1.0, noise: str = "gaussian"):
        super().__init__()
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        if kind not in ("linear", "cosine"):
            raise ValueError(f"unknown schedule kind {kind!r}")
        if noise not in ("gaussian", "dim_mask"):
            raise ValueError(f"unknown noise kind {noise!r}")
        if scale < 0:
            raise ValueError(f"noise scale must be >= 0, got {scale}")
        self.steps = steps
        self.kind = kind
        self.noise = noise
        self.scale = scale
        base = linear_betas(steps, beta_start, beta_end) if kind == "linear" else cosine_betas(steps)
        betas = (scale * base).clamp(min=0.0, max=_MAX_BETA)  # (T,)
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])  # (T+1,), beta_0 = 0
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)  # (T+1,), abar_0 = 1

        # pairwise reverse coefficients for a jump t -> t' (t' < t), float64 then float32
        n = steps + 1
        a_t = abar.view(n, 1).expand(n, n)  # [t, t']
        a_p = abar.view(1, n).expand(n, n)
        valid = torch.arange(n).view(n, 1) > torch.arange(n).view(1, n)  # t' < t
        one_minus_t = (1 - a_t).clamp(min=1e-300)
        ratio = a_t / a_p  # alpha of the jump
        beta_jump = 1 - ratio
        if noise == "gaussian":
            coef_v0 = a_p.sqrt() * beta_jump / one_minus_t
            coef_vt = ratio.sqrt() * (1 - a_p) / one_minus_t
            var = (beta_jump * (1 - a_p) / one_minus_t).clamp(min=0.0)
            keep = torch.zeros_like(var)
        else:
            keep = ((1 - a_p) / one_minus_t).clamp(0.0, 1.0)  # P(a masked dim stays masked)
            coef_vt = keep
            coef_v0 = 1 - keep
            var = torch.zeros_like(keep)
        # a "jump" with t' >= t (or t = 0, where there is no noise) just returns v0_hat
        degenerate = ~valid | (1 - a_t <= 0)
        coef_v0 = torch.where(degenerate, torch.ones_like(coef_v0), coef_v0)
        coef_vt = torch.where(degenerate, torch.zeros_like(coef_vt), coef_vt)
        var = torch.where(degenerate, torch.zeros_like(var), var)
        keep = torch.where(degenerate, torch.zeros_like(keep), keep)
        mean_coef = abar.sqrt() if noise == "gaussian" else abar

        self.register_buffer("betas", betas.float(), persistent=False)  # (T+1,)
        self.register_buffer("alphas", alphas.float(), persistent=False)  # (T+1,)
        self.register_buffer("alpha_bar", abar.float(), persistent=False)  # (T+1,)
        self.register_buffer("mean_coefs", mean_coef.float(), persistent=False)  # (T+1,)
        self.register_buffer("_coef_v0", coef_v0.float(), persistent=False)  # (T+1, T+1)
        self.register_buffer("_coef_vt", coef_vt.float(), persistent=False)  # (T+1, T+1)
        self.register_buffer("_std", var.sqrt().float(), persistent=False)  # (T+1, T+1)
        self.register_buffer("_keep", keep.float(), persistent=False)  # (T+1, T+1)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, kind={self.kind!r}, noise={self.noise!r}, scale={self.scale}"

    # ---- helpers --------------------------------------------------------------------------------
    def _index(self, t: IntOrTensor, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.long, device=like.device)

    @staticmethod
    def _bcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Append singleton dims so that ``coef`` (shape a prefix of ``like``'s) broadcasts."""
        return coef.reshape(coef.shape + (1,) * (like.dim() - coef.dim())).to(like.dtype)

    def _prev(self, t: torch.Tensor, t_prev: IntOrTensor | None) -> torch.Tensor:
        if t_prev is None:
            return (t - 1).clamp(min=0)
        return torch.as_tensor(t_prev, dtype=torch.long, device=t.device).expand_as(t)

    def mean_coef(self, t: IntOrTensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """``E[v_t | v0] = mean_coef(t) v0``: ``sqrt(abar_t)`` (gaussian) or ``abar_t`` (dim_mask)."""
        idx = torch.as_tensor(t, dtype=torch.long, device=self.mean_coefs.device)
        coef = self.mean_coefs[idx]
        return coef if like is None else self._bcast(coef.to(like.device), like)

    # ---- forward process ------------------------------------------------------------------------
    def add_noise(self, v0: torch.Tensor, t: IntOrTensor, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of ``v_t ~ q(v_t | v0)``; ``noise`` (same shape as v0) defaults to fresh N(0, 1)."""
        t = self._index(t, v0)
        if noise is None:
            noise = torch.randn(v0.shape, generator=generator, device=v0.device, dtype=v0.dtype)
        abar = self._bcast(self.alpha_bar[t], v0)
        if self.noise == "gaussian":
            return abar.sqrt() * v0 + (1 - abar).sqrt() * noise
        u = torch.rand(v0.shape, generator=generator, device=v0.device, dtype=v0.dtype)
        return torch.where(u < 1 - abar, noise, v0)

    def start_state(self, v0: torch.Tensor, t: IntOrTensor, stochastic: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Where a reverse chain at step ``t`` starts: the noise-free mean, or a forward draw."""
        if stochastic:
            return self.add_noise(v0, t, generator=generator)
        return self.mean_coef(t, v0) * v0

    # ---- reverse process ------------------------------------------------------------------------
    def posterior_mean(self, v0_hat: torch.Tensor, v_t: torch.Tensor, t: IntOrTensor,
                       t_prev: IntOrTensor | None = None) -> torch.Tensor:
        """Mean of ``q(v_t' | v_t, v0 = v0_hat)`` with ``t' = t_prev`` (default ``t - 1``)."""
        t = self._index(t, v_t)
        tp = self._prev(t, t_prev)
        return self._bcast(self._coef_v0[t, tp], v_t) * v0_hat + self._bcast(self._coef_vt[t, tp], v_t) * v_t

    def posterior_std(self, t: IntOrTensor, t_prev: IntOrTensor | None = None) -> torch.Tensor:
        """Standard deviation of the gaussian posterior (0 for ``dim_mask`` and for ``t' = 0``)."""
        t = torch.as_tensor(t, dtype=torch.long, device=self._std.device)
        return self._std[t, self._prev(t, t_prev)]

    def step(self, v0_hat: torch.Tensor, v_t: torch.Tensor, t: IntOrTensor, t_prev: IntOrTensor | None = None,
             noise: torch.Tensor | None = None, stochastic: bool = False,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One reverse step ``t -> t_prev`` (default ``t - 1``) given the denoiser's ``v0_hat``.

        Deterministic (the posterior mean) unless ``stochastic`` or ``noise`` is given. Gaussian:
        ``mean + std * noise``. dim_mask: each dimension keeps ``v_t`` with the posterior keep
        probability, else takes ``v0_hat``; ``noise`` is then read as the uniform draws in [0, 1).
        """
        t = self._index(t, v_t)
        tp = self._prev(t, t_prev)
        if noise is None and not stochastic:
            return self.posterior_mean(v0_hat, v_t, t, tp)
        if self.noise == "gaussian":
            if noise is None:
                noise = torch.randn(v_t.shape, generator=generator, device=v_t.device, dtype=v_t.dtype)
            return self.posterior_mean(v0_hat, v_t, t, tp) + self._bcast(self._std[t, tp], v_t) * noise
        u = noise if noise is not None else torch.rand(v_t.shape, generator=generator, device=v_t.device,
                                                       dtype=v_t.dtype)
        return torch.where(u < self._bcast(self._keep[t, tp], v_t), v_t, v0_hat)

    def timesteps(self, start: int = 0, count: int = 0) -> list[int]:
        """The descending steps a reverse chain visits: ``count`` (S) steps from ``start`` (T').

        ``start = 0`` means T and ``count = 0`` means ``start`` (every step). The grid is
        ``start - floor(i * start / count)`` for ``i = 0..S-1`` (DDIM-style even stride, exact
        when S divides T'); the chain then jumps from the last entry to 0.
        """
        start = start or self.steps
        count = count or start
        if not 1 <= start <= self.steps:
            raise ValueError(f"start step must be in 1..{self.steps}, got {start}")
        if not 1 <= count <= start:
            raise ValueError(f"reverse step count must be in 1..{start}, got {count}")
        return [start - (i * start) // count for i in range(count)]

    def reverse(self, v_start: torch.Tensor, denoise_fn: Callable[[torch.Tensor, int], torch.Tensor],
                start: int = 0, count: int = 0, stochastic: bool = False,
                generator: torch.Generator | None = None, first: torch.Tensor | None = None) -> torch.Tensor:
        """The reverse chain, the only one in the package: from ``v_start`` down to step 0.

        The chain visits :meth:`timesteps` ``(start, count)`` and jumps from the last entry to 0;
        ``denoise_fn(v_t, t)`` returns ``v0_hat``, and the result is the last ``v0_hat`` (the step
        to 0 returns it exactly). ``first (B,)``, when given, is each row's start index into the
        grid: a row stays as it is until its start is reached (training a chain from a start
        drawn per example), and no denoiser call is made while no row has started.
        """
        grid = self.timesteps(start, count)
        v = v_start
        for i, t in enumerate(grid):
            t_prev = grid[i + 1] if i + 1 < len(grid) else 0
            if first is None:
                v = self.step(denoise_fn(v, t), v, t, t_prev, stochastic=stochastic, generator=generator)
                continue
            active = first <= i  # (B,)
            if not bool(active.any()):
                continue
            stepped = self.step(denoise_fn(v, t), v, t, t_prev, stochastic=stochastic, generator=generator)
            v = torch.where(active.view((-1,) + (1,) * (v.dim() - 1)), stepped, v)
        return v
