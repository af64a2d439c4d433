"""Model registry: ``--model NAME`` to a constructed :class:`RetrievalModel`.

Each entry maps a model name to ``builder(cfg, num_items, popularity) -> RetrievalModel``;
``popularity`` is the (N + 1,) training interaction count per item (used by most-popular).
Training-scheme options (REMI's hard negatives and routing regularisation) are config keys,
so ``remi`` is ComiRec-SA with those keys set by :data:`MODEL_DEFAULTS`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import Config
from .base import RetrievalModel, TrainOutput, argmax_readout

Builder = Callable[[Config, int, np.ndarray], RetrievalModel]


def _comirec_sa(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    from .comirec_sa import ComiRecSA

    return ComiRecSA(num_items, cfg.embedding_dim, cfg.num_interests, cfg.seq_len, cfg.sa_hidden_factor,
                     cfg.add_positions)


def _comirec_dr(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    from .comirec_dr import ComiRecDR

    return ComiRecDR.from_config(cfg, num_items)


def _mind(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    from .mind import MIND

    return MIND.from_config(cfg, num_items)


def _youtube_dnn(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    from .youtube_dnn import YouTubeDNN

    return YouTubeDNN.from_config(cfg, num_items)


def _most_popular(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    from .most_popular import MostPopular

    return MostPopular(num_items, popularity)


def _dmi(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    from .dmi import DMI

    backbone = build_model(cfg.replace(model=cfg.backbone), num_items, popularity)
    return DMI.from_config(cfg, backbone)


REGISTRY: dict[str, Builder] = {
    "comirec-sa": _comirec_sa,
    "remi": _comirec_sa,
    "comirec-dr": _comirec_dr,
    "mind": _mind,
    "youtube-dnn": _youtube_dnn,
    "most-popular": _most_popular,
    "dmi": _dmi,
}

# Config values a model name implies unless the user sets them (applied by train before YAML).
MODEL_DEFAULTS: dict[str, dict] = {
    "remi": {"hard_negative_beta": 1.0, "routing_reg": 100.0},
    "dmi": {"backbone": "remi"},
    "youtube-dnn": {"num_interests": 1},
    "most-popular": {"num_interests": 1, "max_steps": 0},
}


def build_model(cfg: Config, num_items: int, popularity: np.ndarray | None = None) -> RetrievalModel:
    """Construct the model named by ``cfg.model`` for a catalogue of ``num_items`` items."""
    if cfg.model not in REGISTRY:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {sorted(REGISTRY)}")
    if popularity is None:
        popularity = np.zeros(num_items + 1, dtype=np.int64)
    return REGISTRY[cfg.model](cfg, num_items, popularity)


__all__ = ["REGISTRY", "MODEL_DEFAULTS", "build_model", "RetrievalModel", "TrainOutput", "argmax_readout"]
