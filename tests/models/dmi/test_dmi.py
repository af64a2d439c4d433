"""DMI wrapped around the multi-interest backbones: contract, masking, exactness, ablations, end to end."""


import pytest
import torch

from dmirec.data.synthetic import make_planted_dataset
from dmirec.models import build_model
from dmirec.models.dmi.model import DMI
from dmirec.objectives.losses import sampled_softmax_loss
from dmirec.training.train import make_config, train

N_ITEMS, L, D, K = 40, 8, 16, 3
TINY = {"embedding_dim": D, "num_interests": K, "seq_len": L, "denoiser_heads": 2, "prune_m": 3}
BACKBONES = ["comirec-sa", "comirec-dr", "mind"]
BACKBONE_MODULES = {"comirec-sa": "dmirec.models.comirec_sa", "comirec-dr": "dmirec.models.comirec_dr",
                    "mind": "dmirec.models.mind"}

ABLATIONS = {
    "default": {},
    "no_diffusion": {"fusion_weight": 0.0},
    "no_noise": {"no_noise": True},
    "T1": {"diffusion_steps": 1, "start_step": 1},
    "no_pruning": {"prune": "none"},
    "threshold_pruning": {"prune": "threshold"},
    "mlp_denoiser": {"denoiser": "mlp"},
    "no_step_token": {"step_token": False},
    "no_step_token_mlp": {"step_token": False, "denoiser": "mlp"},
    "dim_mask": {"noise_kind": "dim_mask"},
    "stochastic": {"sampler": "ancestral"},
    "strided": {"diffusion_steps": 12, "start_step": 8, "reverse_steps": 3},
    "cosine": {"schedule": "cosine", "noise_scale": 0.5},
    "train_chain": {"train_chain": True, "reverse_steps": 4},
    "train_chain_stochastic_mask": {"train_chain": True, "sampler": "ancestral", "noise_kind": "dim_mask"},
    "raw_scale": {"normalize_scale": False},
    "eta1_two_blocks": {"fusion_weight": 1.0, "denoiser_blocks": 2},
    "frozen": {"freeze_backbone_steps": 1, "refiner_lr_scale": 0.1},
    "big_m_and_K": {"prune_m": 20, "num_interests": 5},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is fastest


def make_dmi(overrides=None, backbone="comirec-sa", seed=0):
    cfg = make_config("dmi", overrides={**TINY, "backbone": backbone, **(overrides or {})})
    torch.manual_seed(seed)
    return build_model(cfg, N_ITEMS), cfg


def perturb_refiner(model, seed=1):
    """Make the (identity-initialised) refiner do something, as a trained one would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        model.rms.fill_(0.7)
    return model


def batch(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, 1, 3, 5, 2, 7, 4][:b])
    mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)  # (b, L) left padding
    history = torch.randint(1, N_ITEMS + 1, (b, L), generator=g) * mask  # padding id 0
    target = torch.randint(1, N_ITEMS + 1, (b,), generator=g)
    return history, mask, target


def full_loss(model, cfg, history, mask, target, seed=123):
    torch.manual_seed(seed)
    out = model.train_forward(history, mask, target)
    negs = torch.arange(1, N_ITEMS + 1)
    loss = sampled_softmax_loss(out.user, target, negs, model.item_embeddings(), None, False,
                                cfg.hard_negative_beta)
    return loss + out.aux_loss, out  # aux_loss holds REMI's routing regulariser (the one aux-loss route)


# ---- contract and shapes ----------------------------------------------------------------------

@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_for_every_backbone(backbone):
    pytest.importorskip(BACKBONE_MODULES[backbone])
    model, cfg = make_dmi(backbone=backbone)
    perturb_refiner(model)
    history, mask, target = batch()
    torch.manual_seed(3)  # MIND draws its initial routing logits from the global RNG on every call
    vecs, weights = model.interests(history, mask)
    assert vecs.shape == (5, K, D) and weights.shape == (5, K, L)
    u = model.user_vectors(history, mask)
    assert u.shape == (5, K, D) and torch.isfinite(u).all()
    torch.manual_seed(3)
    out = model.train_forward(history, mask, target)
    assert out.user.shape == (5, D) and out.interests.shape == (5, K, D) and out.aux_loss.dim() == 0
    assert torch.equal(out.weights, weights)  # the backbone's W, for REMI's routing regulariser
    assert model.item_embeddings() is model.backbone.item_embeddings()
    assert model.item_embeddings().shape == (N_ITEMS + 1, D)


def test_item_table_is_shared_not_duplicated():
    model, _ = make_dmi()
    keys = model.state_dict().keys()
    assert "backbone.item_emb.weight" in keys and "item_emb.weight" not in keys
    assert model.item_emb is model.backbone.item_emb
    assert {"rms", "rms_ready", "train_calls"} <= set(keys)


def test_param_groups_split_backbone_and_refiner():
    model, cfg = make_dmi({"refiner_lr_scale": 0.25, "lr": 0.01})
    groups = model.param_groups(cfg)
    assert [g["lr"] for g in groups] == [0.01, 0.0025]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {id(p) for p in model.parameters()}
    assert ids[0] == {id(p) for p in model.backbone.parameters()}


# ---- exactness and determinism ----------------------------------------------------------------

@pytest.mark.parametrize("backbone", BACKBONES)
def test_eta_zero_is_the_backbone_exactly(backbone):
    pytest.importorskip(BACKBONE_MODULES[backbone])
    model, _ = make_dmi({"fusion_weight": 0.0}, backbone=backbone)
    perturb_refiner(model)
    history, mask, target = batch()
    torch.manual_seed(4)  # MIND's routing is stochastic
    u = model.user_vectors(history, mask)
    torch.manual_seed(4)
    assert torch.equal(u, model.backbone.interests(history, mask)[0])
    torch.manual_seed(5)
    a = model.train_forward(history, mask, target)
    torch.manual_seed(5)
    b = model.backbone.train_forward(history, mask, target)
    assert torch.equal(a.user, b.user) and torch.equal(a.interests, b.interests)


@pytest.mark.parametrize("overrides", [{}, {"noise_kind": "dim_mask"}, {"denoiser": "mlp"},
                                       {"start_step": 4, "reverse_steps": 2}])
def test_untrained_refiner_is_the_identity(overrides):
    """The residual head starts at zero: at initialisation DMI serves the backbone's interests."""
    model, _ = make_dmi({"fusion_weight": 0.5, **overrides})
    model.eval()
    history, mask, _ = batch()
    assert torch.allclose(model.user_vectors(history, mask), model.interests(history, mask)[0], atol=1e-6)


@pytest.mark.parametrize("stochastic", [False, True])
def test_evaluation_is_deterministic(stochastic):
    model, _ = make_dmi({"sampler": "ancestral" if stochastic else "posterior_mean"})
    perturb_refiner(model).eval()
    history, mask, _ = batch()
    torch.manual_seed(0)
    a = model.user_vectors(history, mask)
    torch.manual_seed(1)  # the global RNG plays no part
    b = model.user_vectors(history, mask)
    assert torch.equal(a, b)
    assert not torch.allclose(a, model.interests(history, mask)[0])  # the refiner did something
    if stochastic:
        model.process.sampler = "posterior_mean"
        assert not torch.equal(model.user_vectors(history, mask), a)


def test_refinement_is_the_documented_chain():
    """user_vectors = w * c * chain(v0 / c) + (1 - w) * V with the deterministic posterior chain."""
    model, _ = make_dmi({"fusion_weight": 0.3, "diffusion_steps": 6, "start_step": 5, "reverse_steps": 2})
    perturb_refiner(model).eval()
    history, mask, _ = batch()
    with torch.no_grad():
        vecs, weights = model.interests(history, mask)
        keys, keep = model.memory(vecs, weights, history, mask)
        c = model.rms
        s = model.process.schedule
        denoise = lambda x, t: model.process.predict_x0(model.denoiser, x, t, keys, keep)
        v = s.mean_coef(5) * vecs / c
        hat = denoise(v, 5)
        v = s.posterior_mean(hat, v, 5, 3)  # grid [5, 3] then 0
        hat = denoise(v, 3)
        expect = 0.3 * c * hat + 0.7 * vecs
        assert torch.allclose(model.user_vectors(history, mask), expect, atol=1e-6)


@pytest.mark.parametrize("name", ["default", "no_pruning", "threshold_pruning", "train_chain", "stochastic",
                                  "dim_mask", "mlp_denoiser", "no_step_token", "no_noise"])
def test_padded_items_change_nothing(name):
    model, cfg = make_dmi(ABLATIONS[name])
    perturb_refiner(model)
    history, mask, target = batch(7)
    other = torch.where(mask, history, torch.randint(1, N_ITEMS + 1, history.shape))  # new ids at padding
    assert not torch.equal(other, history)
    model.eval()
    assert torch.equal(model.user_vectors(history, mask), model.user_vectors(other, mask))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_a, out_a = full_loss(model, cfg, history, mask, target)
    model.load_state_dict(state)  # the running scale and the call counter as they were
    loss_b, out_b = full_loss(model, cfg, other, mask, target)
    assert torch.equal(loss_a, loss_b) and torch.equal(out_a.user, out_b.user)


# ---- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_builds_and_trains_one_step(name):
    model, cfg = make_dmi(ABLATIONS[name])
    assert isinstance(model, DMI)
    opt = torch.optim.Adam(model.param_groups(cfg), lr=cfg.lr)
    history, mask, target = batch(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    loss, _ = full_loss(model, cfg, history, mask, target)
    assert torch.isfinite(loss)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if cfg.fusion_weight > 0:
        assert any(k.startswith("denoiser.") for k in changed)
        assert int(model.train_calls) == 1
    if cfg.freeze_backbone_steps == 0:
        assert any(k.startswith("backbone.") for k in changed)
    model.eval()
    u = model.user_vectors(history, mask)
    assert u.shape == (7, cfg.num_interests, D) and torch.isfinite(u).all()


def test_frozen_backbone_gets_no_update_for_the_first_steps_then_trains():
    model, cfg = make_dmi({"freeze_backbone_steps": 2, "fusion_weight": 0.5})
    opt = torch.optim.Adam(model.param_groups(cfg), lr=0.01)
    history, mask, target = batch(7)

    def snapshot(prefix):
        return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}

    model.train()
    for step in range(3):
        back, den = snapshot("backbone."), snapshot("denoiser.")
        loss, _ = full_loss(model, cfg, history, mask, target, seed=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        back_same = all(torch.equal(v, model.state_dict()[k]) for k, v in back.items())
        den_same = all(torch.equal(v, model.state_dict()[k]) for k, v in den.items())
        assert back_same == (step < 2), step  # the item table included
        assert not den_same
    assert int(model.train_calls) == 3
    # the counter survives a checkpoint round trip
    clone, _ = make_dmi({"freeze_backbone_steps": 2, "fusion_weight": 0.5}, seed=9)
    clone.load_state_dict(model.state_dict())
    assert int(clone.train_calls) == 3 and torch.equal(clone.rms, model.rms)
    model.eval()
    clone.eval()
    assert torch.equal(clone.user_vectors(history, mask), model.user_vectors(history, mask))


def test_running_scale_tracks_the_interests():
    model, _ = make_dmi()
    history, mask, target = batch(7)
    assert model.rms.item() == 1.0
    model.train()
    model.train_forward(history, mask, target)
    rms = model.interests(history, mask)[0].pow(2).mean().sqrt()
    assert model.rms.item() == pytest.approx(rms.item(), rel=1e-5)
    model.eval()
    model.user_vectors(history, mask)
    model.train_forward(history, mask, target)  # eval mode: no update
    assert model.rms.item() == pytest.approx(rms.item(), rel=1e-5)


# ---- end to end ---------------------------------------------------------------------------------

SMALL = {"embedding_dim": 24, "batch_size": 64, "num_negatives": 64, "eval_every": 100, "max_steps": 300,
         "patience": 50, "progress": False, "seq_len": 10, "lr": 0.005, "threads": 1}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_dataset(tmp_path_factory.mktemp("planted"), num_users=600, num_items=200, num_clusters=10)


def test_dmi_end_to_end_beats_random_and_eta_zero_is_remi(planted, tmp_path):
    cfg = make_config("dmi", overrides={**SMALL, "fusion_weight": 0.5, "reverse_steps": 5})
    result = train(cfg, planted, tmp_path / "dmi")
    random_recall_at_20 = 20 / 200
    assert result["test"]["recall@20"] > 3 * random_recall_at_20
    assert result["test"]["hitrate@50"] > 0.9
    # the "no diffusion" ablation trains and scores exactly like its backbone (REMI)
    plain = train(make_config("dmi", overrides={**SMALL, "fusion_weight": 0.0, "max_steps": 100}), planted, tmp_path / "eta0")
    remi = train(make_config("remi", overrides={**SMALL, "max_steps": 100}), planted, tmp_path / "remi")
    strip = lambda r: {k: v for k, v in r["test"].items() if k != "seconds"}
    assert strip(plain) == strip(remi)


def test_refiner_trained_after_a_finished_backbone(planted, tmp_path):
    """``init_from`` + a frozen backbone: two-stage DMI starts exactly at its backbone and keeps it."""
    from dmirec.runs import rundir

    remi = train(make_config("remi", overrides={**SMALL, "max_steps": 100}), planted, tmp_path / "remi")
    over = {**SMALL, "max_steps": 200, "init_from": str(tmp_path / "remi"), "freeze_backbone_steps": 10**6}
    train(make_config("dmi", overrides=over), planted, tmp_path / "after")
    rows = [r for r in rundir.read_metrics(tmp_path / "after") if r["split"] == "valid"]
    # step 0 is the warm start: the untrained refiner is the identity, so it scores as the backbone
    assert rows[0]["step"] == 0
    assert rows[0]["recall@50"] == pytest.approx(remi["valid_recall@50"], abs=1e-9)
    source = rundir.load_checkpoint(tmp_path / "remi" / "checkpoints" / "best.pt")["model"]
    for name in ("last.pt", "best.pt"):
        state = rundir.load_checkpoint(tmp_path / "after" / "checkpoints" / name)["model"]
        assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in source.items()), name
    last = rundir.load_checkpoint(tmp_path / "after" / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in last.items() if k.startswith("denoiser.head"))


def test_init_from_errors_name_the_source(planted, tmp_path):
    from dmirec.config import ConfigError

    with pytest.raises(ConfigError, match="init_from.*no checkpoint"):
        train(make_config("dmi", overrides={**SMALL, "init_from": str(tmp_path / "nowhere")}), planted,
              tmp_path / "a")
    assert not (tmp_path / "a").exists()
    train(make_config("comirec-dr", overrides={**SMALL, "max_steps": 10, "eval_every": 10}), planted, tmp_path / "dr")
    with pytest.raises(ConfigError, match=r"init_from.*dr/checkpoints/best\.pt.*does not fit"):
        train(make_config("dmi", overrides={**SMALL, "init_from": str(tmp_path / "dr")}), planted, tmp_path / "b")
