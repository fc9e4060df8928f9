"""Shared fixtures: the real data in ../shared/data and small helpers."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real fixtures (Flickr8k, f30k_mini, SCAN vocab, VG vocabularies)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_DATA.resolve()}")
    return SHARED_DATA.resolve()
