"""Shared fixtures: the real data in ../shared/data and small helpers."""
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real fixtures (Flickr8k, f30k_mini, SCAN vocab, VG vocabularies).

    Absent fixtures skip a developer's run but fail CI (CI=true), where they must be present.
    """
    if not SHARED_DATA.is_dir():
        message = f"shared fixtures not found at {SHARED_DATA.resolve()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: the real fixtures are required)")
        pytest.skip(message)
    return SHARED_DATA.resolve()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
