"""DMI: diffusion refinement of the interests of any multi-interest backbone.

Le et al., "Diffusion Model for Interest Refinement in Multi-Interest Recommendation", 2025
(arXiv 2502.05561); docs/design.md says what we follow and what is our own choice.

This module only wires three separate pieces to a backbone: the diffusion process
(:class:`~dmirec.models.dmi.diffusion.DiffusionProcess`: noising, prediction type, training draws,
sampling), the denoiser network (:class:`~dmirec.models.dmi.diffusion.Denoiser`) and its conditioning
sources (:mod:`dmirec.models.dmi.diffusion.conditioning`). What it adds itself:

* **Scale.** The process runs on ``x0 = stopgrad(V_k) / c`` with ``c`` a detached running RMS of
  the interests (``normalize_scale``), and its output is rescaled by ``c``.
* **Keys** (``dmi_keys``, a comma list): ``items`` (the interest's pruned history items; the
  figure), ``neighbours`` (the n nearest interests of other training users from the interest
  bank, the user's own entry left out in training, and in training searched among a random
  ``bank_train_sample`` bank users per step to bound its cost), ``others`` (the user's other K-1
  interests). The step token is the denoiser's own.
* **What is reconstructed** (``dmi_target``): ``interest`` (the figure: the interest rebuilds
  itself, ``recon_weight * mse(x0_hat, x0)``), or ``next_item``: from the noised interest and its
  keys the denoiser reconstructs the target item's embedding (``recon_weight * mse`` of the
  selected interest's output against ``e_target / c``, the selected interest being the
  backbone's argmax against the target); condition dropout (``cond_dropout``: all keys of an
  example masked) in training and classifier-free guidance ``guidance`` (w) at evaluation:
  ``g = g_uncond + w (g_cond - g_uncond)``, so w = 1 is the conditional output exactly.
* **Output** (``dmi_output``): ``fuse``: ``u_k = fusion_weight * c x0_hat_k + (1 - fusion_weight) V_k``
  (the skip path is not detached: it is the backbone's gradient route); ``extra``: the K
  generated vectors are K more queries next to the K interests (2K lists merged as usual, and
  the training read-out picks among all 2K).
* **Freezing.** The first ``freeze_backbone_steps`` training-mode calls (counted in the
  ``train_calls`` buffer, which survives checkpoints) run the backbone without gradient and hand
  out a detached item table. ``param_groups`` gives the refiner its own learning rate.

``fusion_weight = 0`` short-circuits to the backbone (no refiner call): the ablation "no diffusion"
is the backbone itself, bit for bit. Under DMI every backbone is read out by the hard argmax.
The item table is the backbone's (not registered twice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config import CHOICES, DMI_KEY_SOURCES, dmi_key_list
from .diffusion import Denoiser, DiffusionProcess, NoiseSchedule, concat_sources, other_interests, pruned_items
from ..base import RetrievalModel, TrainOutput, argmax_readout

KEY_SOURCES = DMI_KEY_SOURCES
TARGETS = CHOICES["dmi_target"]
OUTPUTS = CHOICES["dmi_output"]


class DMI(RetrievalModel):
    def __init__(self, backbone: RetrievalModel, process: DiffusionProcess, denoiser: Denoiser, *,
                 fusion_weight: float, keys: tuple[str, ...], prune: str, prune_m: int, neighbours: int,
                 target: str, output: str, recon_weight: float, cond_dropout: float, guidance: float,
                 bank_train_sample: int,
                 normalize_scale: bool, freeze_backbone_steps: int, refiner_lr_scale: float,
                 rms_momentum: float = 0.95):
        nn.Module.__init__(self)  # not RetrievalModel.__init__: the item table is the backbone's
        if not 0.0 <= fusion_weight <= 1.0:
            raise ValueError(f"fusion_weight must be in [0, 1], got {fusion_weight}")
        if target not in TARGETS or output not in OUTPUTS:
            raise ValueError(f"dmi_target must be one of {TARGETS} and dmi_output one of {OUTPUTS}")
        self.backbone = backbone
        self.num_items = backbone.num_items
        self.embedding_dim = backbone.embedding_dim
        self.num_interests = getattr(backbone, "num_interests", None)
        self.seq_len = getattr(backbone, "seq_len", None)
        self.process = process
        self.denoiser = denoiser
        self.fusion_weight = fusion_weight
        self.keys = keys
        self.prune = prune
        self.prune_m = prune_m
        self.num_neighbours = neighbours
        self.bank_train_sample = bank_train_sample
        self.target = target
        self.output = output
        self.recon_weight = recon_weight
        self.cond_dropout = cond_dropout
        self.guidance = guidance
        self.normalize_scale = normalize_scale
        self.freeze_backbone_steps = freeze_backbone_steps
        self.refiner_lr_scale = refiner_lr_scale
        self.rms_momentum = rms_momentum
        self.register_buffer("rms", torch.ones(()))  # running RMS of the interests (c)
        self.register_buffer("rms_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("train_calls", torch.zeros((), dtype=torch.long))  # training-mode train_forward calls
        self.bank = None  # the interest bank (dmirec.models.attach_bank), as RetrievalModel.__init__ declares it

    @classmethod
    def from_config(cls, cfg, backbone: RetrievalModel) -> "DMI":
        schedule = NoiseSchedule(cfg.diffusion_steps, cfg.schedule, cfg.beta_start, cfg.beta_end, cfg.noise_scale,
                                 cfg.noise_kind)
        process = DiffusionProcess(schedule, cfg.prediction, cfg.start_step, cfg.reverse_steps, cfg.sampler,
                                   cfg.no_noise, cfg.train_chain, cfg.seed)
        denoiser = Denoiser(backbone.embedding_dim, cfg.denoiser_heads, cfg.denoiser_blocks, cfg.denoiser,
                            cfg.step_token, zero_init_head=cfg.prediction == "x0_residual")
        return cls(backbone, process, denoiser, fusion_weight=cfg.fusion_weight, keys=dmi_key_list(cfg.dmi_keys),
                   prune=cfg.prune, prune_m=cfg.prune_m, neighbours=cfg.neighbours, target=cfg.dmi_target,
                   output=cfg.dmi_output, recon_weight=cfg.recon_weight, cond_dropout=cfg.cond_dropout,
                   guidance=cfg.guidance, bank_train_sample=cfg.bank_train_sample, normalize_scale=cfg.normalize_scale,
                   freeze_backbone_steps=cfg.freeze_backbone_steps, refiner_lr_scale=cfg.refiner_lr_scale)

    # ---- the contract ---------------------------------------------------------------------------
    @property
    def item_emb(self) -> nn.Embedding:
        return self.backbone.item_emb

    def backbone_frozen(self) -> bool:
        """True in training mode while the first ``freeze_backbone_steps`` train_forward calls run
        (``train_calls`` is counted at the start of each call, so the whole step agrees)."""
        return self.training and 0 < self.freeze_backbone_steps and int(self.train_calls) <= self.freeze_backbone_steps

    def item_embeddings(self) -> torch.Tensor:
        table = self.backbone.item_embeddings()  # (N + 1, D)
        return table.detach() if self.backbone_frozen() else table

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Table rows; through the embedding module only when the table is sparse (dense: as before)."""
        if not self.item_emb.sparse:
            return self.item_embeddings()[ids]  # (*ids.shape, D)
        rows = self.backbone.item_rows(ids)  # (*ids.shape, D)
        return rows.detach() if self.backbone_frozen() else rows

    def interests(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's coarse interests and weights (the refined ones are :meth:`query_vectors`)."""
        return self.backbone.interests(history, mask)  # (B, K, D), (B, K, L)

    def bank_interests(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.backbone.interests(history, mask)[0]  # (B, K, D): the bank holds coarse interests

    def query_vectors(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The refined interests (the backbone's with ``fusion_weight`` 0), with the neighbour rule."""
        if self.fusion_weight == 0.0:
            return self.with_neighbours(self.backbone.interests(history, mask)[0])  # (B, K, D)
        return self.with_neighbours(self.refine(history, mask)["user"])

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

    def memory(self, vecs: torch.Tensor, weights: torch.Tensor, history: torch.Tensor, mask: torch.Tensor,
               users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's keys from every configured source: (B*K, M, D) and their mask (B*K, M)."""
        sources = []
        for name in self.keys:
            if name == "items":
                sources.append(pruned_items(self.item_rows, history, mask, weights, self.prune, self.prune_m))
            elif name == "neighbours":
                bank = getattr(self, "bank", None)
                if bank is None:
                    raise RuntimeError("dmi_keys has 'neighbours' but the model carries no interest bank")
                sample = self.bank_train_sample if self.training else 0  # bounded cost per training step
                nb, _, found = bank.neighbours(vecs.detach(), self.num_neighbours, users, sample)  # (B, K, n, D), (B, K, n)
                sources.append((nb.to(vecs.dtype), found))
            else:
                sources.append(other_interests(vecs))
        return concat_sources(sources)

    def _guided(self, run, keys: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance around ``run(keys, keep) -> x0_hat`` (w = 1: the conditional output)."""
        cond = run(keys, keep)
        if self.target != "next_item" or self.guidance == 1.0:
            return cond
        uncond = run(keys, torch.zeros_like(keep))
        return uncond + self.guidance * (cond - uncond)

    def _outputs(self, vecs: torch.Tensor, x0_hat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Fusion (B, K, D) or the interests plus the generated vectors as extra queries (B, 2K, D)."""
        if self.output == "extra":
            return torch.cat([vecs, x0_hat * c], dim=1)
        return self.fusion_weight * (x0_hat * c) + (1 - self.fusion_weight) * vecs

    def refine(self, history: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """The evaluation-time refinement: ``{"user", "coarse", "weights", "v0_hat"}``.

        ``user`` is (B, K, D) (or (B, 2K, D) with ``dmi_output=extra``); ``v0_hat`` is the
        process's output in the interests' own scale.
        """
        vecs, weights = self.backbone.interests(history, mask)  # (B, K, D), (B, K, L)
        c = self.scale()
        keys, keep = self.memory(vecs, weights, history, mask)
        x0 = vecs.detach() / c  # (B, K, D)
        x0_hat = self._guided(lambda k, m: self.process.sample(self.denoiser, x0, k, m, generator), keys, keep)
        return {"user": self._outputs(vecs, x0_hat, c), "coarse": vecs, "weights": weights, "v0_hat": x0_hat * c}

    def train_forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                      users: torch.Tensor | None = None) -> TrainOutput:
        if self.fusion_weight == 0.0:
            return self.backbone.train_forward(history, mask, target)
        if self.training:
            self.train_calls += 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen()):
            vecs, weights = self.backbone.interests(history, mask)  # (B, K, D), (B, K, L)
        if self.normalize_scale and self.training:
            self._update_scale(vecs)
        c = self.scale()
        keys, keep = self.memory(vecs, weights, history, mask, users)
        if self.cond_dropout > 0 and self.training:
            drop = torch.rand(vecs.shape[0], device=vecs.device) < self.cond_dropout  # (B,)
            keep = keep & ~drop.repeat_interleave(vecs.shape[1]).unsqueeze(1)  # (B*K, M)
        x0 = vecs.detach() / c  # (B, K, D)
        x0_hat = self.process.training_sample(self.denoiser, x0, keys, keep)  # (B, K, D)
        target_emb = self.item_rows(target)  # (B, D)
        if self.target == "interest":
            recon = F.mse_loss(x0_hat, x0)
        else:  # the backbone's selected interest reconstructs the target item
            chosen = torch.einsum("bkd,bd->bk", vecs.detach(), target_emb.detach()).argmax(1)  # (B,)
            rows = torch.arange(vecs.shape[0], device=vecs.device)
            recon = F.mse_loss(x0_hat[rows, chosen], target_emb.detach() / c)
        user_vecs = self._outputs(vecs, x0_hat, c)  # (B, K or 2K, D)
        user = argmax_readout(user_vecs, target_emb)  # (B, D)
        aux = self.routing_loss(weights) + self.recon_weight * recon  # the backbone's W: REMI's regulariser
        return TrainOutput(user=user, interests=user_vecs, weights=weights, aux_loss=aux)
