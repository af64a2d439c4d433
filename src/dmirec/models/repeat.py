"""Repeat baseline: the user's own history items by visit count, ties by recency, then most-popular.

Nothing is learnt. Retrieval is a function of the whole history, not of a query vector, so the
model is :class:`~dmirec.models.most_popular.MostPopular` (the fill list: inner-product search
over ``log(1 + training count)`` with D = 1) plus the :class:`dmirec.repeats.channel.RepeatFirst` stage
that evaluation, serving and batch apply after the search (:func:`dmirec.repeats.channel.retrieve`):
history items first (by count, each visit weighted ``exp(-repeat_decay * age)`` when
``repeat_decay`` > 0; ties by the more recent last visit, then the lower id), then the most
popular training items not in the history. The padding item never ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from ..repeats.channel import RepeatFirst
from .most_popular import MostPopular


class RepeatBaseline(MostPopular):
    def __init__(self, num_items: int, popularity: np.ndarray | torch.Tensor | None = None, decay: float = 0.0):
        super().__init__(num_items, popularity)
        self.repeat_stage = RepeatFirst(float(decay))
