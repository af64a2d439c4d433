"""Baselines: capsule routing (ComiRec-DR, MIND), YouTube-DNN, most-popular, REMI's loss terms,
and an end-to-end check that every trainable model beats most-popular on planted interests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmirec.config import Config
from dmirec.data.synthetic import make_planted_dataset
from dmirec.models import build_model
from dmirec.models.comirec_dr import ComiRecDR
from dmirec.models.mind import MIND
from dmirec.models.most_popular import MostPopular
from dmirec.models.remi import routing_regularizer
from dmirec.models.routing import CapsuleRouting, label_aware_readout, squash
from dmirec.models.youtube_dnn import YouTubeDNN
from dmirec.objectives.losses import sampled_softmax_loss
from dmirec.retrieval import search
from dmirec.training.train import make_config, train

N_ITEMS, D, K, L = 30, 8, 3, 6


def left_padded(lengths: list[int], seq_len: int = L, num_items: int = N_ITEMS, seed: int = 0):
    """A left-padded history batch (B, L) with the given numbers of real items, and its mask."""
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, num_items + 1, (len(lengths), seq_len), generator=g)  # (B, L)
    mask = torch.arange(seq_len).unsqueeze(0) >= seq_len - torch.tensor(lengths).unsqueeze(1)  # (B, L)
    return hist.masked_fill(~mask, 0), mask


def capsule_model(kind: str, axis: str = "positions", **kw):
    torch.manual_seed(0)
    cls = ComiRecDR if kind == "dr" else MIND
    return cls(N_ITEMS, D, K, L, routing_iters=3, routing_axis=axis, **kw)


def run(model, hist, mask, seed: int = 123):
    torch.manual_seed(seed)  # MIND draws its initial routing logits from the global generator
    return model.interests(hist, mask)


# --------------------------------------------------------------------------------------------
# capsule routing
# --------------------------------------------------------------------------------------------

def naive_routing(emb, mask, routing: CapsuleRouting, init_logits):
    """The routing equations written out with Python loops, for parity with the vectorised code."""
    b_sz, length, d = emb.shape
    k_num = routing.num_interests
    emb = emb * mask.unsqueeze(-1)
    hat = torch.zeros(b_sz, k_num, length, d)
    for b in range(b_sz):
        for l_ in range(length):
            for k in range(k_num):
                if routing.bilinear == "per_position":
                    w = routing.w[0, routing.seq_len - length + l_, k * d:(k + 1) * d]  # (D, D)
                    hat[b, k, l_] = w @ emb[b, l_]
                else:
                    hat[b, k, l_] = routing.linear.weight @ emb[b, l_]
    logits = init_logits.clone()
    for i in range(routing.routing_iters):
        dim = 2 if routing.axis == "positions" else 1
        c = torch.softmax(logits, dim=dim) * mask.unsqueeze(1)
        s = torch.zeros(b_sz, k_num, d)
        for b in range(b_sz):
            for k in range(k_num):
                s[b, k] = sum(c[b, k, l_] * hat[b, k, l_] for l_ in range(length))
        norm2 = (s ** 2).sum(-1, keepdim=True)
        v = norm2 / (1 + norm2) / torch.sqrt(norm2 + 1e-9) * s
        if i < routing.routing_iters - 1:
            logits = logits + torch.einsum("bkld,bkd->bkl", hat, v)
    return v, c


@pytest.mark.parametrize("kind", ["dr", "mind"])
@pytest.mark.parametrize("axis", ["positions", "interests"])
def test_routing_matches_naive_equations(kind, axis):
    model = capsule_model(kind, axis)
    with torch.no_grad():  # give the tiny reference-scale DR maps some size so routing matters
        for p in model.routing.parameters():
            p.normal_(0, 0.5)
    hist, mask = left_padded([6, 3, 1, 0])
    emb = model.item_emb(hist)
    torch.manual_seed(7)
    v, w = model.routing(emb, mask)
    torch.manual_seed(7)
    init = torch.randn(4, K, L) if kind == "mind" else torch.zeros(4, K, L)
    v_ref, w_ref = naive_routing(emb.detach(), mask, model.routing, init)
    assert torch.allclose(v, v_ref, atol=1e-5)
    assert torch.allclose(w, w_ref, atol=1e-6)


@pytest.mark.parametrize("kind", ["dr", "mind"])
@pytest.mark.parametrize("axis", ["positions", "interests"])
def test_routing_shapes_and_padding(kind, axis):
    model = capsule_model(kind, axis)
    hist, mask = left_padded([6, 4, 1, 0])
    v, w = run(model, hist, mask)
    assert v.shape == (4, K, D) and w.shape == (4, K, L)
    assert torch.all(w[~mask.unsqueeze(1).expand_as(w)] == 0)
    assert torch.all(v[3] == 0) and torch.all(w[3] == 0)  # empty history: no NaN, zero capsules
    assert torch.isfinite(v).all()
    if axis == "interests":  # every real position distributes itself over the K interests
        assert torch.allclose(w.sum(1)[mask], torch.ones(int(mask.sum())), atol=1e-6)
    elif kind == "dr":  # zero initial logits: the full history is normalised over its L positions
        assert torch.allclose(w[0].sum(-1), torch.ones(K), atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(0, L), min_size=1, max_size=5), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["dr", "mind"]), axis=st.sampled_from(["positions", "interests"]))
def test_padded_ids_do_not_matter(lengths, seed, kind, axis):
    model = capsule_model(kind, axis)
    hist, mask = left_padded(lengths, seed=seed)
    other = torch.where(mask, hist, torch.randint(1, N_ITEMS + 1, hist.shape))
    v1, w1 = run(model, hist, mask)
    v2, w2 = run(model, other, mask)
    assert torch.equal(v1, v2) and torch.equal(w1, w2)
    assert torch.all(w1.masked_select(~mask.unsqueeze(1)) == 0)


@pytest.mark.parametrize("kind", ["dr", "mind"])
def test_routing_axis_changes_results(kind):
    hist, mask = left_padded([6, 5, 2])
    v_pos, w_pos = run(capsule_model(kind, "positions"), hist, mask)
    v_int, w_int = run(capsule_model(kind, "interests"), hist, mask)
    assert not torch.allclose(w_pos, w_int, atol=1e-4)
    assert not torch.allclose(v_pos, v_int, atol=1e-6)


def test_positions_axis_padding_shares_mass_unless_renormalised():
    """The reference softmax over positions includes padded slots; ``renormalise`` excludes them."""
    hist, mask = left_padded([2])
    _, w_ref = run(capsule_model("dr"), hist, mask)
    _, w_ren = run(capsule_model("dr", renormalise=True), hist, mask)
    assert torch.allclose(w_ref[0, :, -2:], torch.full((K, 2), 1.0 / L), atol=1e-3)  # first rounds ~ 1/L
    assert torch.allclose(w_ren[0].sum(-1), torch.ones(K), atol=1e-6)


@pytest.mark.parametrize("kind", ["dr", "mind"])
def test_stop_gradient_and_gradient_flow(kind):
    model = capsule_model(kind)
    hist, mask = left_padded([6, 3])
    out = model.train_forward(hist, mask, torch.tensor([1, 2]))
    assert not out.weights.requires_grad  # routing logits are built from detached predictions
    out.user.sum().backward()
    maps = model.routing.w if kind == "dr" else model.routing.linear.weight
    assert maps.grad is not None and maps.grad.abs().sum() > 0


def test_mind_eval_is_stochastic_but_seeded():
    model = capsule_model("mind").eval()
    hist, mask = left_padded([6, 4])
    a = run(model, hist, mask, seed=1)[0]
    b = run(model, hist, mask, seed=1)[0]
    c = run(model, hist, mask, seed=2)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_reference_init_scale_of_dr_maps():
    """Kaiming-normal with fan-in seq_len * K * D * D, as the reference's 4-d weight gets."""
    model = ComiRecDR(200, 32, 4, 20)
    assert model.routing.w.shape == (1, 20, 4 * 32, 32)
    expected = math.sqrt(2.0 / (20 * 4 * 32 * 32))
    assert abs(model.routing.w.std().item() / expected - 1) < 0.05
    assert torch.all(model.item_emb.weight[0] == 0)


def test_mind_relu_layer_and_config():
    cfg = Config(model="mind", embedding_dim=D, num_interests=K, seq_len=L, mind_relu_layer=True,
                 routing_axis="interests", label_aware_pow=2.0)
    model = build_model(cfg, N_ITEMS)
    assert isinstance(model, MIND) and model.routing.relu is not None and model.routing.axis == "interests"
    v, _ = run(model, *left_padded([6, 2]))
    assert torch.all(v >= 0)
    dr = build_model(Config(model="comirec-dr", routing_iters=2, routing_axis="interests"), N_ITEMS)
    assert isinstance(dr, ComiRecDR) and dr.routing.routing_iters == 2 and dr.routing.relu is None


def test_squash_norm():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    v = squash(s)
    assert torch.allclose(v[0].norm(), torch.tensor(25.0 / 26.0))
    assert torch.all(v[1] == 0)


def test_label_aware_readout():
    vecs = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])  # (1, 3, 2)
    target = torch.tensor([[1.0, 1.0]])
    scores = torch.tensor([1.0, 2.0, -3.0])
    for p in (1.0, 2.0):
        att = torch.softmax(scores ** p, 0)
        assert torch.allclose(label_aware_readout(vecs, target, p)[0], att @ vecs[0])
    assert torch.allclose(label_aware_readout(vecs, target, 60.0)[0], vecs[0, 2], atol=1e-4)  # even p: |-3| wins
    assert torch.allclose(label_aware_readout(vecs, target, 61.0)[0], vecs[0, 1], atol=1e-4)  # odd p: argmax
    assert torch.isfinite(label_aware_readout(vecs, target, 1.5)).all()
    model = capsule_model("mind", label_aware_pow=1.0)
    hist, mask = left_padded([6, 3])
    torch.manual_seed(5)
    out = model.train_forward(hist, mask, torch.tensor([1, 2]))
    expect = label_aware_readout(out.interests, model.item_emb(torch.tensor([1, 2])), 1.0)
    assert torch.allclose(out.user, expect)


# --------------------------------------------------------------------------------------------
# YouTube-DNN and most-popular
# --------------------------------------------------------------------------------------------

def test_youtube_dnn_mean_pooling():
    torch.manual_seed(0)
    model = YouTubeDNN(N_ITEMS, D, L)
    hist, mask = left_padded([6, 2, 0])
    v, w = model.interests(hist, mask)
    assert v.shape == (3, 1, D) and w.shape == (3, 1, L)
    assert torch.allclose(w[1, 0, -2:], torch.full((2,), 0.5)) and torch.all(w[1, 0, :-2] == 0)
    assert torch.all(w[2] == 0) and torch.all(v[2] == 0)
    expect = model.linear(model.item_emb(hist[1, -2:]).mean(0))
    assert torch.allclose(v[1, 0], expect, atol=1e-6)
    other = torch.where(mask, hist, torch.full_like(hist, 5))
    assert torch.equal(model.interests(other, mask)[0], v)
    with pytest.raises(ValueError):
        YouTubeDNN.from_config(Config(model="youtube-dnn", num_interests=4), N_ITEMS)


def test_most_popular_ranks_by_training_count():
    counts = np.array([0, 5, 50, 0, 7, 50, 1, 3], dtype=np.int64)  # item 0 is padding
    model = build_model(Config(model="most-popular", num_interests=1), len(counts) - 1, counts)
    assert isinstance(model, MostPopular) and not model.trainable and len(list(model.parameters())) == 0
    hist, mask = left_padded([3, 0], num_items=7)
    queries = model.user_vectors(hist, mask)  # (2, 1, 1)
    assert queries.shape == (2, 1, 1)
    items = model.item_embeddings()
    assert items.shape == (8, 1) and items[0, 0] < -1e6
    res = search(queries.numpy(), items.numpy(), 5)
    assert res.ids.tolist() == [[2, 5, 4, 1, 7]] * 2
    assert model.state_dict()["scores"].shape == (8, 1)


# --------------------------------------------------------------------------------------------
# REMI's loss terms
# --------------------------------------------------------------------------------------------

def reference_atten_loss(att: torch.Tensor, hidden: int) -> torch.Tensor:
    """REMI's calculate_atten_loss written from its definition: Gram diagonal, squared norm, batch sum."""
    c = att - att.mean(dim=2, keepdim=True)
    gram = torch.bmm(c, c.transpose(1, 2)) / hidden
    return (torch.diagonal(gram, dim1=-2, dim2=-1).norm(dim=1) ** 2).sum()


def test_routing_regularizer():
    uniform = torch.full((2, K, L), 1.0 / L)
    assert routing_regularizer(uniform, D).item() == pytest.approx(0.0, abs=1e-12)
    peaked = torch.zeros(2, K, L)
    peaked[..., -1] = 1.0
    spread = torch.zeros(2, K, L)
    spread[..., -3:] = 1.0 / 3
    assert routing_regularizer(peaked, D) > routing_regularizer(spread, D) > 0
    att = torch.softmax(torch.randn(5, K, L), -1)
    assert torch.allclose(routing_regularizer(att, D), reference_atten_loss(att, D))
    # summed (not averaged) over the batch, as the reference adds it to the batch-mean loss
    assert torch.allclose(routing_regularizer(att.repeat(2, 1, 1), D), 2 * routing_regularizer(att, D))


def plain_sampled_softmax(user, target, negs, table):
    logits = torch.cat([(user * table[target]).sum(-1, keepdim=True), user @ table[negs].T], 1)
    return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()


def reference_hard_negative_loss(user, target, negs, table, beta):
    """REMI's reweighted sampled softmax written from its definition (importance / mean importance)."""
    x = torch.cat([(user * table[target]).sum(-1, keepdim=True), user @ table[negs].T], 1)
    x = x - x.max(-1, keepdim=True).values
    imp = torch.exp(beta * x[:, 1:] - (beta * x[:, 1:]).max(-1, keepdim=True).values)
    neg_mass = (imp * torch.exp(x[:, 1:])).sum(-1) / imp.mean(-1)
    return (-(x[:, 0] - torch.log(torch.exp(x[:, 0]) + neg_mass))).mean()


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, L), min_size=1, max_size=5), seed=st.integers(0, 10**6))
def test_packed_attention_logits_equal_the_full_formula(lengths, seed):
    """Self-attention logits computed at valid positions only equal W2 tanh(W1 x) masked to -inf,
    values and gradients, for any mix of history lengths (empty ones included)."""
    from dmirec.models.comirec_sa import attention_logits

    gen = torch.Generator().manual_seed(seed)
    w1, w2 = torch.nn.Linear(D, 4 * D, bias=False), torch.nn.Linear(4 * D, K, bias=False)
    x = torch.randn(len(lengths), L, D, generator=gen, requires_grad=True)
    mask = torch.tensor([[i >= L - n for i in range(L)] for n in lengths])  # left padding
    packed = attention_logits(w1, w2, x, mask)  # (B, K, L)
    full = w2(torch.tanh(w1(x))).transpose(1, 2).masked_fill(~mask.unsqueeze(1), float("-inf"))
    torch.testing.assert_close(packed, full)
    probe = torch.randn(packed.shape, generator=gen)
    g_packed = torch.autograd.grad((packed.masked_fill(~mask.unsqueeze(1), 0) * probe).sum(), [x, w1.weight])
    g_full = torch.autograd.grad((full.masked_fill(~mask.unsqueeze(1), 0) * probe).sum(), [x, w1.weight])
    for a, b in zip(g_packed, g_full):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_weighted_negative_mass_function_and_gradient(beta):
    """REMI's weighted negative mass with its hand-written backward: the closed form
    LSE((1 + beta) n) - LSE(beta n) + log S in value, and autograd's gradient (gradcheck)."""
    from dmirec.objectives.losses import _WeightedNegativeMass

    gen = torch.Generator().manual_seed(3)
    neg = (10 * torch.randn(6, 23, generator=gen, dtype=torch.float64)).requires_grad_()
    expect = torch.logsumexp((1 + beta) * neg, 1) - torch.logsumexp(beta * neg, 1) + math.log(23)
    torch.testing.assert_close(_WeightedNegativeMass.apply(neg, beta), expect)
    assert torch.autograd.gradcheck(lambda x: _WeightedNegativeMass.apply(x, beta), (neg,))


def test_hard_negatives_reduce_to_plain_sampled_softmax():
    torch.manual_seed(0)
    table = torch.randn(N_ITEMS + 1, D)
    user = torch.randn(4, D)
    target = torch.tensor([1, 5, 9, 30])
    negs = torch.randint(1, N_ITEMS + 1, (12,))
    plain = plain_sampled_softmax(user, target, negs, table)
    assert torch.allclose(sampled_softmax_loss(user, target, negs, table, hard_negative_beta=0.0), plain)
    assert torch.allclose(sampled_softmax_loss(user, target, negs, table, hard_negative_beta=1e-7), plain, atol=1e-5)
    for beta in (0.5, 1.0, 10.0):
        ours = sampled_softmax_loss(user, target, negs, table, hard_negative_beta=beta)
        assert torch.allclose(ours, reference_hard_negative_loss(user, target, negs, table, beta), atol=1e-5)
        assert ours > plain  # hard negatives get more weight, so the loss grows


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MODELS = ["comirec-sa", "comirec-dr", "mind", "remi", "youtube-dnn", "sasrec", "most-popular"]


@pytest.mark.parametrize("dataset", ["beauty", "gowalla", "sports"])
@pytest.mark.parametrize("model", MODELS)
def test_config_files(dataset, model):
    path = CONFIG_DIR / dataset / f"{model}.yaml"
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# dmirec train --data data/{dataset} --model {model} --config configs/{dataset}/")
    cfg = make_config(model, [path])
    assert cfg.model == model and cfg.seq_len == (40 if dataset == "gowalla" else 20)
    if model == "remi":
        assert (cfg.hard_negative_beta, cfg.routing_reg) == (1.0, 100.0)
    if model != "most-popular":
        assert (cfg.embedding_dim, cfg.batch_size, cfg.num_negatives, cfg.lr) == (64, 128, 1280, 1e-3)


# --------------------------------------------------------------------------------------------
# end to end: every model beats most-popular on planted interests
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    threads = torch.get_num_threads()  # the runs below set one intra-op thread; restore it after
    root = tmp_path_factory.mktemp("baselines")
    data = make_planted_dataset(root / "data", num_users=1000, num_items=200, num_clusters=10, seed=0)
    pop = train(make_config("most-popular", overrides={"progress": False, "eval_batch_size": 256,
                                                                   "threads": 1}), data,
                root / "most-popular")
    yield root, data, pop
    torch.set_num_threads(threads)


def test_most_popular_trains_with_the_loop(planted):
    from dmirec.data.dataset import load_dataset
    from dmirec.runs.rundir import load_trained_model

    root, data, pop = planted
    assert pop["steps"] == 0 and pop["stopped"] == "nothing to train"
    model, _ = load_trained_model(root / "most-popular")
    counts = load_dataset(data).item_popularity("train")
    top = search(model.user_vectors(*left_padded([3])).numpy(), model.item_embeddings().numpy(), 20).ids[0]
    assert set(counts[top]) <= set(np.sort(counts[1:])[-20:])  # the 20 largest training counts
    assert counts[top].tolist() == sorted(counts[top].tolist(), reverse=True)


@pytest.mark.parametrize("model", ["comirec-sa", "comirec-dr", "mind", "remi", "youtube-dnn"])
def test_model_beats_most_popular(planted, model):
    root, data, pop = planted
    cfg = make_config(model, overrides={"max_steps": 1000, "eval_every": 200, "embedding_dim": 32,
                                        "num_negatives": 50, "batch_size": 64, "progress": False,
                                        "eval_batch_size": 256, "threads": 1})
    result = train(cfg, data, root / model)
    ours, base = result["test"]["recall@20"], pop["test"]["recall@20"]
    assert ours >= 1.5 * base and ours >= base + 0.1, (model, ours, base)
