"""The diffusion refiner of DMI: noise schedule (forward and reverse), denoiser, item pruning.

Knows nothing about training loops, files or HTTP; :mod:`dmirec.models.dmi` wires it to a
multi-interest backbone.
"""

from .denoiser import Denoiser, StepEmbedding, prune_items, sinusoidal_embedding
from .schedule import NoiseSchedule, cosine_betas, linear_betas

__all__ = ["NoiseSchedule", "Denoiser", "StepEmbedding", "prune_items", "sinusoidal_embedding", "linear_betas",
           "cosine_betas"]
