"""The TorchRec sharded item table (``--sharded_embeddings=true``): 2 gloo ranks on planted data.

Skipped when TorchRec is not installed (the ``dist`` extra). Two torchrun launches
(tests/sharded_worker.py, then ``dmirec train --resume`` through the CLI) give one step's
gradients, a full sharded run, an interrupted one resumed, and the same run unsharded (plain DDP).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmirec import rundir
from dmirec.config import ConfigError
from dmirec.data.synthetic import make_planted_dataset
from dmirec.train import make_config, train
from torchrun_launch import torchrun

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
OVER = {"embedding_dim": 16, "batch_size": 64, "num_negatives": 40, "seq_len": 10, "max_steps": 60,
        "eval_every": 30, "patience": 50, "progress": False, "device": "cpu", "threads": 1, "lr": 0.01}
CUT_AT = 45  # after the step-30 checkpoint: the resume retraces steps 31..60



def _have_torchrec() -> bool:
    try:
        return importlib.util.find_spec("torchrec") is not None
    except (ImportError, ValueError):  # ValueError: hidden with sys.modules["torchrec"] = None
        return False


HAVE_TORCHREC = _have_torchrec()
needs_torchrec = pytest.mark.skipif(not HAVE_TORCHREC, reason="TorchRec is not installed (the `dist` extra: README, "
                                    "'Large data and many machines', gives the pip install --no-deps command)")


def test_single_process_is_a_one_line_error(tmp_path):
    """Checked before TorchRec is needed, so this runs with or without the extra."""
    data = make_planted_dataset(tmp_path / "data", num_users=60, num_items=30, num_clusters=3)
    with pytest.raises(ConfigError, match="sharded_embeddings.*torchrun --nproc_per_node=2"):
        train(make_config("remi", overrides={**OVER, "sharded_embeddings": True}), data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unsupported_models_and_sparse_updates_are_config_errors():
    with pytest.raises(ConfigError, match="sharded_embeddings.*not dmi"):
        make_config("dmi", overrides={"sharded_embeddings": True})
    with pytest.raises(ConfigError, match="embedding_optimizer=sparse"):
        make_config("remi", overrides={"sharded_embeddings": True, "embedding_optimizer": "sparse"})


def test_missing_extra_is_a_one_line_error_naming_the_install_command(monkeypatch):
    from dmirec import sharded

    monkeypatch.setitem(sys.modules, "torchrec", None)  # as if not installed
    cfg = make_config("remi", overrides={"sharded_embeddings": True})
    with pytest.raises(ConfigError, match=r"TorchRec extra .*pip install --no-deps torchrec==1\.8\.0") as err:
        sharded.check(cfg, 2, torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_importing_dmirec_does_not_import_torchrec():
    code = "import sys, dmirec.cli, dmirec.train, dmirec.sharded; print('torchrec' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharded")
    data = make_planted_dataset(base / "data", num_users=600, num_items=200, num_clusters=10)
    torchrun(str(HERE / "sharded_worker.py"), str(data), str(base), json.dumps({**OVER, "cut_at": CUT_AT}))
    torchrun("-m", "dmirec", "train", "--resume", str(base / "cut"))
    return base, data


def _model(run: Path, which: str = "last") -> dict:
    return rundir.load_checkpoint(run / "checkpoints" / f"{which}.pt")["model"]


def _valid(run: Path) -> list[dict]:
    return [r for r in rundir.read_metrics(run) if r["split"] == "valid"]


@needs_torchrec
def test_sharded_step_has_the_one_process_gradient(runs):
    """Same global batch and negatives: the gradient (table rows gathered from both ranks, and the
    DDP-averaged rest) is the one-process gradient up to float summation order."""
    from dmirec.models import build_model
    from dmirec.train import loss_with_negatives

    base, data = runs
    saved = torch.load(base / "grads.pt", weights_only=False)
    cfg = make_config("remi", overrides=OVER)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, 200)
    h, m, t = (torch.from_numpy(np.ascontiguousarray(saved[k])) for k in ("history", "mask", "target"))
    loss_with_negatives(model, cfg, h, m, t, saved["negatives"], None).backward()
    assert set(saved["grads"]) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        torch.testing.assert_close(saved["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert saved["grads"]["item_emb.weight"].abs().sum() > 0


@needs_torchrec
def test_sharded_run_matches_the_unsharded_ddp_run(runs):
    """Same global batch, seed and per-rank negatives, and Adam is elementwise: the runs are the same
    computation in a different float summation order, which Adam's normalisation amplifies for
    gradients near its eps. Stated tolerance: loss within 0.005, valid/test Recall@50 within 0.02."""
    base, _ = runs
    one, two = _valid(base / "full"), _valid(base / "ddp")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [30, 60]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 0.005
        assert abs(a["recall@50"] - b["recall@50"]) < 0.02
    sharded_result = json.loads((base / "full" / "result.json").read_text())
    ddp_result = json.loads((base / "ddp" / "result.json").read_text())
    assert abs(sharded_result["test"]["recall@50"] - ddp_result["test"]["recall@50"]) < 0.02
    assert sharded_result["test"]["recall@50"] > 0.4  # planted interests learned (random: 0.25)


@needs_torchrec
def test_sharded_checkpoints_have_the_unsharded_format(runs):
    base, _ = runs
    for which in ("best", "last"):
        a, b = _model(base / "full", which), _model(base / "ddp", which)
        assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    table = _model(base / "full")["item_emb.weight"]  # (N + 1, D), every rank's rows
    assert table.shape == (201, 16) and torch.equal(table[0], torch.zeros(16))
    opt = rundir.load_checkpoint(base / "full" / "checkpoints" / "last.pt")["optimizer"]["optimizers"][1]
    assert opt["step"] == 60 and opt["exp_avg"].shape == (201, 16)


@needs_torchrec
def test_sharded_run_resumes_exactly(runs):
    base, _ = runs
    a, b = _model(base / "full"), _model(base / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "train_seq_per_s")} for r in rows]
    assert strip(rundir.read_metrics(base / "full")) == strip(rundir.read_metrics(base / "cut"))


@needs_torchrec
def test_sharded_run_exports_and_evaluates_like_any_run(runs, tmp_path):
    from dmirec.evaluate import evaluate_run
    from dmirec.export import export_bundle
    from dmirec.serve.bundle import load_bundle

    base, _ = runs
    export_bundle(base / "full", tmp_path / "sharded")
    export_bundle(base / "ddp", tmp_path / "ddp")
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == sorted(p.name for p in (tmp_path / "ddp").iterdir())
    bundle = load_bundle(tmp_path / "sharded")
    np.testing.assert_array_equal(bundle.item_embeddings, _model(base / "full", "best")["item_emb.weight"].numpy())
    result = json.loads((base / "full" / "result.json").read_text())
    again = evaluate_run(base / "full", split="test")
    assert again["recall@50"] == pytest.approx(result["test"]["recall@50"])
