"""DMI's collaborative and target-supervised switches: keys from the bank and the other interests,
the next-item target with condition dropout and guidance, generated vectors as extra queries."""

import pytest
import torch

from dmirec.data.synthetic import make_planted_dataset
from dmirec.models import build_model
from dmirec.training.train import make_config, train

N_ITEMS, L, D, K = 40, 8, 16, 3
TINY = {"embedding_dim": D, "num_interests": K, "seq_len": L, "denoiser_heads": 2, "prune_m": 3, "neighbours": 2}
COLLAB = {"dmi_keys": "items,neighbours,others"}
TARGET = {**COLLAB, "dmi_target": "next_item", "cond_dropout": 0.1}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(over=None, seed=0):
    cfg = make_config("dmi", overrides={**TINY, **(over or {})})
    torch.manual_seed(seed)
    model = build_model(cfg, N_ITEMS)
    if getattr(model, "bank", None) is not None:
        g = torch.Generator().manual_seed(5)
        model.bank.set(torch.randn(6, K, D, generator=g), torch.arange(6))
    return model, cfg


def perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def batch(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, 1, 3, 5, 2, 7, 4][:b])
    mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)
    history = torch.randint(1, N_ITEMS + 1, (b, L), generator=g) * mask
    target = torch.randint(1, N_ITEMS + 1, (b,), generator=g)
    return history, mask, target


@pytest.mark.parametrize("over", [COLLAB, {"dmi_keys": "neighbours"}, {"dmi_keys": "others"}, TARGET,
                                  {**TARGET, "dmi_output": "extra"}])
def test_variants_build_train_one_step_and_ignore_padding(over):
    model, cfg = make(over)
    assert (getattr(model, "bank", None) is not None) == ("neighbours" in cfg.dmi_keys)
    perturb(model)
    history, mask, target = batch(7)
    other = torch.where(mask, history, torch.randint(1, N_ITEMS + 1, history.shape))
    model.eval()
    u = model.user_vectors(history, mask)
    width = 2 * K if cfg.dmi_output == "extra" else K
    assert u.shape == (7, width, D) and torch.isfinite(u).all()
    assert torch.equal(u, model.user_vectors(other, mask))
    model.train()
    opt = torch.optim.Adam(model.param_groups(cfg), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model.train_forward(history, mask, target, torch.arange(7))
    loss = (out.user * model.item_embeddings()[target]).sum().neg() + out.aux_loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert any(k.startswith("denoiser.") for k in changed) and any(k.startswith("backbone.") for k in changed)
    assert not any(k.startswith("bank.") for k in changed)  # the bank is data, rebuilt at validation


def test_untrained_collaborative_refiner_is_the_identity():
    model, _ = make({**COLLAB, "fusion_weight": 0.5})
    model.eval()
    history, mask, _ = batch()
    assert torch.allclose(model.user_vectors(history, mask), model.interests(history, mask)[0], atol=1e-6)


def test_neighbour_keys_leave_the_users_own_entry_out_in_training():
    model, _ = make({"dmi_keys": "neighbours", "neighbours": 6})
    history, mask, _ = batch(2)
    vecs, weights = model.interests(history, mask)
    _, keep_all = model.memory(vecs, weights, history, mask)
    _, keep_own = model.memory(vecs, weights, history, mask, users=torch.tensor([0, 3]))
    assert keep_all.all()  # 6 bank users, n = 6
    assert keep_own.sum(1).tolist() == [5] * (2 * K)  # one entry (the user's own) left out


def test_guidance_one_is_the_conditional_output_and_other_weights_extrapolate():
    model, _ = make({**TARGET, "guidance": 1.0})
    perturb(model).eval()
    history, mask, _ = batch()
    vecs, weights = model.interests(history, mask)
    keys, keep = model.memory(vecs, weights, history, mask)
    x0 = vecs / model.scale()
    cond = model.process.sample(model.denoiser, x0, keys, keep)
    uncond = model.process.sample(model.denoiser, x0, keys, torch.zeros_like(keep))
    assert torch.equal(model.refine(history, mask)["v0_hat"], cond * model.scale())
    model.guidance = 3.0
    assert torch.allclose(model.refine(history, mask)["v0_hat"], (uncond + 3.0 * (cond - uncond)) * model.scale(),
                          atol=1e-6)
    assert not torch.allclose(cond, uncond)


def test_next_item_target_pulls_the_selected_interest_toward_the_target():
    """With the process's output the only thing trained, the reconstruction error against the
    target embedding falls."""
    model, cfg = make({**TARGET, "cond_dropout": 0.0, "fusion_weight": 0.5, "noise_scale": 0.1})
    history, mask, target = batch(7)
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=1e-2)
    model.train()
    losses = []
    for step in range(60):
        torch.manual_seed(step)
        out = model.train_forward(history, mask, target)
        opt.zero_grad()
        out.aux_loss.backward()
        opt.step()
        losses.append(float(out.aux_loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_collaborative_dmi_trains_end_to_end(tmp_path):
    data = make_planted_dataset(tmp_path / "d", num_users=400, num_items=120, num_clusters=6)
    over = {"embedding_dim": 16, "seq_len": 10, "batch_size": 64, "num_negatives": 64, "max_steps": 200,
            "eval_every": 100, "progress": False, "lr": 0.005, "threads": 1, **COLLAB}
    result = train(make_config("dmi", overrides=over), data, tmp_path / "dmi")
    assert result["test"]["recall@20"] > 2 * 20 / 120
    from dmirec.runs import rundir

    best = rundir.load_checkpoint(tmp_path / "dmi" / "checkpoints" / "best.pt")["model"]
    assert best["bank.vectors"].shape[1:] == (4, 16) and best["bank.vectors"].shape[0] > 0
