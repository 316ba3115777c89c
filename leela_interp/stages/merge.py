"""``stage=merge``: join the shards of one stage's sharded run into ``out_dir``.

    leela-interp stage=merge 'merge.inputs=[runs/s0,runs/s1]' out_dir=runs/merged
    leela-interp stage=merge merge.stage=activations 'merge.inputs=[runs/a0,runs/a1]' \\
        out_dir=runs/merged

``merge.stage=puzzles`` (the default) merges each folder's ``puzzles.h5`` (made with
``puzzles.shard``/``num_shards``) in source-row order
(:func:`leela_interp.puzzles.shards.merge_puzzles`). ``merge.stage=activations`` joins the
``activations.shard-K-of-N.h5`` files found in the folders (every shard once:
:func:`leela_interp.outputs.shards.find_shards`) into ``activations.h5``, the file an unsharded
run writes (:func:`leela_interp.experiments.activations.merge_activations`).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from leela_interp.errors import ConfigError
from leela_interp.outputs.results import sha256_file
from leela_interp.outputs.shards import find_shards
from leela_interp.puzzles.shards import merge_puzzles
from leela_interp.stages.common import run_dir


def run(cfg: DictConfig) -> Path:
    """Merge the shards of ``merge.stage`` found in ``merge.inputs``; returns the merged file.

    Raises:
        ConfigError: no shards, shards of different runs, a shard missing or found twice, or
            (activations) shards made from another ``puzzles.h5`` than ``out_dir``'s.
    """
    out = run_dir(cfg)
    if cfg.merge.stage == "puzzles":
        merged = merge_puzzles([Path(p) / "puzzles.h5" for p in cfg.merge.inputs],
                               out / "puzzles.h5")
    else:
        from leela_interp.experiments.activations import ActivationFile, merge_activations

        paths = find_shards(cfg.merge.inputs, "activations.h5")
        puzzles = out / "puzzles.h5"
        if puzzles.exists():
            with ActivationFile(paths[0]) as first:
                made_from = first.puzzles_sha256
            if made_from != sha256_file(puzzles):
                raise ConfigError(f"{paths[0]} was made from another puzzles.h5 than {puzzles} "
                                  f"(sha256 {made_from[:12]}...): merge into the folder whose "
                                  f"puzzles.h5 the shards read (their inputs_dir)")
        a = cfg.activations
        merged = merge_activations(paths, out / "activations.h5",
                                   batch_size=a.batch_size or cfg.model.batch_size,
                                   overwrite=bool(cfg.force))
    print(merged)
    return merged
