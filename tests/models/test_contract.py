"""The model contract (dmirec.models.base.RetrievalModel): every model declares ``bank``; models
override ``query_vectors``, while ``user_vectors``, which evaluation and serving call, is the base
class's and keeps the last ``seq_len`` items of a longer history for every model, DMI included."""

import torch

import dmirec.models  # noqa: F401 (every model class imported)
from dmirec.models import build_model
from dmirec.models.base import RetrievalModel
from dmirec.training.train import make_config

N_ITEMS, L = 40, 6


def _model_classes(cls=RetrievalModel):
    for sub in cls.__subclasses__():
        yield sub
        yield from _model_classes(sub)


def test_no_model_overrides_user_vectors():
    classes = list(_model_classes())
    assert len(classes) >= 10  # the registry's model classes were found
    assert [c.__qualname__ for c in classes if "user_vectors" in vars(c)] == []


def test_every_model_declares_its_bank():
    """``model.bank`` is part of every model (None unless its config reads an interest bank)."""
    from dmirec.models import REGISTRY, needs_bank

    for name in REGISTRY:
        cfg = make_config(name, overrides={"embedding_dim": 8, "seq_len": L})
        model = build_model(cfg, N_ITEMS)
        assert (model.bank is not None) == needs_bank(cfg), name  # COIN always reads one
    cfg = make_config("comirec-sa", overrides={"embedding_dim": 8, "neighbour_alpha": 0.5})
    assert build_model(cfg, N_ITEMS).bank.size == 0  # attached, empty until training fills it


def test_every_kind_of_model_keeps_the_last_items_of_a_longer_history():
    g = torch.Generator().manual_seed(0)
    history = torch.randint(1, N_ITEMS + 1, (3, L + 4), generator=g)  # (B, L + 4), no padding
    mask = history > 0
    for name in ("comirec-sa", "dmi"):
        cfg = make_config(name, overrides={"embedding_dim": 8, "num_interests": 2, "seq_len": L, "denoiser_heads": 2})
        torch.manual_seed(0)
        model = build_model(cfg, N_ITEMS).eval()
        long = model.user_vectors(history, mask)  # (B, K, D)
        assert torch.allclose(long, model.user_vectors(history[:, -L:], mask[:, -L:]), atol=1e-6), name
