"""Row-sparse item-table updates: same gradients and SGD steps as dense, and a sparse run trains."""

import copy

import numpy as np
import pytest
import torch

from dmirec.config import ConfigError
from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import TrainSampler
from dmirec.data.synthetic import make_planted_dataset
from dmirec.models import build_model
from dmirec.objectives.losses import NegativeSampler
from dmirec.training.optim import Optimizers, make_optimizer, set_sparse, use_sparse
from dmirec.training.train import batch_loss, make_config, train

SMALL = {"embedding_dim": 16, "batch_size": 32, "num_negatives": 40, "seq_len": 10, "progress": False,
         "device": "cpu"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_dataset(tmp_path_factory.mktemp("planted"), num_users=600, num_items=200, num_clusters=10)


def _sgd_steps(model, cfg, data, steps):
    """``steps`` plain-SGD steps on seeded batches; returns the item table's last gradient."""
    sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=3)
    negatives = NegativeSampler(data.num_items)
    gen = torch.Generator().manual_seed(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    grad = None
    for _ in range(steps):
        b = sampler.sample()
        loss = batch_loss(model, cfg, torch.from_numpy(b.history), torch.from_numpy(b.mask),
                          torch.from_numpy(b.target), negatives, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = model.item_emb.weight.grad
        opt.step()
    return grad


@pytest.mark.parametrize("name", ["remi", "comirec-dr", "dmi"])
def test_sparse_and_dense_sgd_give_the_same_parameters(planted, name):
    data = load_dataset(planted)
    cfg = make_config(name, overrides=SMALL)
    torch.manual_seed(0)
    dense = build_model(cfg, data.num_items, data.item_popularity())
    sparse = copy.deepcopy(dense)
    set_sparse(sparse, True)
    before = dense.item_emb.weight.detach().clone()
    torch.manual_seed(1)
    g_dense = _sgd_steps(dense, cfg, data, 4)
    torch.manual_seed(1)
    g_sparse = _sgd_steps(sparse, cfg, data, 4)
    assert not g_dense.is_sparse and g_sparse.is_sparse
    # only the rows the batch touched are in the sparse gradient, far fewer than the catalogue
    assert g_sparse.coalesce().indices().shape[1] < data.num_items
    torch.testing.assert_close(g_sparse.to_dense(), g_dense, rtol=1e-5, atol=1e-6)
    for (key, a), (_, b) in zip(dense.state_dict().items(), sparse.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
    # and the step moved the table (the comparison is not between two untouched copies)
    assert not torch.equal(dense.item_emb.weight.detach(), before)


@pytest.mark.parametrize("name", ["remi", "comirec-sa", "dmi"])
def test_sparse_lookups_into_a_dense_gradient_give_dense_adam(planted, name):
    """One process: dense Adam reads its table gradient from sparse lookups added into one kept
    dense tensor (dmirec.training.optim.prepare_table_grad); the parameters follow dense lookups' within float noise."""
    from dmirec.training.optim import setup_table
    from dmirec.training.train import train_step

    data = load_dataset(planted)
    cfg = make_config(name, overrides=SMALL)
    torch.manual_seed(0)
    plain = build_model(cfg, data.num_items, data.item_popularity())
    kept = copy.deepcopy(plain)
    set_sparse(plain, False)  # dense lookups (what DDP runs use)
    setup_table(kept, cfg, data.num_items)  # the single-process default
    assert kept.item_emb.sparse and not plain.item_emb.sparse
    before = plain.item_emb.weight.detach().clone()
    grads = []
    for model in (plain, kept):
        torch.manual_seed(1)
        sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=3)
        negatives, gen, opt = NegativeSampler(data.num_items), torch.Generator().manual_seed(4), make_optimizer(model, cfg)
        assert isinstance(opt, torch.optim.Adam)  # dense Adam in both
        for _ in range(5):
            train_step(model, opt, cfg, sampler.sample(), negatives, gen, "cpu")
        grads.append(model.item_emb.weight.grad)
    assert not grads[0].is_sparse and not grads[1].is_sparse
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert grads[1] is kept.item_emb.kept_grad  # the same tensor every step, not a new allocation
    for (key, a), (_, b) in zip(plain.state_dict().items(), kept.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(plain.item_emb.weight.detach(), before)


def test_a_table_without_gradient_is_skipped_by_adam():
    """With sparse lookups and dense Adam, a step in which the table got no gradient (a frozen
    backbone's detached lookups) leaves ``grad = None``: Adam skips the table, weight decay included."""
    from dmirec.training.optim import finish_table_grad, prepare_table_grad, setup_table

    cfg = make_config("remi", overrides={**SMALL, "weight_decay": 0.1})
    model = build_model(cfg, 50)
    setup_table(model, cfg, 50)
    opt = make_optimizer(model, cfg)
    before = model.item_emb.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        prepare_table_grad(model)
        rows = model.item_rows(torch.tensor([[1, 2, 0]])).detach()  # looked up, but no gradient flows
        model.w1(rows).sum().backward()
        finish_table_grad(model)
        assert model.item_emb.weight.grad is None
        opt.step()
    assert torch.equal(model.item_emb.weight.detach(), before)
    opt.zero_grad(set_to_none=True)
    prepare_table_grad(model)
    model.item_rows(torch.tensor([[1, 2, 2]])).sum().backward()  # now it does get one
    finish_table_grad(model)
    grad = model.item_emb.weight.grad
    assert grad is model.item_emb.kept_grad and not grad.is_sparse and grad[2].sum().item() == pytest.approx(2 * 16) and grad[4].abs().sum() == 0


def test_optimizer_choice():
    cfg = make_config("remi", overrides={"sparse_min_items": 1000})
    assert not use_sparse(cfg, 999) and use_sparse(cfg, 1000)
    assert not use_sparse(cfg.replace(weight_decay=1e-4), 10**6)  # auto stays dense with decay
    assert use_sparse(cfg.replace(embedding_optimizer="sparse"), 10)
    assert not use_sparse(cfg.replace(embedding_optimizer="dense"), 10**6)
    with pytest.raises(ConfigError, match="weight_decay"):
        make_config("remi", overrides={"embedding_optimizer": "sparse", "weight_decay": 0.1})
    model = build_model(cfg, 50)
    set_sparse(model, True)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, Optimizers)
    kinds = [type(o).__name__ for o in opt.optimizers]
    assert kinds == ["Adam", "SparseAdam"]
    assert opt.optimizers[1].param_groups[0]["params"][0] is model.item_emb.weight
    assert all(p is not model.item_emb.weight for g in opt.optimizers[0].param_groups for p in g["params"])


def test_sparse_run_trains_and_checkpoints_its_optimizer(planted, tmp_path, name="remi"):
    over = {**SMALL, "embedding_optimizer": "sparse", "max_steps": 300, "eval_every": 150, "patience": 50,
            "lr": 0.01, "batch_size": 64}
    result = train(make_config(name, overrides=over), planted, tmp_path / "run")
    # users hold 2 of 10 clusters: far above the 0.1 of random retrieval at 20 of 200 items
    assert result["test"]["recall@20"] > 0.3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert len(ckpt["optimizer"]["optimizers"]) == 2  # the SparseAdam moments are checkpointed
    assert np.isfinite(result["valid_recall@50"])


def test_bf16_autocast_runs_on_cpu(planted, tmp_path):
    """The bf16 key is meant for CUDA (tests/test_gpu.py); on CPU it must still train and log finite losses."""
    over = {**SMALL, "bf16": True, "max_steps": 40, "eval_every": 20, "lr": 0.01}
    result = train(make_config("remi", overrides=over), planted, tmp_path / "run")
    from dmirec.runs import rundir

    losses = [r["loss"] for r in rundir.read_metrics(tmp_path / "run") if r["split"] == "valid"]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
    assert result["test"]["recall@50"] > 0.25  # 50 of 200 items at random


class _Interrupt(Exception):
    pass


def test_sparse_run_resumes_exactly(planted, tmp_path):
    """SparseAdam's moments and step counts are checkpointed: a resumed run retraces the steps."""
    from dmirec.runs import rundir
    from dmirec.training.train import resume

    cfg = make_config("remi", overrides={**SMALL, "embedding_optimizer": "sparse", "max_steps": 60,
                                         "eval_every": 30, "lr": 0.01})
    train(cfg, planted, tmp_path / "full")

    def cut(step):
        if step == 45:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(cfg, planted, tmp_path / "cut", callback=cut)
    resume(tmp_path / "cut")
    a = rundir.load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = rundir.load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
