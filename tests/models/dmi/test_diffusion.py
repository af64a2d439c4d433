"""The diffusion pieces of DMI: schedule arithmetic, reverse chains, item pruning, the denoiser."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmirec.models.dmi.diffusion import Denoiser, NoiseSchedule, prune_items


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is fastest


# ---- schedule ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,scale", [("linear", 0.01), ("linear", 1.0), ("linear", 50.0),
                                        ("cosine", 0.01), ("cosine", 1.0), ("cosine", 2.0)])
@pytest.mark.parametrize("steps", [1, 5, 50])
def test_alpha_bar_starts_at_one_and_strictly_decreases(kind, scale, steps):
    s = NoiseSchedule(steps, kind, 1e-4, 2e-2, scale)
    assert s.alpha_bar.shape == (steps + 1,) and s.alpha_bar.dtype == torch.float32
    assert s.alpha_bar[0] == 1.0 and s.betas[0] == 0.0
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1])
    assert torch.all(s.betas[1:] > 0) and torch.all(s.betas < 1)
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0), rtol=1e-5, atol=1e-7)


def test_linear_betas_are_scaled_linspace_and_cosine_follows_its_curve():
    s = NoiseSchedule(5, "linear", 1e-3, 5e-3, scale=2.0)
    assert torch.allclose(s.betas[1:], 2.0 * torch.tensor([1e-3, 2e-3, 3e-3, 4e-3, 5e-3]))
    c = NoiseSchedule(8, "cosine")
    f = lambda t: math.cos((t / 8 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in range(1, 8):  # the last beta is clipped at 0.999
        assert c.alpha_bar[t].item() == pytest.approx(f(t) / f(0), rel=1e-5)


def test_unit_step_posterior_matches_the_ddpm_formulas():
    s = NoiseSchedule(10, "linear", 1e-4, 0.2, 1.0)
    b = torch.cat([torch.zeros(1), torch.linspace(1e-4, 0.2, 10, dtype=torch.float64)])  # float64 reference
    a = torch.cumprod(1 - b, 0)
    v0, vt = torch.randn(3, 4), torch.randn(3, 4)
    for t in range(1, 11):
        c0 = a[t - 1].sqrt() * b[t] / (1 - a[t])
        ct = (1 - b[t]).sqrt() * (1 - a[t - 1]) / (1 - a[t])
        var = b[t] * (1 - a[t - 1]) / (1 - a[t])
        assert torch.allclose(s.posterior_mean(v0, vt, t), (c0 * v0 + ct * vt).float(), atol=1e-6)
        assert s.posterior_std(t).item() == pytest.approx(var.sqrt().item(), rel=1e-5, abs=1e-7)
    assert s.posterior_std(1).item() == 0.0  # the step to 0 is exact


def test_strided_jump_is_gaussian_conditioning_of_the_marginals():
    """q(v_t' | v_t, v0) for t' < t, written independently as the conditional of a joint Gaussian."""
    s = NoiseSchedule(20, "linear", 1e-3, 0.1, 1.0)
    a = torch.cumprod(1 - torch.cat([torch.zeros(1), torch.linspace(1e-3, 0.1, 20, dtype=torch.float64)]), 0)
    v0, vt = torch.randn(5, 3), torch.randn(5, 3)
    for t, tp in [(20, 13), (13, 6), (6, 1), (9, 0), (20, 0)]:
        r = a[t] / a[tp]
        cov = r.sqrt() * (1 - a[tp])  # Cov(v_t', v_t | v0) per dim
        mean = a[tp].sqrt() * v0 + cov / (1 - a[t]) * (vt - a[t].sqrt() * v0)
        var = (1 - a[tp]) - cov * cov / (1 - a[t])
        assert torch.allclose(s.posterior_mean(v0, vt, t, tp), mean.float(), atol=1e-5)
        assert s.posterior_std(t, tp).item() == pytest.approx(var.clamp(min=0).sqrt().item(), abs=1e-5)


def test_timesteps_are_strided_and_descending():
    s = NoiseSchedule(10)
    assert s.timesteps() == list(range(10, 0, -1))
    assert s.timesteps(10, 5) == [10, 8, 6, 4, 2]
    assert s.timesteps(10, 3) == [10, 7, 4]
    assert s.timesteps(6) == [6, 5, 4, 3, 2, 1]
    assert s.timesteps(6, 1) == [6]
    assert s.timesteps(1) == [1]
    with pytest.raises(ValueError):
        s.timesteps(5, 6)
    with pytest.raises(ValueError):
        s.timesteps(11)


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 30), data=st.data(), kind=st.sampled_from(["linear", "cosine"]),
       noise=st.sampled_from(["gaussian", "dim_mask"]), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_chain_fed_the_clean_vector_returns_it(steps, data, kind, noise, scale):
    s = NoiseSchedule(steps, kind, 1e-4, 2e-2, scale, noise)
    start = data.draw(st.integers(1, steps))
    count = data.draw(st.integers(1, start))
    v0 = torch.randn(4, 3, 8)
    seen = []

    def oracle(v, t):
        seen.append((t, v))
        return v0

    # deterministic start: every visited state is the noise-free mean, and the end is v0
    out = s.reverse(s.start_state(v0, start), oracle, start, count)
    assert torch.allclose(out, v0, atol=1e-5)
    for t, v in seen:
        assert torch.allclose(v, s.mean_coef(t) * v0, atol=1e-5)
    # a noisy start (and stochastic steps) end on v0 too
    g = torch.Generator().manual_seed(0)
    noisy = s.start_state(v0, start, stochastic=True, generator=g)
    assert torch.allclose(s.reverse(noisy, oracle, start, count), v0, atol=1e-5)
    assert torch.allclose(s.reverse(noisy, oracle, start, count, stochastic=True, generator=g), v0, atol=1e-5)


def test_forward_noise_statistics():
    torch.manual_seed(0)
    s = NoiseSchedule(10, "linear", 1e-4, 0.1, 1.0)
    v0 = torch.full((20000, 4), 2.0)
    vt = s.add_noise(v0, 10)
    a = s.alpha_bar[10].item()
    assert vt.mean().item() == pytest.approx(2.0 * math.sqrt(a), abs=0.02)
    assert vt.var().item() == pytest.approx(1 - a, rel=0.05)
    # per-example t broadcasts over the trailing dims; t = 0 is the clean vector
    t = torch.tensor([0, 10])
    two = s.add_noise(torch.ones(2, 3, 5), t)
    assert torch.equal(two[0], torch.ones(3, 5))
    assert not torch.equal(two[1], torch.ones(3, 5))


def test_dim_mask_noise_replaces_a_growing_share_of_dimensions():
    torch.manual_seed(0)
    s = NoiseSchedule(10, "linear", 1e-2, 0.2, 1.0, noise="dim_mask")
    v0 = torch.full((4000, 16), 3.0)
    shares = []
    for t in (1, 5, 10):
        changed = (s.add_noise(v0, t) != v0).float().mean().item()
        assert changed == pytest.approx(1 - s.alpha_bar[t].item(), abs=0.01)
        shares.append(changed)
    assert shares[0] < shares[1] < shares[2]
    assert torch.equal(s.mean_coef(4), s.alpha_bar[4])


def test_step_options():
    s = NoiseSchedule(10, "linear", 1e-3, 0.1, 1.0)
    v0h, vt = torch.randn(2, 3), torch.randn(2, 3)
    mean = s.step(v0h, vt, 6, 3)
    assert torch.equal(mean, s.posterior_mean(v0h, vt, 6, 3))
    noise = torch.randn(2, 3)
    assert torch.allclose(s.step(v0h, vt, 6, 3, noise=noise), mean + s.posterior_std(6, 3) * noise)
    a = s.step(v0h, vt, 6, 3, stochastic=True, generator=torch.Generator().manual_seed(1))
    b = s.step(v0h, vt, 6, 3, stochastic=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, mean)
    assert torch.equal(s.step(v0h, vt, 4, 0), v0h)
    # per-example steps
    t = torch.tensor([5, 2])
    both = s.step(v0h, vt, t)
    assert torch.allclose(both[0], s.step(v0h[:1], vt[:1], 5)[0]) and torch.allclose(both[1], s.step(v0h[1:], vt[1:], 2)[0])


# ---- pruning ----------------------------------------------------------------------------------

def test_topm_pruning_picks_the_heaviest_real_items_never_padding():
    mask = torch.tensor([[False, False, True, True, True, True]])  # left-padded, 4 real items
    w = torch.tensor([[[0.9, 0.8, 0.1, 0.4, 0.2, 0.3],  # padded positions carry (bogus) big weights
                       [0.0, 0.0, 0.7, 0.1, 0.1, 0.1]]])
    idx, keep = prune_items(w, mask, "topm", 3)
    assert idx.shape == keep.shape == (1, 2, 3)
    assert idx[0, 0].tolist() == [3, 5, 4] and keep.all()
    assert idx[0, 1, 0].item() == 2 and set(idx[0, 1, 1:].tolist()) <= {3, 4, 5}
    # fewer real items than m: the extra slots are masked, and no kept slot is padding
    idx, keep = prune_items(w, mask, "topm", 5)
    assert keep.sum(-1).tolist() == [[4, 4]]
    assert mask[0][idx[keep]].all()
    # an empty history keeps nothing
    idx, keep = prune_items(w, torch.zeros(1, 6, dtype=torch.bool), "topm", 3)
    assert not keep.any()


def test_threshold_and_none_pruning():
    mask = torch.tensor([[False, True, True, True, True]])
    w = torch.tensor([[[0.5, 0.5, 0.3, 0.1, 0.1],
                       [0.0, 0.25, 0.25, 0.25, 0.25]]])  # uniform: none passes 1/4 strictly
    idx, keep = prune_items(w, mask, "threshold")
    chosen = [sorted(idx[0, k][keep[0, k]].tolist()) for k in range(2)]
    assert chosen[0] == [1, 2]  # 0.5 and 0.3 > 1/4; the padded 0.5 is not kept
    assert len(chosen[1]) == 1 and chosen[1][0] in (1, 2, 3, 4)  # the top item as a fallback
    idx, keep = prune_items(w, mask, "none")
    assert idx.shape == (1, 2, 5) and torch.equal(keep, mask.unsqueeze(1).expand(1, 2, 5))


@settings(max_examples=50, deadline=None)
@given(data=st.data(), length=st.integers(1, 12), m=st.integers(1, 8), rule=st.sampled_from(["topm", "threshold"]))
def test_pruning_never_keeps_padding(data, length, m, rule):
    b, k = 3, 2
    n_valid = [data.draw(st.integers(0, length)) for _ in range(b)]
    mask = torch.tensor([[i >= length - n for i in range(length)] for n in n_valid])  # left padding
    w = torch.rand(b, k, length, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    idx, keep = prune_items(w, mask, rule, m)
    rows = torch.arange(b).view(b, 1, 1).expand_as(idx)
    assert mask[rows[keep], idx[keep]].all()
    if rule == "topm":
        assert keep.sum(-1).tolist() == [[min(m, n)] * k for n in n_valid]
        for bi in range(b):
            for ki in range(k):
                kept = w[bi, ki, idx[bi, ki][keep[bi, ki]]]
                dropped = w[bi, ki][mask[bi]].sort().values[:max(n_valid[bi] - m, 0)]
                if len(kept) and len(dropped):
                    assert kept.min() >= dropped.max()


# ---- denoiser ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["attention", "mlp"])
@pytest.mark.parametrize("step_token", [True, False])
def test_denoiser_shapes_masking_and_identity_start(kind, step_token):
    torch.manual_seed(0)
    den = Denoiser(8, heads=2, blocks=2, kind=kind, step_token=step_token)
    v, t = torch.randn(6, 8), torch.randint(0, 11, (6,))
    keys, kmask = torch.randn(6, 4, 8), torch.rand(6, 4) > 0.5
    kmask[0] = False  # a row with no real key at all
    assert torch.equal(den(v, t, keys, kmask), torch.zeros(6, 8))  # zero-initialised head
    with torch.no_grad():
        den.head.weight.normal_()
        den.head.bias.normal_()
    out = den(v, t, keys, kmask)
    assert out.shape == (6, 8) and torch.isfinite(out).all()
    other = torch.where(kmask.unsqueeze(-1), keys, torch.randn(6, 4, 8) * 100)
    assert torch.equal(den(v, t, other, kmask), out)  # masked keys are invisible
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in den.parameters() if p.grad is not None)
    if kind == "attention":
        assert not torch.allclose(den(v, t, keys + torch.randn(6, 4, 8), kmask)[1:], out[1:])
    else:
        assert torch.equal(den(v, t, keys + torch.randn(6, 4, 8), kmask), out)  # the MLP ignores the items


def test_denoiser_plain_head_predicts_v0_directly():
    torch.manual_seed(0)
    den = Denoiser(8, heads=4, blocks=1, zero_init_head=False)
    v = torch.randn(3, 8)
    out = den(v, torch.tensor(5), torch.randn(3, 2, 8))
    assert out.shape == (3, 8) and not torch.allclose(out, v)
    with pytest.raises(ValueError):
        Denoiser(10, heads=3)
