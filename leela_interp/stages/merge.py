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
``merge.stage=patching`` joins the ``patching.shard-K-of-N.h5`` files into ``patching.h5`` and
finishes it as an unsharded run does
(:func:`leela_interp.experiments.patching.merge_patching`, then the patching stage; give the
merge the shards' ``patching.*`` and ``model.*`` settings); ``merge.stage=ablations`` the same
for ``ablations.shard-K-of-N.h5`` (:func:`leela_interp.experiments.ablations.merge_ablations`,
then the ablations stage).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from leela_interp.errors import ConfigError
from leela_interp.outputs.results import config_hash, is_complete
from leela_interp.outputs.shards import find_shards
from leela_interp.puzzles.shards import merge_puzzles
from leela_interp.stages.common import effects_config, puzzles_input, run_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Merge the shards of ``merge.stage`` found in ``merge.inputs``; returns the merged file.

    Raises:
        ConfigError: no shards, shards of different runs, a shard missing or found twice, or
            shards made from another ``puzzles.h5`` than ``out_dir``'s (or, patching, with
            another config than the merge's).
    """
    out = run_dir(cfg)
    if cfg.merge.stage == "puzzles":
        merged = merge_puzzles([Path(p) / "puzzles.h5" for p in cfg.merge.inputs],
                               out / "puzzles.h5")
    elif cfg.merge.stage == "patching":
        merged = _effects(cfg, "patching")
    elif cfg.merge.stage == "ablations":
        merged = _effects(cfg, "ablations")
    else:
        from leela_interp.experiments.activations import merge_activations

        a = cfg.activations
        merged = merge_activations(find_shards(cfg.merge.inputs, "activations.h5"),
                                   out / "activations.h5",
                                   batch_size=a.batch_size or cfg.model.batch_size,
                                   overwrite=bool(cfg.force), puzzles=out / "puzzles.h5")
    print(merged)
    return merged


def _effects(cfg: DictConfig, name: str) -> Path:
    """``merge.stage=patching|ablations``: the shards' rows committed as the unsharded run's
    chunks (:func:`leela_interp.experiments.patching.merge_patching`,
    :func:`leela_interp.experiments.ablations.merge_ablations`), then the stage itself, which
    finds every chunk done and only finishes the file.

    Raises:
        ConfigError: the merge's config is itself sharded, or what the merge function raises.
    """
    from leela_interp.stages import ablations, patching

    if cfg[name].num_shards != 1:
        raise ConfigError(f"stage=merge merge.stage={name}: leave {name}.shard and "
                          f"{name}.num_shards out (the merge writes the unsharded file)")
    puzzles_path = puzzles_input(cfg)
    if name == "patching":
        from leela_interp.experiments.patching import OUTPUT
        from leela_interp.experiments.patching import merge_patching as merge

        stage, config = patching, effects_config(cfg, "patching", puzzles_path)
    else:
        from leela_interp.experiments.ablations import OUTPUT
        from leela_interp.experiments.ablations import merge_ablations as merge

        stage, config = ablations, ablations.stage_config(cfg, puzzles_path, run_dir(cfg))
    path = run_dir(cfg) / OUTPUT
    force = bool(cfg.force)
    if not force and is_complete(path, config_hash(config)):
        log.info("%s is up to date for this config; skipping (force=true redoes it)", path)
        return path
    merge(find_shards(cfg.merge.inputs, OUTPUT), path, puzzles_path, stage.settings(cfg),
          config=config, resume=not force)
    with open_dict(cfg):
        cfg.force = False  # the stage must resume the chunks just committed
    try:
        return stage.run(cfg)
    finally:
        with open_dict(cfg):
            cfg.force = force
