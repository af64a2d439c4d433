"""The ``compile`` switch: compiled training matches eager within float tolerance, and a compiler
that cannot run falls back to eager with a warning and eager's exact numbers."""

from __future__ import annotations

import pytest
import torch

from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import TrainSampler
from dmirec.data.synthetic import make_planted_dataset
from dmirec.models import build_model
from dmirec.objectives.losses import NegativeSampler
from dmirec.training import optim
from dmirec.training.compiled import compiled_or_eager
from dmirec.training.train import make_config, make_optimizer, train_step

OVERRIDES = {"embedding_dim": 16, "batch_size": 32, "num_negatives": 48, "seq_len": 8, "progress": False,
             "device": "cpu"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("compile") / "data"
    make_planted_dataset(path, num_users=300, num_items=120, num_clusters=6)
    return load_dataset(path)


def run_steps(data, model_name: str, steps: int, **extra) -> tuple[list[float], list[torch.Tensor]]:
    cfg = make_config(model_name, overrides={**OVERRIDES, **extra})
    torch.manual_seed(0)
    model = build_model(cfg, data.num_items, data.item_popularity())
    optim.setup_table(model, cfg, data.num_items)
    opt = make_optimizer(model, cfg)
    sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=0)
    negatives, gen = NegativeSampler(data.num_items), torch.Generator().manual_seed(1)
    model.train()
    losses = [train_step(model, opt, cfg, sampler.sample(), negatives, gen, "cpu").item() for _ in range(steps)]
    return losses, [p.detach().clone() for p in model.parameters()]


def test_compiled_training_matches_eager(data):
    """REMI (packed attention, hard negatives, routing regulariser): 6 steps, loss and every
    parameter within 1e-4 of eager (summation order differs, nothing else)."""
    pytest.importorskip("torch._inductor")
    eager_losses, eager_params = run_steps(data, "remi", 6)
    with _no_fallback():
        comp_losses, comp_params = run_steps(data, "remi", 6, compile=True)
    assert comp_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    for a, b in zip(eager_params, comp_params):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert eager_losses[-1] != eager_losses[0]  # the steps did train


class _no_fallback:
    """Fails the test if the compiled run fell back to eager (the parity would then be vacuous)."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings(record=True)
        self._log = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        fell_back = [w for w in self._log if "eager mode" in str(w.message)]
        assert not fell_back, f"compiled run fell back to eager: {fell_back[0].message}"
        return False


def test_fallback_to_eager_when_the_compiler_fails():
    def broken_compile(fn):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return run

    calls = []

    def loss(x):
        calls.append(x)
        return x * 2

    fn = compiled_or_eager(loss, compile_fn=broken_compile)
    with pytest.warns(RuntimeWarning, match="eager mode"):
        assert fn(3) == 6
    assert fn(4) == 8  # no second warning, eager from now on
    assert calls == [3, 4]


def test_fallback_when_compile_itself_raises():
    def no_compile(fn):
        raise ImportError("inductor missing")

    fn = compiled_or_eager(lambda x: x + 1, compile_fn=no_compile)
    with pytest.warns(RuntimeWarning, match="ImportError"):
        assert fn(1) == 2


def test_a_real_error_is_raised_not_swallowed():
    def passthrough(fn):
        return lambda *args: fn(*args)  # a "compiled" callable that runs the function

    def bad(x):
        raise ValueError("shape mismatch")

    fn = compiled_or_eager(bad, compile_fn=passthrough)
    with pytest.raises(ValueError, match="shape mismatch"), pytest.warns(RuntimeWarning):
        fn(1)
