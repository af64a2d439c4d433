"""SASRec: shapes, causality, padding, one-item histories, its config keys, seeded training, and
an end-to-end check that it learns planted interests."""

from __future__ import annotations

import pytest
import torch

from dmirec.config import ConfigError, make_config
from dmirec.data.synthetic import make_planted_dataset
from dmirec.models import build_model
from dmirec.models.sasrec import SASRec, attention_block_mask
from dmirec.training.train import train

N_ITEMS, D, L = 40, 16, 8


def left_padded(lengths: list[int], seq_len: int = L, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded history batch (B, L) with the given numbers of real items, and its mask (B, L)."""
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, N_ITEMS + 1, (len(lengths), seq_len), generator=g)  # (B, L)
    mask = torch.arange(seq_len).unsqueeze(0) >= seq_len - torch.tensor(lengths).unsqueeze(1)  # (B, L)
    return hist.masked_fill(~mask, 0), mask


def model(**kw) -> SASRec:
    torch.manual_seed(0)
    m = SASRec(N_ITEMS, D, L, **{"num_blocks": 2, "num_heads": 2, "dropout": 0.2, **kw})
    return m.eval()


def test_shapes_and_weights():
    m = model()
    hist, mask = left_padded([8, 5, 1, 3])
    v, w = m.interests(hist, mask)
    assert v.shape == (4, 1, D) and w.shape == (4, 1, L)
    assert torch.isfinite(v).all() and torch.isfinite(w).all()
    assert torch.allclose(w.sum(-1), torch.ones(4, 1), atol=1e-5)  # the last position's attention
    assert (w[~mask.unsqueeze(1)] == 0).all() and (w[mask.unsqueeze(1)] > 0).all()
    assert m.user_vectors(hist, mask).shape == (4, 1, D)


def test_a_later_position_does_not_change_an_earlier_one():
    m = model()
    hist, mask = left_padded([8, 6])
    before, _ = m.hidden_states(hist, mask)  # (B, L, D)
    changed = hist.clone()
    changed[:, 5:] = (changed[:, 5:] % N_ITEMS) + 1  # other real items at positions 5..7
    after, _ = m.hidden_states(changed, mask)
    assert torch.allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert not torch.allclose(before[:, 5:], after[:, 5:], atol=1e-3)  # the changed positions do move


def test_the_attention_mask_is_causal_and_blocks_padding():
    mask = torch.tensor([[False, False, True, True]])
    blocked = attention_block_mask(mask, num_heads=3)  # (3, 4, 4)
    assert blocked.shape == (3, 4, 4) and (blocked[0] == blocked[2]).all()
    allowed = ~blocked[0]
    assert allowed[3].tolist() == [False, False, True, True]  # the last position: the real items up to it
    assert allowed[2].tolist() == [False, False, True, False]  # never a later position
    assert allowed[0].tolist() == [True, False, False, False]  # a padding query: itself only


def test_padding_content_does_not_matter():
    m = model()
    hist, mask = left_padded([3, 1, 6])
    noisy = torch.where(mask, hist, torch.randint(1, N_ITEMS + 1, hist.shape))  # real ids under the padding
    v, w = m.interests(hist, mask)
    v2, w2 = m.interests(noisy, mask)
    assert torch.allclose(v, v2, atol=1e-6) and torch.allclose(w, w2, atol=1e-6)


def test_one_item_history_and_empty_history():
    m = model()
    hist, mask = left_padded([1, 0])
    v, w = m.interests(hist, mask)
    assert torch.isfinite(v).all() and v[0].norm() > 0
    assert w[0, 0].tolist() == [0.0] * (L - 1) + [1.0]  # all attention on the one item
    assert (v[1] == 0).all() and (w[1] == 0).all()  # nothing to read: a zero vector, no NaN
    # the one item decides the vector: another item gives another vector
    other = hist.clone()
    other[0, -1] = hist[0, -1] % N_ITEMS + 1
    assert not torch.allclose(m.interests(other, mask)[0][0], v[0])


def test_longer_histories_keep_their_last_items():
    m = model()
    hist, mask = left_padded([8])
    longer = torch.cat([torch.randint(1, N_ITEMS + 1, (1, 5)), hist], dim=1)  # (1, L + 5)
    m.history_len = L
    assert torch.allclose(m.user_vectors(longer, longer > 0), m.user_vectors(hist, mask), atol=1e-6)


def test_dropout_only_in_training():
    m = model(dropout=0.5)
    hist, mask = left_padded([8, 4])
    assert torch.equal(m.interests(hist, mask)[0], m.interests(hist, mask)[0])  # eval: deterministic
    m.train()
    assert not torch.equal(m.interests(hist, mask)[0], m.interests(hist, mask)[0])


def test_gradients_reach_every_parameter():
    m = model().train()
    hist, mask = left_padded([8, 3])
    out = m.train_forward(hist, mask, torch.tensor([1, 2]))
    out.user.pow(2).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_config_keys_and_defaults():
    cfg = make_config("sasrec")
    assert (cfg.num_interests, cfg.sasrec_blocks, cfg.sasrec_heads, cfg.sasrec_dropout) == (1, 2, 1, 0.2)
    m = build_model(cfg.replace(sasrec_blocks=3, sasrec_heads=4), num_items=N_ITEMS)
    assert isinstance(m, SASRec) and len(m.blocks) == 3 and m.blocks[0].attn.num_heads == 4
    with pytest.raises(ConfigError, match="sasrec_heads"):
        make_config("sasrec", overrides={"sasrec_heads": 3})  # 64 is not divisible by 3
    with pytest.raises(ConfigError, match="sasrec_dropout"):
        make_config("sasrec", overrides={"sasrec_dropout": 1.0})
    with pytest.raises(ConfigError, match="sasrec_blocks"):
        make_config("sasrec", overrides={"sasrec_blocks": 0})
    with pytest.raises(ValueError, match="single interest"):
        build_model(make_config("sasrec", overrides={"num_interests": 4}), num_items=N_ITEMS)


# ---- training ----------------------------------------------------------------------------------

TRAIN = {"embedding_dim": 32, "num_negatives": 50, "batch_size": 64, "progress": False, "eval_batch_size": 256,
         "threads": 1, "seq_len": 10}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    threads = torch.get_num_threads()  # the runs below set one intra-op thread; restore it after
    root = tmp_path_factory.mktemp("sasrec")
    data = make_planted_dataset(root / "data", num_users=1000, num_items=200, num_clusters=10, seed=0)
    yield root, data
    torch.set_num_threads(threads)


def test_learns_planted_interests(planted):
    root, data = planted
    pop = train(make_config("most-popular", overrides={**TRAIN}), data, root / "pop")
    # a larger learning rate than the protocol's, so that a few hundred steps suffice
    result = train(make_config("sasrec", overrides={**TRAIN, "max_steps": 300, "eval_every": 100, "lr": 5e-3}), data,
                   root / "sasrec")
    ours, base = result["test"]["recall@20"], pop["test"]["recall@20"]
    assert ours >= 1.5 * base and ours >= base + 0.1, (ours, base)


def test_same_seed_same_run_other_seed_other_run(planted):
    root, data = planted
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        cfg = make_config("sasrec", overrides={**TRAIN, "max_steps": 40, "eval_every": 20, "seed": seed})
        runs[name] = train(cfg, data, root / f"seed-{name}")
    assert runs["a"]["test"] == {**runs["b"]["test"], "seconds": runs["a"]["test"]["seconds"]}
    weights = {n: torch.load(root / f"seed-{n}" / "checkpoints" / "last.pt", weights_only=False)["model"]
               for n in runs}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not torch.equal(weights["a"]["positions"], weights["c"]["positions"])
