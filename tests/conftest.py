"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = (REPO_ROOT.parent / "shared" / "datasets").resolve()


@pytest.fixture
def shared_datasets() -> Path:
    """``../shared/datasets`` beside the repository; the test is skipped when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"benchmark datasets not available ({SHARED_DATASETS} is absent)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def tiny_serving_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset dir, run dir) of a 50-step ComiRec-SA run on planted data, shared by the serving tests."""
    from dmirec.data.synthetic import make_planted_dataset
    from dmirec.training.train import make_config, train

    base = tmp_path_factory.getbasetemp() / "serve_tiny_run"
    data, run = base / "data", base / "run"
    if not (run / "result.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        make_planted_dataset(data, num_users=600, num_items=200, num_clusters=10)
        overrides = {"embedding_dim": 16, "max_steps": 50, "eval_every": 50, "batch_size": 64, "num_negatives": 64,
                     "progress": False, "device": "cpu", "seq_len": 10}
        train(make_config("comirec-sa", overrides=overrides), data, run)
    return data, run


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread, as the server runs each request (tiny matmuls); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
