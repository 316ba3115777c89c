"""Where the tests find Stockfish: the configured oracle path, else ``stockfish`` on PATH."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF_PATH = str(OmegaConf.load(Path(__file__).resolve().parents[1] / "leela_interp" / "conf"
                               / "puzzles" / "paper.yaml").oracle.path)
"""``puzzles.oracle.path`` of ``leela_interp/conf/puzzles/paper.yaml`` (Debian's
/usr/games/stockfish)."""

STOCKFISH: str | None = shutil.which(CONF_PATH) or shutil.which("stockfish")
"""The Stockfish binary the tests run, or None when there is none."""

SKIP_REASON = (f"needs Stockfish: none at puzzles.oracle.path={CONF_PATH!r} or on PATH "
               "(apt-get install stockfish)")

needs_stockfish = pytest.mark.skipif(STOCKFISH is None, reason=SKIP_REASON)
"""Mark for tests that run Stockfish."""
