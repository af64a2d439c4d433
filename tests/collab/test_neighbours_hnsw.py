"""The interest bank searched through an HNSW graph (``bank_search=hnsw``) against the exact search."""

import numpy as np
import pytest
import torch

from dmirec.collab.neighbours import InterestBank, neighbour_rule
from dmirec.config import ConfigError
from dmirec.training.train import make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clustered_bank(search: str, users: int = 600, k: int = 4, dim: int = 16, seed: int = 0, ef: int = 128):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, dim, generator=g)
    pick = torch.randint(0, 20, (users, k), generator=g)
    vectors = centres[pick] + 0.3 * torch.randn(users, k, dim, generator=g)  # (U, K, D)
    bank = InterestBank(dim, k, search=search, hnsw_ef=ef)
    bank.set(vectors, torch.arange(100, 100 + users))
    return bank


def neighbour_users(bank: InterestBank, vecs: torch.Tensor, found: torch.Tensor) -> list[set[int]]:
    """Which bank users the returned vectors are (each is one bank row's interest)."""
    flat = bank.vectors.reshape(-1, bank.vectors.shape[2])  # (U*K, D)
    out = []
    for row, ok in zip(vecs, found):
        hits = [int((flat == v).all(1).nonzero()[0, 0]) // bank.vectors.shape[1] for v, f in zip(row, ok) if f]
        out.append(set(hits))
    return out


def test_hnsw_finds_the_exact_neighbours_with_their_best_interest_and_cosine():
    exact, ann = clustered_bank("exact"), clustered_bank("hnsw")
    queries = torch.randn(50, 16, generator=torch.Generator().manual_seed(1))
    ev, es, ef = exact.search(queries, 8)
    av, as_, af = ann.search(queries, 8)
    assert af.all() and ef.all()
    got, want = neighbour_users(ann, av, af), neighbour_users(exact, ev, ef)
    overlap = np.mean([len(a & b) / 8 for a, b in zip(got, want)])
    assert overlap >= 0.95
    assert all(len(g) == 8 for g in got)  # never two neighbours from one user
    # each returned similarity is the cosine of the returned vector, best first
    cos = torch.nn.functional.cosine_similarity(queries.unsqueeze(1), av, dim=-1)  # (Q, n)
    torch.testing.assert_close(as_, cos, atol=1e-5, rtol=1e-5)
    assert (as_[:, :-1] >= as_[:, 1:] - 1e-6).all()
    # and it is that user's best interest: never below the exact search's n-th similarity by much
    assert (as_[:, 0] >= es[:, 0] - 1e-5).float().mean() >= 0.95


def test_hnsw_rule_on_a_small_bank_equals_the_exact_rule():
    exact, ann = clustered_bank("exact", users=40), clustered_bank("hnsw", users=40, ef=512)
    v = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(neighbour_rule(v, ann, 0.7, 5), neighbour_rule(v, exact, 0.7, 5))


def test_hnsw_marks_missing_neighbours_and_training_searches_stay_exact():
    ann = clustered_bank("hnsw", users=3, k=2)
    vecs, sims, found = ann.search(torch.randn(2, 16), 5)
    assert found[:, :3].all() and not found[:, 3:].any() and torch.equal(vecs[:, 3:], torch.zeros(2, 2, 16))
    ann._hnsw = "not used"  # exclusions (training) go through the exact search, never the graph
    ann.search(torch.randn(2, 16), 2, exclude=torch.tensor([100, -1]))
    ann.search(torch.randn(2, 16), 2, sample=2)


def test_graph_is_rebuilt_when_the_bank_changes_and_is_the_same_in_every_build():
    a, b = clustered_bank("hnsw", seed=3), clustered_bank("hnsw", seed=3)
    q = torch.randn(20, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.search(q, 6)[0], b.search(q, 6)[0])  # deterministic graph
    a.set(-a.vectors, a.owners)
    assert a._hnsw is None
    torch.testing.assert_close(a.search(-q, 6)[1], b.search(q, 6)[1])


def test_bank_search_is_validated():
    with pytest.raises(ConfigError, match="bank_search"):
        make_config("remi", overrides={"bank_search": "ivf"})
    with pytest.raises(ConfigError, match="bank_hnsw_ef"):
        make_config("remi", overrides={"bank_hnsw_ef": 0})
