"""``stage=patching``: activation patching from the corrupted board (residual stream and heads).

Reads ``<out_dir>/puzzles.h5``, writes ``<out_dir>/patching.h5`` with
:func:`leela_interp.experiments.patching.write_patching` and PNG figures under
``<out_dir>/figures/``; the file layout, sign convention and square categories are in
``docs/interventions.md``. Resumable by chunks of puzzles (each committed as its own file,
:class:`~leela_interp.outputs.chunked.ChunkedOutput`: a kill at any instant loses at most the
chunk in progress); skipped when complete for the same network, puzzle set and ``patching``
config; ``force=true`` redoes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from leela_interp.experiments.patching import OUTPUT, PatchingSettings, write_patching
from leela_interp.outputs.shards import shard_name
from leela_interp.stages.common import (effects_config, load_model, puzzles_input, puzzles_net,
                                        run_dir, up_to_date)

log = logging.getLogger(__name__)


def settings(cfg: DictConfig) -> PatchingSettings:
    """The ``patching`` section (and ``model.batch_size``) as :class:`PatchingSettings`.

    Raises:
        ConfigError: a value :class:`PatchingSettings` refuses.
    """
    pc = cfg.patching
    sites = list(pc.sites) if OmegaConf.is_list(pc.sites) else [pc.sites]
    return PatchingSettings(sites=tuple(sites), heads=bool(pc.heads), method=pc.method,
                            overlap_rule=pc.overlap_rule, skip_identical=bool(pc.skip_identical),
                            require_pv0_top=bool(pc.require_pv0_top), max_puzzles=pc.max_puzzles,
                            chunk_size=int(pc.chunk_size), head_pairs_top_n=pc.head_pairs.top_n,
                            batch_size=int(cfg.model.batch_size), shard=int(pc.shard),
                            num_shards=int(pc.num_shards))


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/patching.h5`` (or skip it when up to date) and its figures.

    A shard (``patching.num_shards > 1``) writes ``patching.shard-K-of-N.h5`` and no figures;
    ``stage=merge merge.stage=patching`` joins the shards.
    """
    from leela_interp.outputs import figures

    setup = settings(cfg)
    puzzles_path = puzzles_input(cfg)
    out = run_dir(cfg)
    sharded = setup.num_shards > 1
    path = out / (shard_name(OUTPUT, setup.shard, setup.num_shards) if sharded else OUTPUT)
    config = effects_config(cfg, "patching", puzzles_path)
    if not up_to_date(path, config, bool(cfg.force)):
        net = load_model(cfg)
        write_patching(net, puzzles_path, path, setup, config=config,
                       attrs=puzzles_net(puzzles_path, net.sha256, cfg.model.path),
                       resume=not cfg.force)
    if cfg.patching.figures and not sharded:
        for fig in figures.patching_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    return path
