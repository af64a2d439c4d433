"""CUDA code paths: training, evaluation, retrieval and serving on the GPU (skipped without one).

Run by scripts/gpu_check.sh on a machine with a GPU and a CUDA build of torch; everywhere else
every test here is skipped with the reason.
"""

import numpy as np
import pytest
import torch

from dmirec.data.dataset import load_dataset
from dmirec.data.synthetic import make_planted_dataset
from dmirec.evaluation.evaluate import evaluate_model
from dmirec.retrieval import search
from dmirec.runs.rundir import load_trained_model
from dmirec.serving import load_bundle
from dmirec.serving.export import export_bundle
from dmirec.training.train import make_config, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")]

SMALL = {"embedding_dim": 16, "batch_size": 64, "num_negatives": 64, "seq_len": 10, "max_steps": 200,
         "eval_every": 100, "patience": 50, "progress": False, "lr": 0.01}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_dataset(tmp_path_factory.mktemp("planted"), num_users=600, num_items=200, num_clusters=10)


@pytest.fixture(scope="module")
def cuda_run(planted, tmp_path_factory):
    run = tmp_path_factory.mktemp("cuda") / "run"
    result = train(make_config("remi", overrides={**SMALL, "device": "cuda"}), planted, run)
    return run, result


def test_exact_search_on_gpu_equals_cpu():
    g = torch.Generator().manual_seed(0)
    queries, items = torch.randn(300, 4, 16, generator=g), torch.randn(5001, 16, generator=g)
    cpu = search(queries, items, 50, backend="torch")
    gpu = search(queries, items, 50, backend="torch", device="cuda")
    assert np.mean(cpu.ids == gpu.ids) > 0.999  # float sums may reorder near-ties
    np.testing.assert_allclose(cpu.scores, gpu.scores, rtol=1e-4, atol=1e-4)


def test_training_on_gpu_learns_and_checkpoints_on_gpu(cuda_run):
    run, result = cuda_run
    assert result["test"]["recall@20"] > 0.3  # random retrieval: 0.1
    model, _ = load_trained_model(run, device="cuda")
    assert model.item_embeddings().device.type == "cuda"


@pytest.mark.parametrize("extra", [{"embedding_optimizer": "sparse"}, {"bf16": True}])
def test_sparse_and_bf16_train_on_gpu(planted, tmp_path, extra):
    result = train(make_config("remi", overrides={**SMALL, "device": "cuda", **extra}), planted, tmp_path / "run")
    assert result["test"]["recall@20"] > 0.3


def test_evaluation_on_gpu_matches_cpu(cuda_run, planted):
    run, _ = cuda_run
    data = load_dataset(planted)
    gpu_model, cfg = load_trained_model(run, device="cuda")
    cpu_model, _ = load_trained_model(run, device="cpu")
    on_gpu = evaluate_model(gpu_model, data, "test", cfg.seq_len, device="cuda")
    on_cpu = evaluate_model(cpu_model, data, "test", cfg.seq_len, device="cpu")
    assert on_gpu["recall@50"] == pytest.approx(on_cpu["recall@50"], abs=0.01)


def test_serving_bundle_on_gpu_matches_cpu(cuda_run, tmp_path):
    run, _ = cuda_run
    export_bundle(run, tmp_path / "bundle")
    cpu, gpu = load_bundle(tmp_path / "bundle"), load_bundle(tmp_path / "bundle", device="cuda")
    assert gpu.searcher.device.type == "cuda"
    seqs = [np.array([1, 2, 3]), np.array([50, 51, 52, 53])]
    a, _ = cpu.recommend_ids(seqs, 20)
    b, _ = gpu.recommend_ids(seqs, 20)
    assert np.mean(a.ids == b.ids) > 0.9


COLLAB = {"dmi_keys": "items,neighbours,others", "neighbours": 4, "neighbour_alpha": 0.5}
GPU_MODELS = {  # every model family whose code has its own tensors: the figure DMI, both new DMIs, COIN
    "dmi": ("dmi", {}),
    "dmi-collab": ("dmi", COLLAB),
    "dmi-target": ("dmi", {**COLLAB, "dmi_target": "next_item", "cond_dropout": 0.1, "guidance": 2.0}),
    "coin": ("coin", {"coin_negatives": 64}),
}


@pytest.mark.parametrize("name", sorted(GPU_MODELS))
def test_dmi_variants_and_coin_train_on_gpu_and_match_cpu_evaluation(planted, tmp_path, name):
    model_name, extra = GPU_MODELS[name]
    result = train(make_config(model_name, overrides={**SMALL, "device": "cuda", **extra}), planted, tmp_path / "run")
    assert result["test"]["recall@20"] > 0.3  # random retrieval: 0.1
    data = load_dataset(planted)
    gpu_model, cfg = load_trained_model(tmp_path / "run", device="cuda")
    cpu_model, _ = load_trained_model(tmp_path / "run", device="cpu")
    if "neighbours" in cfg.dmi_keys or cfg.neighbour_alpha > 0:
        assert gpu_model.bank.vectors.device.type == "cuda" and gpu_model.bank.vectors.shape[0] > 0
    on_gpu = evaluate_model(gpu_model, data, "test", cfg.seq_len, device="cuda")
    on_cpu = evaluate_model(cpu_model, data, "test", cfg.seq_len, device="cpu")
    assert on_gpu["recall@50"] == pytest.approx(on_cpu["recall@50"], abs=0.01)


def test_http_app_on_gpu_answers_what_cpu_answers(cuda_run, tmp_path):
    import warnings

    from dmirec.serving.app import create_app

    run, _ = cuda_run
    export_bundle(run, tmp_path / "bundle")
    with warnings.catch_warnings():  # starlette's TestClient warns about its httpx transport
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    answers = []
    for device in ("cpu", "cuda"):
        bundle = load_bundle(tmp_path / "bundle", device=device)
        history = [str(x) for x in bundle.item_ids[:5]]
        with TestClient(create_app(bundle), raise_server_exceptions=False) as client:
            r = client.post("/recommend", json={"history": history, "n": 20})
            assert r.status_code == 200, r.text
            assert client.post("/recommend", json={"history": history, "n": 0}).status_code == 422
            answers.append([x["item"] if isinstance(x, dict) else x for x in r.json()["items"]])
    assert len(set(answers[0]) & set(answers[1])) >= 18


def test_training_on_gpu_resumes(planted, tmp_path):
    over = {**SMALL, "device": "cuda", "max_steps": 100}
    train(make_config("remi", overrides=over), planted, tmp_path / "run")
    result = train(make_config("remi", overrides={**over, "max_steps": 200}), planted, tmp_path / "run", resume=True)
    assert result["steps"] == 200 and result["test"]["recall@20"] > 0.3
