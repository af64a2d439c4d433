"""The TorchRec sharded item table (``--sharded_embeddings=true``): 2 gloo ranks on planted data.

Skipped when TorchRec is not installed (the ``dist`` extra). Two torchrun launches
(tests/training/distributed/sharded_worker.py, then ``dmirec train --resume`` through the CLI) give one step's
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

from dmirec.config import ConfigError
from dmirec.data.synthetic import make_planted_dataset
from dmirec.runs import rundir
from dmirec.training.train import make_config, train
from torchrun_launch import torchrun

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"
OVER = {"embedding_dim": 16, "batch_size": 64, "num_negatives": 40, "seq_len": 10, "max_steps": 60,
        "eval_every": 30, "patience": 50, "progress": False, "device": "cpu", "threads": 1, "lr": 0.01}
CUT_AT = 45  # after the step-30 checkpoint: the resume retraces steps 31..60
pytestmark = pytest.mark.dist



def _have_torchrec() -> bool:
    try:
        return importlib.util.find_spec("torchrec") is not None
    except (ImportError, ValueError):  # ValueError: hidden with sys.modules["torchrec"] = None
        return False


HAVE_TORCHREC = _have_torchrec()
needs_torchrec = pytest.mark.skipif(not HAVE_TORCHREC, reason="TorchRec is not installed (the `dist` extra: `make setup-dist`; "
                                    "docs/scale/sharded.md gives the pip install --no-deps command)")


def test_single_process_is_a_one_line_error(tmp_path):
    """Checked before TorchRec is needed, so this runs with or without the extra."""
    data = make_planted_dataset(tmp_path / "data", num_users=60, num_items=30, num_clusters=3)
    with pytest.raises(ConfigError, match="sharded_embeddings.*torchrun --nproc_per_node=2"):
        train(make_config("remi", overrides={**OVER, "sharded_embeddings": True}), data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unsupported_models_are_config_errors():
    with pytest.raises(ConfigError, match="sharded_embeddings.*not dmi"):
        make_config("dmi", overrides={"sharded_embeddings": True})
    with pytest.raises(ConfigError, match="weight_decay"):
        make_config("remi", overrides={"sharded_embeddings": True, "embedding_optimizer": "sparse", "weight_decay": 0.1})


def test_sharded_runs_refuse_a_whole_table_draw_and_whole_table_readers():
    with pytest.raises(ConfigError, match="table_init"):
        make_config("remi", overrides={"sharded_embeddings": True, "table_init": "reference"})
    with pytest.raises(ConfigError, match="neighbour_alpha"):
        make_config("remi", overrides={"sharded_embeddings": True, "neighbour_alpha": 0.5})
    assert make_config("remi", overrides={"sharded_embeddings": True, "table_init": "blocked"}).table_init == "blocked"


def test_blocked_table_rows_do_not_depend_on_who_draws_them():
    from dmirec.models import build_model
    from dmirec.models.base import TABLE_INIT_BLOCK, blocked_table_rows, fill_blocked_table, item_table_on_meta

    whole = blocked_table_rows(7, 8, 0, TABLE_INIT_BLOCK + 500)  # (rows, D), two blocks
    assert torch.equal(whole[0], torch.zeros(8)) and abs(float(whole[1:].std()) - 0.5) < 0.01  # N(0, 2 / D)
    for a, b in ((1, 10), (TABLE_INIT_BLOCK - 3, TABLE_INIT_BLOCK + 4), (TABLE_INIT_BLOCK + 10, TABLE_INIT_BLOCK + 500)):
        assert torch.equal(blocked_table_rows(7, 8, a, b), whole[a:b])
    assert not torch.equal(blocked_table_rows(8, 8, 1, 10), whole[1:10])  # the seed matters
    with item_table_on_meta():
        model = build_model(make_config("remi", overrides={"embedding_dim": 8}), 1000)
    assert model.item_emb.weight.is_meta and not model.w1.weight.is_meta  # only the table is left undrawn
    fill_blocked_table(model, 7)
    assert torch.equal(model.item_emb.weight.detach(), whole[:1001])


def test_table_files_are_read_by_any_row_range_and_assembled(tmp_path):
    """A 3-rank checkpoint's table files read by another layout (a resume with another P), and
    assembled whole by load_checkpoint; a missing file is named."""
    from dmirec.runs.table_files import read_rows

    table = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    files = []
    for r, (first, rows) in enumerate(((0, 4), (4, 3), (7, 3))):
        name = f"last.table.s5.r{r}of3.pt"
        torch.save({"first": first, "weight": table[first:first + rows], "exp_avg": -table[first:first + rows]},
                   tmp_path / name)
        files.append((name, first, rows))
    manifest = {"key": "item_emb.weight", "rows": 10, "dim": 3, "step": 5, "files": files}
    assert torch.equal(read_rows(tmp_path, manifest, 2, 9), table[2:9])
    assert torch.equal(read_rows(tmp_path, manifest, 5, 10, "exp_avg"), -table[5:10])
    rundir.save_checkpoint(tmp_path / "last.pt", {"model": {"other": torch.ones(1)}, "table_shards": manifest})
    assert torch.equal(rundir.load_checkpoint(tmp_path / "last.pt")["model"]["item_emb.weight"], table)
    assert "item_emb.weight" not in rundir.load_checkpoint(tmp_path / "last.pt", assemble=False)["model"]
    (tmp_path / files[1][0]).unlink()
    with pytest.raises(rundir.RunError, match=r"last\.table\.s5\.r1of3\.pt"):
        rundir.load_checkpoint(tmp_path / "last.pt")


def test_missing_extra_is_a_one_line_error_naming_the_install_command(monkeypatch):
    from dmirec.training.distributed import sharded

    monkeypatch.setitem(sys.modules, "torchrec", None)  # as if not installed
    cfg = make_config("remi", overrides={"sharded_embeddings": True})
    with pytest.raises(ConfigError, match=r"TorchRec extra .*pip install --no-deps torchrec==1\.8\.0") as err:
        sharded.check(cfg, 2, torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_importing_dmirec_does_not_import_torchrec():
    code = "import sys, dmirec.cli.main, dmirec.training.train, dmirec.training.distributed.sharded; print('torchrec' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharded")
    data = make_planted_dataset(base / "data", num_users=600, num_items=200, num_clusters=10)
    torchrun(str(HERE / "sharded_worker.py"), str(data), str(base), json.dumps({**OVER, "cut_at": CUT_AT}))
    torchrun("-m", "dmirec", "train", "--resume", str(base / "cut"))
    torchrun("-m", "dmirec", "train", "--resume", str(base / "sparse_cut"))
    torchrun("-m", "dmirec", "train", "--resume", str(base / "fused_cut"))
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
    from dmirec.training.train import loss_with_negatives

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
def test_sharded_sparse_updates_take_the_one_process_sparse_step(runs, tmp_path):
    """Row-sparse updates of the sharded rows (ranks share their negatives): the one-process run
    with SparseAdam from the same blocked table, up to float summation order, after 60 steps."""
    base, data = runs
    before = torch.get_num_threads()
    try:
        one = train(make_config("remi", overrides={**OVER, "embedding_optimizer": "sparse", "table_init": "blocked",
                                                   "dist_negatives": "global"}), data, tmp_path / "one")
    finally:
        torch.set_num_threads(before)
    a, b = _model(tmp_path / "one"), _model(base / "sparse")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    opt = rundir.load_checkpoint(base / "sparse" / "checkpoints" / "last.pt", assemble=False)
    part = torch.load(base / "sparse" / "checkpoints" / opt["table_shards"]["files"][0][0], weights_only=True)
    assert part["adam_step"] == 60  # SparseAdam's state saved with the rows
    # rank 0's block starts with the padding row: never looked up, so never updated (lazy Adam)
    assert not part["exp_avg_sq"][0].any() and not part["weight"][0].any() and part["exp_avg_sq"][1:].any()
    assert json.loads((base / "sparse" / "result.json").read_text())["steps"] == one["steps"] == 60


@needs_torchrec
def test_fused_rowwise_adagrad_trains_the_sharded_table(runs):
    """TorchRec's fused kernel updates the rows inside the backward pass: the run learns the planted
    interests, and its table files carry one Adagrad accumulator per row."""
    base, _ = runs
    result = json.loads((base / "fused" / "result.json").read_text())
    assert result["steps"] == 60 and result["test"]["recall@50"] > 0.4  # random retrieval: 0.25
    last = rundir.load_checkpoint(base / "fused" / "checkpoints" / "last.pt", assemble=False)
    assert last["optimizer"]["optimizers"][1] == {"sharded_table_fused": True}
    part = torch.load(base / "fused" / "checkpoints" / last["table_shards"]["files"][1][0], weights_only=True)
    assert part["adagrad_momentum"].shape == (100,) and part["adagrad_momentum"].max() > 0
    with pytest.raises(ConfigError, match="rowwise_adagrad.*sharded_embeddings=true"):
        make_config("remi", overrides={"embedding_optimizer": "rowwise_adagrad"})


@needs_torchrec
def test_sharded_checkpoints_keep_each_ranks_rows_in_its_own_file(runs):
    """No process writes the whole table: best.pt / last.pt list one file per rank, and loading
    them assembles the unsharded checkpoint's keys and shapes."""
    base, _ = runs
    ckpt_dir = base / "full" / "checkpoints"
    for which in ("best", "last"):
        raw = rundir.load_checkpoint(ckpt_dir / f"{which}.pt", assemble=False)
        assert "item_emb.weight" not in raw["model"]
        files = raw["table_shards"]["files"]
        assert [(first, rows) for _, first, rows in files] == [(0, 101), (101, 100)]
        # the previous checkpoints' table files are gone: one set per checkpoint
        assert sorted(p.name for p in ckpt_dir.glob(f"{which}.table.*")) == sorted(f for f, _, _ in files)
        a, b = _model(base / "full", which), _model(base / "ddp", which)
        assert sorted(a) == sorted(b) and all(a[k].shape == b[k].shape for k in a)
    table = _model(base / "full")["item_emb.weight"]  # (N + 1, D), every rank's rows
    assert table.shape == (201, 16) and torch.equal(table[0], torch.zeros(16))
    last = rundir.load_checkpoint(ckpt_dir / "last.pt", assemble=False)
    assert last["optimizer"]["optimizers"][1] == {"sharded_table_adam": True}
    part = torch.load(ckpt_dir / last["table_shards"]["files"][1][0], weights_only=True)
    assert part["adam_step"] == 60 and part["exp_avg"].shape == part["weight"].shape == (100, 16)
    assert part["exp_avg_sq"].abs().sum() > 0


@needs_torchrec
def test_sharded_search_equals_the_whole_table_search(runs):
    """Every rank searched its own rows and the lists were merged: the same top 50 (ids, scores,
    interests) as one exact search over the whole table with the same backend (torch, faiss),
    with and without history exclusion."""
    from dmirec.data.dataset import load_dataset
    from dmirec.data.sampler import eval_split
    from dmirec.evaluation.evaluate import rank_users
    from dmirec.runs.rundir import load_trained_model

    base, data = runs
    found = torch.load(base / "search.pt", weights_only=False)
    model, cfg = load_trained_model(base / "full")
    eval_set = eval_split(load_dataset(data).splits["test"], cfg.seq_len)
    for backend in ("torch", "faiss"):
        for ex in (False, True):
            whole = rank_users(model, eval_set, 50, backend, exclude_history=ex)
            ids, scores, interest = found[backend, ex]
            np.testing.assert_array_equal(ids, whole.ids)
            np.testing.assert_allclose(scores, whole.scores, rtol=1e-6)
            np.testing.assert_array_equal(interest, whole.interest)
    hist = eval_set.full_history
    assert not any(set(found["faiss", True][0][u]) & set(hist[u]) for u in range(len(hist)))
    assert any(set(found["faiss", False][0][u]) & set(hist[u]) for u in range(len(hist)))


@needs_torchrec
@pytest.mark.parametrize("run", ["full", "sparse", "fused"])
def test_sharded_run_resumes_exactly(runs, run):
    """Dense Adam, row-sparse Adam and the fused row-wise Adagrad: the rows and the optimiser's
    per-row state of every rank come back from their files."""
    base, _ = runs
    cut = {"full": "cut", "sparse": "sparse_cut", "fused": "fused_cut"}[run]
    a, b = _model(base / run), _model(base / cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "train_seq_per_s")} for r in rows]
    assert strip(rundir.read_metrics(base / run)) == strip(rundir.read_metrics(base / cut))


@needs_torchrec
def test_sharded_run_exports_and_evaluates_like_any_run(runs, tmp_path):
    from dmirec.evaluation.evaluate import evaluate_run
    from dmirec.serving.export import export_bundle
    from dmirec.serving.bundle import load_bundle

    base, _ = runs
    export_bundle(base / "full", tmp_path / "sharded")
    export_bundle(base / "ddp", tmp_path / "ddp")
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == sorted(p.name for p in (tmp_path / "ddp").iterdir())
    bundle = load_bundle(tmp_path / "sharded")
    np.testing.assert_array_equal(bundle.item_embeddings, _model(base / "full", "best")["item_emb.weight"].numpy())
    result = json.loads((base / "full" / "result.json").read_text())
    again = evaluate_run(base / "full", split="test")
    assert again["recall@50"] == pytest.approx(result["test"]["recall@50"])
    # what a sharded run cannot train with applies to the finished run (one process, whole table)
    ruled = evaluate_run(base / "full", split="test", overrides={"neighbour_alpha": 0.5})
    assert ruled["recall@50"] != again["recall@50"]
