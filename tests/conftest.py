"""Shared fixtures: the real-data folder and per-test run directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real corpora: `$LATENTLM_DATA`, else `../shared/data` beside the repository."""
    path = Path(os.environ.get("LATENTLM_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"real data folder not found at {path}; set LATENTLM_DATA")
    return path


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Small CPU tests run faster and reproducibly on one intra-op thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)
