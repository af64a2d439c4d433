"""DMI: diffusion refinement of the interests of any multi-interest backbone.

Le et al., "Diffusion Model for Interest Refinement in Multi-Interest Recommendation", 2025
(arXiv 2502.05561); the spec this follows is DESIGN.md 1-8.

The backbone gives coarse interests ``V (B, K, D)`` and item-to-interest weights ``W (B, K, L)``.
Each interest is diffused (``v0 = stopgrad(V_k) / c`` with ``c`` a detached running RMS when
``normalize_scale``), denoised by a cross-attention denoiser whose keys are the interest's own
pruned history items plus a step token, rescaled by ``c``, and fused with the original:
``u_k = eta * v0_hat_k + (1 - eta) * V_k`` (the skip path keeps the backbone's gradient).

* Training: ``t ~ U{1..T}`` per example and one denoiser call (``train_chain``: a start step is
  drawn from the evaluation grid and the chain is unrolled from it to 0, the exact computation
  evaluation runs); ``t = 0`` and no noise under ``no_noise``. Argmax read-out of ``u`` against
  the target, and ``aux_loss = recon_weight * mean((v0_hat - stopgrad(v0))^2)`` in the
  normalised space. ``TrainOutput.weights`` is the backbone's ``W`` (REMI's routing regulariser).
* Evaluation / serving (:meth:`user_vectors`): deterministic by default, starting from the
  noise-free mean ``mean_coef(T') v0`` and taking S posterior-mean steps to 0; with
  ``stochastic_reverse`` the start and the steps are drawn from a generator seeded identically
  on every call. ``no_noise``: one denoiser call at ``t = 0`` on ``v0``.
* ``eta = 0`` short-circuits to the backbone (no refiner call anywhere): the ablation "no
  diffusion" is the backbone itself, bit for bit.

* ``freeze_backbone_steps = F``: the first F training-mode ``train_forward`` calls (counted in
  the ``train_calls`` buffer, so the count survives checkpoints) run the backbone without
  gradient and hand out a detached item table, so only the refiner learns; the backbone's Adam
  state starts when it is released. ``param_groups`` gives the refiner its own learning rate.
* The denoiser's head is residual and zero-initialised by default (``denoiser_residual``): an
  untrained DMI serves its backbone's interests, and training learns a correction around the
  identity.

The item table is the backbone's (``item_embeddings()`` returns it; it is not registered twice).
Under DMI every backbone is read out by the hard argmax of DESIGN.md 7 (MIND's optional
label-aware read-out applies only to MIND itself, i.e. to ``eta = 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import Denoiser, NoiseSchedule, prune_items
from .base import RetrievalModel, TrainOutput, argmax_readout

# the residual head's identity guess is v_t / mean_coef(t); floor the divisor so very noisy
# steps (e.g. the end of a cosine schedule) do not blow the noise up
_MIN_SKIP_COEF = 0.1


class DMI(RetrievalModel):
    def __init__(self, backbone: RetrievalModel, schedule: NoiseSchedule, denoiser: Denoiser, *, eta: float = 0.2,
                 prune: str = "topm", prune_m: int = 5, start_step: int = 0, reverse_steps: int = 0,
                 stochastic_reverse: bool = False, recon_weight: float = 0.1, no_noise: bool = False,
                 train_chain: bool = False, normalize_scale: bool = True, freeze_backbone_steps: int = 0,
                 refiner_lr_scale: float = 1.0, seed: int = 0, rms_momentum: float = 0.95):
        nn.Module.__init__(self)  # not RetrievalModel.__init__: the item table is the backbone's
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if prune not in ("topm", "threshold", "none"):
            raise ValueError(f"unknown pruning rule {prune!r}")
        self.backbone = backbone
        self.num_items = backbone.num_items
        self.embedding_dim = backbone.embedding_dim
        self.num_interests = getattr(backbone, "num_interests", None)
        self.seq_len = getattr(backbone, "seq_len", None)
        self.schedule = schedule
        self.denoiser = denoiser
        self.eta = eta
        self.prune = prune
        self.prune_m = prune_m
        self.grid = schedule.timesteps(start_step, reverse_steps)  # descending steps of the chain
        self.stochastic_reverse = stochastic_reverse
        self.recon_weight = recon_weight
        self.no_noise = no_noise
        self.train_chain = train_chain
        self.normalize_scale = normalize_scale
        self.freeze_backbone_steps = freeze_backbone_steps
        self.refiner_lr_scale = refiner_lr_scale
        self.seed = seed
        self.rms_momentum = rms_momentum
        self.register_buffer("rms", torch.ones(()))  # running RMS of the interests (c)
        self.register_buffer("rms_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("train_calls", torch.zeros((), dtype=torch.long))  # training-mode train_forward calls
        self._backbone_frozen = False  # set by each train_forward

    @classmethod
    def from_config(cls, cfg, backbone: RetrievalModel) -> "DMI":
        schedule = NoiseSchedule(cfg.diffusion_steps, cfg.schedule, cfg.beta_start, cfg.beta_end, cfg.noise_scale,
                                 cfg.noise_kind)
        denoiser = Denoiser(backbone.embedding_dim, cfg.denoiser_heads, cfg.denoiser_blocks, cfg.denoiser,
                            cfg.step_token, cfg.diffusion_steps,
                            residual_head=cfg.denoiser_residual)
        return cls(backbone, schedule, denoiser, eta=cfg.eta, prune=cfg.prune, prune_m=cfg.prune_m,
                   start_step=cfg.start_step, reverse_steps=cfg.reverse_steps,
                   stochastic_reverse=cfg.stochastic_reverse, recon_weight=cfg.recon_weight, no_noise=cfg.no_noise,
                   train_chain=cfg.train_chain, normalize_scale=cfg.normalize_scale,
                   freeze_backbone_steps=cfg.freeze_backbone_steps, refiner_lr_scale=cfg.refiner_lr_scale,
                   seed=cfg.seed)

    # ---- the contract ---------------------------------------------------------------------------
    @property
    def item_emb(self) -> nn.Embedding:
        return self.backbone.item_emb

    def item_embeddings(self) -> torch.Tensor:
        table = self.backbone.item_embeddings()  # (N + 1, D)
        return table.detach() if self.training and self._backbone_frozen else table

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's coarse interests and weights (the refined ones are :meth:`user_vectors`)."""
        return self.backbone.interests(history, mask)  # (B, K, D), (B, K, L)

    def user_vectors(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.eta == 0.0:
            return self.backbone.user_vectors(history, mask)  # (B, K, D)
        return self.refine(history, mask)["user"]

    def param_groups(self, cfg) -> list[dict]:
        """Backbone parameters at ``cfg.lr``, refiner parameters at ``cfg.lr * refiner_lr_scale``."""
        backbone = list(self.backbone.parameters())
        seen = {id(p) for p in backbone}
        refiner = [p for p in self.parameters() if id(p) not in seen]
        return [{"params": backbone, "lr": cfg.lr}, {"params": refiner, "lr": cfg.lr * self.refiner_lr_scale}]

    # ---- pieces ---------------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """The normaliser ``c`` (a detached scalar; 1 when ``normalize_scale`` is off)."""
        return self.rms if self.normalize_scale else torch.ones((), device=self.rms.device)

    @torch.no_grad()
    def _update_scale(self, vecs: torch.Tensor) -> None:
        batch_rms = vecs.detach().float().pow(2).mean().sqrt().clamp(min=1e-6)
        if bool(self.rms_ready):
            self.rms.mul_(self.rms_momentum).add_((1 - self.rms_momentum) * batch_rms)
        else:
            self.rms.copy_(batch_rms)
            self.rms_ready.fill_(True)

    def memory(self, weights: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's keys: pruned history item embeddings (B*K, M, D) and their mask (B*K, M)."""
        index, keep = prune_items(weights, mask, self.prune, self.prune_m)  # (B, K, M), (B, K, M)
        b, k, m = index.shape
        ids = history.gather(1, index.reshape(b, k * m)).reshape(b, k, m)  # (B, K, M)
        keys = self.item_embeddings()[ids]  # (B, K, M, D)
        return keys.reshape(b * k, m, -1), keep.reshape(b * k, m)

    def denoise(self, v_t: torch.Tensor, t: torch.Tensor | int, keys: torch.Tensor, keep: torch.Tensor
                ) -> torch.Tensor:
        """``v0_hat`` for every interest: ``v_t (B, K, D)``, ``t`` int or per example ``(B,)``."""
        b, k, d = v_t.shape
        t = torch.as_tensor(t, dtype=torch.long, device=v_t.device).expand(b)  # (B,)
        skip = v_t / self.schedule.mean_coef(t, v_t).clamp(min=_MIN_SKIP_COEF)  # (B, K, D)
        t_rows = t.repeat_interleave(k)  # (B*K,)
        out = self.denoiser(v_t.reshape(b * k, d), t_rows, keys, keep, skip=skip.reshape(b * k, d))  # (B*K, D)
        return out.view(b, k, d)

    def refine(self, history: torch.Tensor, mask: torch.Tensor, vecs: torch.Tensor | None = None,
               weights: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict:
        """The evaluation-time refinement: ``{"user", "coarse", "weights", "v0_hat"}``, each (B, K, ·).

        Deterministic unless ``stochastic_reverse`` (then seeded by ``seed`` on every call unless
        a ``generator`` is given). ``v0_hat`` is in the interests' own scale.
        """
        if vecs is None or weights is None:
            vecs, weights = self.backbone.interests(history, mask)  # (B, K, D), (B, K, L)
        c = self.scale()
        v0 = vecs.detach() / c  # (B, K, D)
        keys, keep = self.memory(weights, history, mask)
        if self.no_noise:
            v0_hat = self.denoise(v0, 0, keys, keep)  # (B, K, D)
        else:
            if self.stochastic_reverse and generator is None:
                generator = torch.Generator(device=v0.device).manual_seed(self.seed)
            v = self.schedule.start_state(v0, self.grid[0], self.stochastic_reverse, generator)  # (B, K, D)
            v0_hat = self.schedule.reverse(v, lambda x, t: self.denoise(x, t, keys, keep), self.grid[0],
                                           len(self.grid), self.stochastic_reverse, generator)  # (B, K, D)
        v0_hat = v0_hat * c
        user = self.eta * v0_hat + (1 - self.eta) * vecs  # (B, K, D)
        return {"user": user, "coarse": vecs, "weights": weights, "v0_hat": v0_hat}

    def _train_chain(self, v0: torch.Tensor, keys: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Unroll the evaluation grid from a start drawn per example; returns the final v0_hat."""
        b = v0.shape[0]
        grid = torch.tensor(self.grid + [0], dtype=torch.long, device=v0.device)  # (S + 1,)
        first = torch.randint(0, len(self.grid), (b,), device=v0.device)  # (B,) start index into the grid
        v = self.schedule.add_noise(v0, grid[first])  # (B, K, D)
        for i in range(len(self.grid)):
            active = first <= i  # (B,)
            if not bool(active.any()):
                continue
            t = grid[i].expand(b)  # (B,)
            v0_hat = self.denoise(v, t, keys, keep)  # (B, K, D)
            stepped = self.schedule.step(v0_hat, v, t, grid[i + 1], stochastic=self.stochastic_reverse)
            v = torch.where(active.view(b, 1, 1), stepped, v)  # (B, K, D)
        return v  # after the jump to 0 this is the last v0_hat

    def train_forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> TrainOutput:
        if self.eta == 0.0:
            return self.backbone.train_forward(history, mask, target)
        self._backbone_frozen = self.training and int(self.train_calls) < self.freeze_backbone_steps
        if self.training:
            self.train_calls += 1
        if self._backbone_frozen:
            with torch.no_grad():
                vecs, weights = self.backbone.interests(history, mask)  # (B, K, D), (B, K, L)
        else:
            vecs, weights = self.backbone.interests(history, mask)
        if self.normalize_scale and self.training:
            self._update_scale(vecs)
        c = self.scale()
        v0 = vecs.detach() / c  # (B, K, D)
        keys, keep = self.memory(weights, history, mask)
        b = v0.shape[0]
        if self.no_noise:
            v0_hat = self.denoise(v0, 0, keys, keep)  # (B, K, D)
        elif self.train_chain:
            v0_hat = self._train_chain(v0, keys, keep)
        else:
            t = torch.randint(1, self.schedule.steps + 1, (b,), device=v0.device)  # (B,)
            v0_hat = self.denoise(self.schedule.add_noise(v0, t), t, keys, keep)
        recon = F.mse_loss(v0_hat, v0)
        user_vecs = self.eta * (v0_hat * c) + (1 - self.eta) * vecs  # (B, K, D)
        target_emb = self.item_embeddings()[target]  # (B, D)
        user = argmax_readout(user_vecs, target_emb)  # (B, D)
        return TrainOutput(user=user, interests=user_vecs, weights=weights, aux_loss=self.recon_weight * recon)
