"""The diffusion process of DMI's refiner: noising, the prediction type, training draws, sampling.

One object owns everything that is diffusion rather than network or model (in the manner of
improved-diffusion's ``GaussianDiffusion``): the :class:`~dmirec.models.dmi.diffusion.schedule.NoiseSchedule`
arithmetic, ``q_sample``, how the denoiser's output becomes ``x0_hat`` (the prediction type), how
a training example is noised and denoised, and how evaluation samples (the one reverse loop is
:meth:`NoiseSchedule.reverse`). The denoiser network and its conditioning tokens come in as
arguments; the model wrapper (:mod:`dmirec.models.dmi.model`) wires backbone, process and fusion.

Prediction types (``prediction``):

* ``x0``: the network's output is ``x0_hat``.
* ``x0_residual`` (default): ``x0_hat = x_t / max(mean_coef(t), 0.1) + output``: the output is a
  correction to the identity guess of ``x0`` (the floor keeps very noisy steps from blowing the
  noise up). With a zero-initialised head an untrained refiner is the identity.

Samplers (``sampler``), both starting from the coarse vector, never from pure noise:

* ``posterior_mean`` (default, deterministic): start at the noise-free mean ``mean_coef(T') x0``
  and take posterior means ``E[x_t' | x_t, x0_hat]`` along the grid.
* ``ancestral``: a seeded forward draw at ``T'`` and DDPM ancestral steps (posterior mean plus
  posterior noise); the generator is seeded identically on every call, so evaluation stays
  reproducible.

Training draws (:meth:`training_sample`): ``t ~ U{1..T}`` per example and one denoiser call; with
``train_chain`` a start index into the evaluation grid per example and the chain unrolled to 0
(the exact computation evaluation runs); with ``no_noise`` (ablation) ``t = 0`` on the clean
vector, i.e. one plain conditioned pass.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ....config import CHOICES
from .schedule import NoiseSchedule

PREDICTIONS = CHOICES["prediction"]
SAMPLERS = CHOICES["sampler"]
_MIN_SKIP_COEF = 0.1

# denoiser network: (x_t (N, D), t (N,), keys (N, M, D), key_mask (N, M)) -> (N, D)
Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class DiffusionProcess(nn.Module):
    def __init__(self, schedule: NoiseSchedule, prediction: str, start_step: int, reverse_steps: int, sampler: str,
                 no_noise: bool, train_chain: bool, seed: int):
        """Every setting comes from the config (``Config``'s DMI keys); no defaults of its own."""
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
        self.schedule = schedule
        self.prediction = prediction
        self.start_step = start_step or schedule.steps
        self.reverse_steps = reverse_steps
        self.grid = schedule.timesteps(start_step, reverse_steps)  # descending steps of the chain
        self.sampler = sampler
        self.no_noise = no_noise
        self.train_chain = train_chain
        self.seed = seed

    @property
    def stochastic(self) -> bool:
        return self.sampler == "ancestral"

    def extra_repr(self) -> str:
        return (f"prediction={self.prediction!r}, grid={self.grid}, sampler={self.sampler!r}, "
                f"no_noise={self.no_noise}, train_chain={self.train_chain}")

    # ---- forward process and prediction type --------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of ``x_t ~ q(x_t | x0)`` (``t`` an int or per example ``(B,)``)."""
        return self.schedule.add_noise(x0, t, noise, generator)

    def predict_x0(self, net: Network, x_t: torch.Tensor, t: int | torch.Tensor, keys: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
        """``x0_hat (B, K, D)`` from ``x_t (B, K, D)``; keys/mask are the network's ``(B*K, M, ·)`` rows."""
        b, k, d = x_t.shape
        t = torch.as_tensor(t, dtype=torch.long, device=x_t.device).expand(b)  # (B,)
        out = net(x_t.reshape(b * k, d), t.repeat_interleave(k), keys, mask).view(b, k, d)  # (B, K, D)
        if self.prediction == "x0":
            return out
        skip = x_t / self.schedule.mean_coef(t, x_t).clamp(min=_MIN_SKIP_COEF)  # (B, K, D)
        return skip + out

    # ---- training ------------------------------------------------------------------------------
    def training_sample(self, net: Network, x0: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
                        ) -> torch.Tensor:
        """``x0_hat`` of one training draw for every row of ``x0 (B, K, D)`` (global RNG)."""
        denoise = lambda x, t: self.predict_x0(net, x, t, keys, mask)
        if self.no_noise:
            return denoise(x0, 0)
        b = x0.shape[0]
        if self.train_chain:
            grid = torch.tensor(self.grid, dtype=torch.long, device=x0.device)  # (S,)
            first = torch.randint(0, len(self.grid), (b,), device=x0.device)  # (B,) start index into the grid
            x = self.q_sample(x0, grid[first])  # (B, K, D)
            return self.schedule.reverse(x, denoise, self.start_step, self.reverse_steps, self.stochastic,
                                         first=first)
        t = torch.randint(1, self.schedule.steps + 1, (b,), device=x0.device)  # (B,)
        return denoise(self.q_sample(x0, t), t)

    # ---- sampling ------------------------------------------------------------------------------
    def sample(self, net: Network, x0: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The evaluation-time ``x0_hat`` for ``x0 (B, K, D)``: deterministic unless ``ancestral``
        (then drawn from ``generator``, by default one seeded with ``seed`` on every call)."""
        denoise = lambda x, t: self.predict_x0(net, x, t, keys, mask)
        if self.no_noise:
            return denoise(x0, 0)
        if self.stochastic and generator is None:
            generator = torch.Generator(device=x0.device).manual_seed(self.seed)
        x = self.schedule.start_state(x0, self.grid[0], self.stochastic, generator)  # (B, K, D)
        return self.schedule.reverse(x, denoise, self.grid[0], len(self.grid), self.stochastic, generator)
