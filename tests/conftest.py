"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = (REPO_ROOT.parent / "shared" / "datasets").resolve()


@pytest.fixture
def shared_datasets() -> Path:
    """``../shared/datasets`` beside the repository; the test is skipped when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"benchmark datasets not available ({SHARED_DATASETS} is absent)")
    return SHARED_DATASETS
