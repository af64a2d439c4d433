"""End-to-end training on planted synthetic data, resume equality, run-directory contents."""

import json

import pytest
import torch

from dmirec.data.synthetic import make_planted_dataset
from dmirec.evaluation.evaluate import evaluate_run
from dmirec.objectives.losses import NegativeSampler, sampled_softmax_loss
from dmirec.runs import rundir
from dmirec.training.train import make_config, resume, train

SMALL = {"embedding_dim": 24, "batch_size": 64, "num_negatives": 64, "eval_every": 100, "max_steps": 400,
         "patience": 50, "progress": False, "seq_len": 10, "lr": 0.005}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_dataset(tmp_path_factory.mktemp("planted"), num_users=600, num_items=200, num_clusters=10)


def test_comirec_sa_beats_random_retrieval(planted, tmp_path):
    cfg = make_config("comirec-sa", overrides=SMALL)
    result = train(cfg, planted, tmp_path / "run")
    random_recall_at_20 = 20 / 200
    # users have 2 of 10 clusters (40 items): a model that finds them gets far above 0.1
    assert result["test"]["recall@20"] > 3 * random_recall_at_20
    assert result["test"]["hitrate@50"] > 0.9
    rows = rundir.read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows if r["split"] == "valid"] == [100, 200, 300, 400]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 400
    # evaluate from the run directory reproduces the test metrics of the best checkpoint
    again = evaluate_run(tmp_path / "run", split="test")
    assert again["recall@50"] == pytest.approx(result["test"]["recall@50"], abs=1e-12)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(planted, tmp_path):
    cfg = make_config("comirec-sa", overrides={**SMALL, "max_steps": 300})
    full = train(cfg, planted, tmp_path / "full")

    def kill_at_250(step):
        if step == 250:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, planted, tmp_path / "cut", callback=kill_at_250)
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = resume(tmp_path / "cut")
    assert resumed["test"] == {**full["test"], "seconds": resumed["test"]["seconds"]}
    assert resumed["best_step"] == full["best_step"]
    a = rundir.load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = rundir.load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "train_seq_per_s")} for r in rows]
    assert strip(rundir.read_metrics(tmp_path / "full")) == strip(rundir.read_metrics(tmp_path / "cut"))


def test_same_seed_same_numbers_other_seed_differs(planted, tmp_path):
    cfg = make_config("comirec-sa", overrides={**SMALL, "max_steps": 100})
    a = train(cfg, planted, tmp_path / "a")["test"]
    b = train(cfg, planted, tmp_path / "b")["test"]
    c = train(cfg.replace(seed=7), planted, tmp_path / "c")["test"]
    assert a["recall@50"] == b["recall@50"] and a["ndcg@50"] == b["ndcg@50"]
    assert a["recall@50"] != c["recall@50"] or a["ndcg@50"] != c["ndcg@50"]


def test_plain_sampled_softmax_is_cross_entropy_over_target_and_negatives():
    torch.manual_seed(0)
    table = torch.randn(11, 4)
    user = torch.randn(3, 4)
    target = torch.tensor([1, 5, 10])
    negs = torch.tensor([2, 3, 5, 7])
    loss = sampled_softmax_loss(user, target, negs, table)
    manual = []
    for b in range(3):
        logits = torch.cat([(user[b] * table[target[b]]).sum().view(1), user[b] @ table[negs].T])
        manual.append(-torch.log_softmax(logits, 0)[0])
    assert loss.item() == pytest.approx(torch.stack(manual).mean().item(), rel=1e-6)
    # accidental-hit removal drops exactly the negative equal to the target (row 1 has target 5)
    removed = sampled_softmax_loss(user, target, negs, table, remove_accidental_hits=True)
    logits = torch.cat([(user[1] * table[5]).sum().view(1), user[1] @ table[torch.tensor([2, 3, 7])].T])
    row1 = -torch.log_softmax(logits, 0)[0]
    expect = (manual[0] + row1 + manual[2]) / 3
    assert removed.item() == pytest.approx(expect.item(), rel=1e-6)


def test_log_uniform_sampler_prefers_low_ids_and_stays_in_range():
    s = NegativeSampler(1000, "log_uniform")
    ids = s.sample(20000, torch.Generator().manual_seed(0))
    assert ids.min() >= 1 and ids.max() <= 1000
    assert (ids <= 10).float().mean() > 0.25  # P(rank <= 10) = log(11)/log(1001) ~ 0.35
    assert torch.allclose(s.log_probs[1:].exp().sum(), torch.tensor(1.0), atol=1e-4)
    u = NegativeSampler(50, "uniform").sample(5000, torch.Generator().manual_seed(0))
    assert u.min() >= 1 and u.max() <= 50
