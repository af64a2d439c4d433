"""The interest bank and the neighbour rule: search, exclusion, padding, the rule's exactness, serving parity."""

import numpy as np
import pytest
import torch

from dmirec.collab.neighbours import InterestBank, build_bank, neighbour_rule
from dmirec.data.dataset import Sequences
from dmirec.data.synthetic import make_planted_dataset
from dmirec.models import build_model
from dmirec.training.train import make_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bank_of(vectors, owners=None):
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    bank = InterestBank(vectors.shape[2], vectors.shape[1])
    bank.set(vectors, torch.arange(len(vectors)) if owners is None else torch.as_tensor(owners))
    return bank


def test_search_takes_each_users_best_interest_by_cosine_and_excludes_owners():
    # user 0: interests along x and y; user 1: along -x and (x+y); user 2: along y only (long)
    bank = bank_of([[[1, 0], [0, 1]], [[-1, 0], [1, 1]], [[0, 10], [0, 5]]], owners=[7, 8, 9])
    q = torch.tensor([[1.0, 0.1]])
    vecs, sims, found = bank.search(q, 2)
    # best cosines: user 0 -> [1,0] (0.995), user 1 -> [1,1] (0.77), user 2 -> [0,10] (0.0995)
    assert torch.equal(vecs[0], torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert sims[0, 0] == pytest.approx(1 / np.sqrt(1.01), rel=1e-5) and found.all()
    vecs, sims, found = bank.search(q, 2, exclude=torch.tensor([7]))  # owner 7 is the query user
    assert torch.equal(vecs[0], torch.tensor([[1.0, 1.0], [0.0, 10.0]]))
    # blocked search gives the same answer as one block
    assert torch.equal(bank.search(q, 3, block=1)[0], bank.search(q, 3)[0])


def test_missing_neighbours_are_marked_and_zero():
    bank = bank_of([[[1.0, 0.0]]], owners=[3])
    vecs, sims, found = bank.search(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 3, exclude=torch.tensor([3, -1]))
    assert vecs.shape == (2, 3, 2) and not found[0].any()  # the only entry is the query's own
    assert found[1].tolist() == [True, False, False] and torch.equal(vecs[1, 1:], torch.zeros(2, 2))
    assert torch.equal(sims[0], torch.zeros(3))


def test_neighbour_rule_formula_and_alpha_zero_is_exact():
    bank = bank_of([[[1.0, 0.0]], [[0.6, 0.8]], [[-1.0, 0.0]]])
    v = torch.tensor([[[2.0, 0.0]]])  # (B=1, K=1, D=2)
    assert neighbour_rule(v, bank, 0.0, 2) is v
    out = neighbour_rule(v, bank, 0.5, 2)
    c1, c2 = 1.0, 0.6  # cosines of the two nearest
    mean = (c1 * torch.tensor([1.0, 0.0]) + c2 * torch.tensor([0.6, 0.8])) / (c1 + c2)
    assert torch.allclose(out, v + 0.5 * mean)


def test_bank_holds_training_users_only_and_no_padding(tmp_path):
    data_dir = make_planted_dataset(tmp_path / "d", num_users=120, num_items=60, num_clusters=4)
    from dmirec.data.dataset import load_dataset

    data = load_dataset(data_dir)
    cfg = make_config("comirec-sa", overrides={"embedding_dim": 8, "seq_len": 6, "neighbour_alpha": 0.5})
    model = build_model(cfg, data.num_items)
    train_split = data.splits["train"]
    build_bank(model, train_split, cfg.seq_len)
    assert model.bank.size == int((train_split.lengths > 0).sum())
    assert torch.equal(model.bank.owners, torch.arange(train_split.num_users))
    # entry r is the interests of train row r's last seq_len items (left padded, padding masked)
    r = 5
    seq = torch.from_numpy(train_split.sequence(r)[-cfg.seq_len:].astype(np.int64))
    hist = torch.zeros(1, cfg.seq_len, dtype=torch.long)
    hist[0, cfg.seq_len - len(seq):] = seq
    mask = hist > 0
    assert torch.allclose(model.bank.vectors[r], model.interests(hist, mask)[0][0], atol=1e-6)
    # a capped bank is a seeded sample, the same on every rebuild
    build_bank(model, train_split, cfg.seq_len, max_users=30, seed=1)
    first = model.bank.owners.clone()
    build_bank(model, train_split, cfg.seq_len, max_users=30, seed=1)
    assert model.bank.size == 30 and torch.equal(first, model.bank.owners)
    # a user with no training item has no entry
    empty = Sequences(np.array([0, 0, 2]), np.array([1, 2], np.int32), np.array([0, 1]), np.array([0, 0]))
    build_bank(model, empty, cfg.seq_len)
    assert model.bank.owners.tolist() == [1]


def test_bank_survives_a_state_dict_round_trip():
    cfg = make_config("comirec-sa", overrides={"embedding_dim": 8, "neighbour_alpha": 0.3})
    model = build_model(cfg, 30)
    model.bank.set(torch.randn(11, 4, 8), torch.arange(11))
    clone = build_model(cfg, 30)
    assert clone.bank.size == 0
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.bank.vectors, model.bank.vectors) and torch.equal(clone.bank.owners, model.bank.owners)
    hist = torch.randint(1, 31, (3, cfg.seq_len))
    mask = torch.ones_like(hist, dtype=torch.bool)
    assert torch.equal(clone.user_vectors(hist, mask), model.user_vectors(hist, mask))


@pytest.fixture(scope="module")
def remi_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("nb")
    data = make_planted_dataset(base / "data", num_users=500, num_items=150, num_clusters=8)
    over = {"embedding_dim": 16, "seq_len": 10, "batch_size": 64, "num_negatives": 64, "max_steps": 100,
            "eval_every": 50, "progress": False, "lr": 0.005, "threads": 1}
    train(make_config("remi", overrides=over), data, base / "remi")
    return data, base / "remi", over


def test_rule_at_evaluation_alpha_zero_is_the_model_and_alpha_changes_it(remi_run):
    from dmirec.evaluation.evaluate import evaluate_run

    _, run, _ = remi_run
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
    plain = strip(evaluate_run(run, "valid"))
    assert strip(evaluate_run(run, "valid", overrides={"neighbour_alpha": 0.0})) == plain
    ruled = strip(evaluate_run(run, "valid", overrides={"neighbour_alpha": 0.8, "neighbours": 4}))
    assert ruled != plain


def test_training_with_the_rule_stores_the_bank_in_checkpoints(remi_run, tmp_path):
    from dmirec.runs import rundir

    data, _, over = remi_run
    train(make_config("remi", overrides={**over, "max_steps": 50, "neighbour_alpha": 0.5}), data, tmp_path / "r")
    best = rundir.load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")["model"]
    assert best["bank.vectors"].shape[0] > 0 and best["bank.vectors"].shape[1:] == (4, 16)


def test_bundle_with_a_bank_serves_what_evaluate_measures(remi_run, tmp_path):
    from dmirec.data.dataset import load_dataset
    from dmirec.data.sampler import eval_split
    from dmirec.evaluation.evaluate import load_run, user_vectors
    from dmirec.serving.export import export_bundle
    from dmirec.serving import load_bundle

    data_dir, run, _ = remi_run
    over = {"neighbour_alpha": 0.6, "neighbours": 3}
    export_bundle(run, tmp_path / "b", overrides=over)
    bundle = load_bundle(tmp_path / "b")
    model, cfg, data = load_run(run, overrides=over)
    ev = eval_split(data.splits["test"], cfg.seq_len, max_users=20)
    expect = user_vectors(model, ev)  # (20, K, D)
    served = user_vectors(bundle.model, ev)
    assert np.array_equal(expect, served)
    assert bundle.model.bank.size == model.bank.size > 0


def test_cli_evaluate_and_export_take_evaluation_time_overrides(remi_run, tmp_path, capsys):
    import json

    from dmirec.cli.main import main
    from dmirec.evaluation.evaluate import evaluate_run

    _, run, _ = remi_run
    assert main(["evaluate", str(run), "--split", "valid", "--json", "--neighbour_alpha=0.8"]) == 0
    shown = json.loads(capsys.readouterr().out)
    expect = evaluate_run(run, "valid", overrides={"neighbour_alpha": 0.8})
    assert shown["recall@50"] == expect["recall@50"]
    assert main(["evaluate", str(run), "--neighbour_alpha=oops"]) == 2
    assert "neighbour_alpha" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "b"), "--neighbour_alpha=0.8"]) == 0
    from dmirec.serving import load_bundle

    assert load_bundle(tmp_path / "b").model.bank.size > 0


def test_sampled_search_looks_at_that_many_users_only():
    bank = bank_of(torch.randn(50, 2, 4))
    q = torch.randn(3, 4)
    torch.manual_seed(0)
    vecs, sims, found = bank.search(q, 60, sample=10)
    assert found.sum(1).tolist() == [10, 10, 10]  # only the sampled users can be found
    full = bank.search(q, 1)[1][:, 0]
    assert (sims[:, 0] <= full + 1e-6).all()


def test_bundle_with_an_hnsw_bank_serves_what_evaluate_measures(remi_run, tmp_path):
    from dmirec.data.sampler import eval_split
    from dmirec.evaluation.evaluate import load_run, user_vectors
    from dmirec.serving.export import export_bundle
    from dmirec.serving import load_bundle

    data_dir, run, _ = remi_run
    over = {"neighbour_alpha": 0.6, "neighbours": 3, "bank_search": "hnsw"}
    export_bundle(run, tmp_path / "b", overrides=over)
    bundle = load_bundle(tmp_path / "b")
    model, cfg, data = load_run(run, overrides=over)
    assert bundle.model.bank.search_kind == model.bank.search_kind == "hnsw"
    ev = eval_split(data.splits["test"], cfg.seq_len, max_users=20)
    assert np.array_equal(user_vectors(model, ev), user_vectors(bundle.model, ev))
    exact, _, _ = load_run(run, overrides={**over, "bank_search": "exact"})
    assert np.abs(user_vectors(exact, ev) - user_vectors(model, ev)).max() < 0.5  # approximate, not another rule
