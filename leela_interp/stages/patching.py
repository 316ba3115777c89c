"""``stage=patching``: activation patching from the corrupted board (residual stream and heads).

Reads ``<out_dir>/puzzles.h5``, writes ``<out_dir>/patching.h5`` with
:func:`leela_interp.experiments.patching.write_patching` and PNG figures under
``<out_dir>/figures/``; the file layout, sign convention and square categories are in
``docs/interventions.md``. Resumable by chunks of puzzles (each committed as its own file,
:class:`~leela_interp.outputs.results.ChunkedOutput`: a kill at any instant loses at most the
chunk in progress); skipped when complete for the same network, puzzle set and ``patching``
config; ``force=true`` redoes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from leela_interp.experiments.patching import OUTPUT, PatchingSettings, write_patching
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
                            batch_size=int(cfg.model.batch_size))


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/patching.h5`` (or skip it when up to date) and its figures."""
    from leela_interp.outputs import figures

    setup = settings(cfg)
    puzzles_path = puzzles_input(cfg)
    out = run_dir(cfg)
    path = out / OUTPUT
    config = effects_config(cfg, "patching", puzzles_path)
    if not up_to_date(path, config, bool(cfg.force)):
        net = load_model(cfg)
        write_patching(net, puzzles_path, path, setup, config=config,
                       attrs=puzzles_net(puzzles_path, net.sha256, cfg.model.path),
                       resume=not cfg.force)
    if cfg.patching.figures:
        for fig in figures.patching_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    return path
