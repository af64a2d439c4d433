"""COIN baseline: encoder contract and masking, the bank contrastive loss, end-to-end training with its rule."""

import pytest
import torch

from dmirec.data.synthetic import make_planted_dataset
from dmirec.models import build_model
from dmirec.models.coin import COIN
from dmirec.training.train import make_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**over):
    cfg = make_config("coin", overrides={"embedding_dim": 8, "seq_len": 6, "num_interests": 3, **over})
    torch.manual_seed(0)
    return build_model(cfg, 30), cfg


def test_coin_defaults_and_shapes_and_padding():
    model, cfg = tiny()
    assert isinstance(model, COIN) and model.bank is not None
    assert cfg.hard_negative_beta == 1.0 and cfg.routing_reg == 100.0 and cfg.neighbour_alpha == 0.55
    hist = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7], [0] * 6])
    mask = hist > 0
    model.eval()
    v, w = model.interests(hist, mask)
    assert v.shape == (3, 3, 8) and w.shape == (3, 3, 6) and torch.isfinite(v).all()
    assert torch.equal(w[:, :, :2], torch.zeros(3, 3, 2)) and torch.equal(v[2], torch.zeros(3, 8))
    other = torch.where(mask, hist, torch.full_like(hist, 9))
    assert torch.allclose(model.interests(other, mask)[0], v, atol=1e-6)  # padding ids change nothing


def test_contrastive_loss_prefers_anchors_near_the_targets_neighbours():
    model, _ = tiny(coin_negatives=2, neighbours=1, coin_temperature=0.5)
    e = torch.eye(8)
    # bank: user 0 interests near e0, user 1 near e1, user 2 near -e0 (all K=3 interests alike)
    model.bank.set(torch.stack([e[0].expand(3, 8), e[1].expand(3, 8), -e[0].expand(3, 8)]), torch.arange(3))
    target = e[0].unsqueeze(0)  # the target item points along e0: positive = user 0
    good = model.contrastive_loss(e[0].unsqueeze(0), target, None)
    bad = model.contrastive_loss(-e[0].unsqueeze(0), target, None)
    assert good < bad
    # the user's own entry is never a candidate: with user 0 excluded the positive is user 1
    ex = model.contrastive_loss(e[1].unsqueeze(0), target, torch.tensor([0]))
    assert ex < model.contrastive_loss(e[1].unsqueeze(0), target, None)
    # no bank: no loss
    model.bank.set(torch.zeros(0, 3, 8), torch.zeros(0, dtype=torch.long))
    assert model.contrastive_loss(e[0].unsqueeze(0), target, None) == 0


def plain_contrastive_loss(model, anchor, target_emb, users, pick):
    """COIN's loss written out directly: gathered candidate vectors, one InfoNCE term per positive,
    averaged over all candidate slots; ``pick`` is the sampled bank users (or all of them)."""
    F = torch.nn.functional
    cand = F.normalize(model.bank.vectors[pick], dim=-1)  # (S, K, D)
    scores = torch.einsum("bd,skd->bsk", F.normalize(target_emb, dim=-1), cand)  # (B, S, K)
    best, best_k = scores.max(dim=2)
    worst, worst_k = scores.min(dim=2)
    own = model.bank.owners[pick].unsqueeze(0) == users.unsqueeze(1)
    best, worst = best.masked_fill(own, float("-inf")), worst.masked_fill(own, float("inf"))
    n, m = min(model.num_positives, len(pick)), min(model.num_negatives, len(pick))
    pos_i, neg_i = best.topk(n, dim=1).indices, (-worst).topk(m, dim=1).indices
    a = F.normalize(anchor, dim=-1)
    total = anchor.new_zeros(())
    for b in range(anchor.shape[0]):
        vecs = torch.cat([cand[pos_i[b], best_k[b, pos_i[b]]], cand[neg_i[b], worst_k[b, neg_i[b]]]])  # (n + m, D)
        logits = vecs @ a[b] / model.temperature
        total = total + (torch.logsumexp(logits, 0) - logits[:n]).sum()
    return total / (anchor.shape[0] * (n + m))


@pytest.mark.parametrize("bank_sample", [1000, 25])
def test_contrastive_loss_equals_its_plain_definition(bank_sample):
    model, _ = tiny(coin_negatives=12, neighbours=3, coin_temperature=0.3, coin_bank_sample=bank_sample)
    gen = torch.Generator().manual_seed(3)
    model.bank.set(torch.randn(40, 3, 8, generator=gen), torch.arange(40) + 1)
    anchor = torch.randn(5, 8, generator=gen, requires_grad=True)
    target = torch.randn(5, 8, generator=gen)
    users = torch.tensor([1, 7, 7, 40, 99])  # 99 is in no bank entry
    torch.manual_seed(11)  # the same bank sample for both
    fast = model.contrastive_loss(anchor, target, users)
    torch.manual_seed(11)
    pick = torch.randperm(40)[:bank_sample] if bank_sample < 40 else torch.arange(40)
    plain = plain_contrastive_loss(model, anchor, target, users, pick)
    assert torch.allclose(fast, plain, rtol=1e-6, atol=1e-8) and fast > 0
    g_fast, = torch.autograd.grad(fast, anchor)
    g_plain, = torch.autograd.grad(plain, anchor)
    assert torch.allclose(g_fast, g_plain, rtol=1e-5, atol=1e-7)


def test_coin_trains_end_to_end_and_its_rule_is_used(tmp_path):
    data = make_planted_dataset(tmp_path / "d", num_users=400, num_items=120, num_clusters=6)
    over = {"embedding_dim": 16, "seq_len": 10, "batch_size": 64, "num_negatives": 64, "max_steps": 300,
            "eval_every": 50, "progress": False, "lr": 0.005, "threads": 1, "coin_negatives": 64}
    result = train(make_config("coin", overrides=over), data, tmp_path / "coin")
    popular = train(make_config("most-popular", overrides={k: v for k, v in over.items() if k != "coin_negatives"}),
                    data, tmp_path / "pop")
    assert result["test"]["recall@20"] > 2 * 20 / 120 and result["test"]["recall@20"] > popular["test"]["recall@20"]
    from dmirec.evaluation.evaluate import evaluate_run

    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
    with_rule = strip(evaluate_run(tmp_path / "coin", "test"))
    assert with_rule == strip(result["test"])
    assert strip(evaluate_run(tmp_path / "coin", "test", overrides={"neighbour_alpha": 0.0})) != with_rule
