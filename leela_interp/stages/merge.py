"""``stage=merge``: merge sharded ``puzzles.h5`` files into ``<out_dir>/puzzles.h5``.

    leela-interp stage=merge 'merge.inputs=[runs/s0,runs/s1]' out_dir=runs/merged
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from leela_interp.puzzles.shards import merge_puzzles
from leela_interp.stages.common import run_dir


def run(cfg: DictConfig) -> None:
    inputs = [Path(p) / "puzzles.h5" for p in cfg.merge.inputs]
    print(merge_puzzles(inputs, run_dir(cfg) / "puzzles.h5"))
