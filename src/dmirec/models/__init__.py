"""Model registry: ``--model NAME`` to a constructed :class:`RetrievalModel`.

Each entry maps a model name to ``builder(cfg, num_items, popularity) -> RetrievalModel``;
``popularity`` is the (N + 1,) training interaction count per item (used by most-popular).
Training-scheme options (REMI's hard negatives and routing regularisation) are config keys,
so ``remi`` is ComiRec-SA with those keys set by :data:`dmirec.config.schema.MODEL_DEFAULTS`.
A model whose config asks for an interest bank (the neighbour rule, DMI's neighbour keys, COIN)
gets one attached here (:func:`attach_bank`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..collab.neighbours import InterestBank
from ..config import Config, dmi_key_list
from .base import RetrievalModel, TrainOutput, argmax_readout
from .coin import COIN
from .comirec_dr import ComiRecDR
from .comirec_sa import ComiRecSA
from .dmi.model import DMI
from .item_item import EASE, ItemKNN, RP3beta
from .mind import MIND
from .most_popular import MostPopular
from .repeat import RepeatBaseline
from .sasrec import SASRec
from .youtube_dnn import YouTubeDNN

Builder = Callable[[Config, int, np.ndarray], RetrievalModel]


def _comirec_sa(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return ComiRecSA(num_items, cfg.embedding_dim, cfg.num_interests, cfg.seq_len, cfg.sa_hidden_factor,
                     cfg.add_positions)


def _comirec_dr(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return ComiRecDR.from_config(cfg, num_items)


def _mind(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return MIND.from_config(cfg, num_items)


def _youtube_dnn(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return YouTubeDNN.from_config(cfg, num_items)


def _sasrec(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return SASRec.from_config(cfg, num_items)


def _most_popular(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return MostPopular(num_items, popularity)


def _coin(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return COIN.from_config(cfg, num_items)


def _repeat(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return RepeatBaseline(num_items, popularity, cfg.repeat_decay)


def _itemknn(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return ItemKNN(num_items, popularity, shrink=cfg.itemknn_shrink, neighbours=cfg.itemknn_neighbours,
                   history_decay=cfg.history_decay)


def _rp3beta(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return RP3beta(num_items, popularity, alpha=cfg.rp3beta_alpha, beta=cfg.rp3beta_beta,
                   neighbours=cfg.rp3beta_neighbours, history_decay=cfg.history_decay)


def _ease(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    return EASE(num_items, popularity, lam=cfg.ease_lambda, neighbours=cfg.ease_neighbours,
                max_items=cfg.ease_max_items, history_decay=cfg.history_decay)


def _dmi(cfg: Config, num_items: int, popularity: np.ndarray) -> RetrievalModel:
    backbone = build_model(cfg.replace(model=cfg.backbone, neighbour_alpha=0.0), num_items, popularity)
    return DMI.from_config(cfg, backbone)


REGISTRY: dict[str, Builder] = {
    "comirec-sa": _comirec_sa,
    "remi": _comirec_sa,
    "comirec-dr": _comirec_dr,
    "mind": _mind,
    "youtube-dnn": _youtube_dnn,
    "sasrec": _sasrec,
    "most-popular": _most_popular,
    "coin": _coin,
    "repeat": _repeat,
    "dmi": _dmi,
    "itemknn": _itemknn,
    "ease": _ease,
    "rp3beta": _rp3beta,
}

def needs_bank(cfg: Config) -> bool:
    """Whether the model of ``cfg`` reads an interest bank."""
    return cfg.neighbour_alpha > 0 or cfg.model == "coin" or (cfg.model == "dmi" and
                                                              "neighbours" in dmi_key_list(cfg.dmi_keys))


def attach_bank(model: RetrievalModel, cfg: Config) -> RetrievalModel:
    """Give ``model`` an (empty) interest bank and the neighbour rule's settings."""
    k = getattr(model, "num_interests", None) or cfg.num_interests
    model.bank = InterestBank(model.embedding_dim, k, search=cfg.bank_search, hnsw_ef=cfg.bank_hnsw_ef)
    model.neighbour_alpha = cfg.neighbour_alpha
    model.neighbours = cfg.neighbours
    return model


def set_routing_reg(model: RetrievalModel, weight: float) -> None:
    """The weight of REMI's routing regulariser in the aux_loss of ``model`` and of any model it wraps."""
    for module in model.modules():
        if isinstance(module, RetrievalModel):
            module.routing_reg = float(weight)


def build_model(cfg: Config, num_items: int, popularity: np.ndarray | None = None) -> RetrievalModel:
    """Construct the model named by ``cfg.model`` for a catalogue of ``num_items`` items."""
    if cfg.model not in REGISTRY:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {sorted(REGISTRY)}")
    if popularity is None:
        popularity = np.zeros(num_items + 1, dtype=np.int64)
    model = REGISTRY[cfg.model](cfg, num_items, popularity)
    model.history_len = int(cfg.seq_len)  # user_vectors keeps the last seq_len items of longer histories
    set_routing_reg(model, cfg.routing_reg)
    return attach_bank(model, cfg) if needs_bank(cfg) else model


__all__ = ["REGISTRY", "build_model", "set_routing_reg", "attach_bank", "needs_bank", "RetrievalModel", "TrainOutput", "argmax_readout"]
