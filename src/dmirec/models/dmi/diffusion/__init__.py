"""DMI's refiner pieces, each on its own: the noise schedule (arithmetic and the one reverse loop),
the diffusion process (noising, prediction type, training draws, sampling), the denoiser network,
and the conditioning sources it reads.

Knows nothing about training loops, files or HTTP; :mod:`dmirec.models.dmi.model` wires them to a
multi-interest backbone.
"""

from .conditioning import concat_sources, neighbour_interests, other_interests, prune_items, pruned_items
from .denoiser import Denoiser, StepEmbedding, sinusoidal_embedding
from .process import PREDICTIONS, SAMPLERS, DiffusionProcess
from .schedule import NoiseSchedule, cosine_betas, linear_betas

__all__ = ["NoiseSchedule", "DiffusionProcess", "Denoiser", "StepEmbedding", "prune_items", "pruned_items",
           "neighbour_interests", "other_interests", "concat_sources", "sinusoidal_embedding", "linear_betas",
           "cosine_betas", "PREDICTIONS", "SAMPLERS"]
