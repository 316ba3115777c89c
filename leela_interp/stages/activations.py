"""``stage=activations``: cache the chosen hooks' activations of the run's puzzle set.

Reads ``<out_dir>/puzzles.h5`` and writes ``<out_dir>/activations.h5`` with
:func:`leela_interp.experiments.activations.cache_activations` (layout: ``docs/activations.md``).
Skips when the file is complete for the same network, puzzle set and ``activations`` config; resumes
an interrupted run; refuses a cache made with another network or puzzle set unless
``force=true``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from leela_interp.errors import ConfigError
from leela_interp.experiments.activations import cache_activations, cache_config, check_cache
from leela_interp.outputs.results import remove_leftovers, sha256_file
from leela_interp.puzzles.puzzle_set import PuzzleSet
from leela_interp.stages.common import load_model, puzzles_net, run_dir

log = logging.getLogger(__name__)

OUTPUT = "activations.h5"


def stage_config(cfg: DictConfig) -> dict:
    """What the output records and hashes: the ``activations`` section (less ``batch_size``)
    and the model settings that change values (the weights are identified by sha256)."""
    a = cfg.activations
    hooks = OmegaConf.to_container(a.hooks, resolve=True) if OmegaConf.is_config(a.hooks) \
        else a.hooks
    return cache_config(hooks=hooks, boards=a.boards, dtype=a.dtype, compression=a.compression,
                        model={"dtype": cfg.model.dtype, "policy_head": cfg.model.policy_head,
                               "value_head": cfg.model.value_head})


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/activations.h5`` (or skip it when up to date); returns its path."""
    out = run_dir(cfg)
    puzzles_path = out / "puzzles.h5"
    if not puzzles_path.exists():
        raise ConfigError(f"{puzzles_path} not found: run the puzzles stage first "
                          f"(leela-interp stage=puzzles out_dir={out})")
    config = stage_config(cfg)
    path = out / OUTPUT
    network_sha256, puzzles_sha256 = sha256_file(cfg.model.path), sha256_file(puzzles_path)
    if not cfg.force and check_cache(path, network_sha256=network_sha256,
                                     puzzles_sha256=puzzles_sha256, config=config):
        log.info("%s is up to date for this config; skipping (force=true redoes it)", path)
        remove_leftovers(path)
        return path
    net = load_model(cfg)
    a = cfg.activations
    cache_activations(net, PuzzleSet.load(puzzles_path), path, hooks=config["hooks"],
                      boards=a.boards, dtype=a.dtype, compression=a.compression,
                      batch_size=a.batch_size or cfg.model.batch_size,
                      puzzles_sha256=puzzles_sha256, config=config,
                      attrs=puzzles_net(puzzles_path, network_sha256, cfg.model.path),
                      overwrite=bool(cfg.force))
    log.info("wrote %s", path)
    return path
