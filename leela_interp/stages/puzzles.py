"""``stage=puzzles``: Lichess puzzles -> ``puzzles.h5`` in the run folder.

The work is :func:`leela_interp.puzzles.pipeline.build_puzzles`; this module only reads the
config (``model`` = the strong net, ``puzzles`` = everything else, see
``leela_interp/conf/puzzles/paper.yaml``) and names the output. Output layout: ``docs/puzzles.md``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from leela_interp.puzzles.config import PipelineConfig
from leela_interp.puzzles.pipeline import BuildSummary, build_puzzles
from leela_interp.stages.common import run_dir, section

#: The stage's output, in the run folder.
OUTPUT = "puzzles.h5"


def output_path(cfg: DictConfig) -> Path:
    """Where this stage writes (and later stages read) the puzzle set."""
    return Path(cfg.out_dir) / OUTPUT


def run(cfg: DictConfig) -> BuildSummary:
    """Build (or resume, or skip when up to date) ``out_dir/puzzles.h5``."""
    sections = section(cfg, "model", "puzzles")
    config = PipelineConfig.from_sections(sections["model"], sections["puzzles"])
    return build_puzzles(config, run_dir(cfg) / OUTPUT, force=bool(cfg.force))
