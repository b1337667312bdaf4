"""Project-wide test set-up: quiet progress bars, a fixture for ../shared data that skips when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TIERWISE_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One intra-op thread per xdist worker: tiny models run ~10x faster than with threads fighting over 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data (real trace samples); skips the test with a clear message where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (tests using real trace samples need ../shared beside the repo)")
    return SHARED_DATA
