"""What every stage shares: its run folder, its config section, skipping finished work."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from leela_interp.errors import ConfigError
from leela_interp.results import config_hash, is_complete

log = logging.getLogger(__name__)


#: Outputs of earlier stages that later stages read from the run folder.
SHARED_INPUTS = ("puzzles.h5", "activations.h5")


def run_dir(cfg: DictConfig) -> Path:
    """The run folder (``out_dir``), created if needed. Stages read and write only here.

    With ``inputs_dir`` set (multirun sweeps: one ``out_dir`` per job), the earlier stages'
    outputs found there are symlinked into ``out_dir`` first, so every job reads the same inputs
    and writes its own outputs.
    """
    path = Path(cfg.out_dir)
    path.mkdir(parents=True, exist_ok=True)
    inputs = cfg.get("inputs_dir")
    if inputs:
        inputs = Path(inputs).resolve()
        if not inputs.is_dir():
            raise ConfigError(f"inputs_dir {str(inputs)!r} is not a folder")
        for name in SHARED_INPUTS:
            source, target = inputs / name, path / name
            if source.exists() and not target.exists() and source != target.resolve():
                target.symlink_to(source)
    return path


def section(cfg: DictConfig, *keys: str) -> dict:
    """The resolved config sections ``keys`` as one plain dict (what a stage's hash covers)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig)
            else cfg[k] for k in keys}


def up_to_date(path: Path, config: dict, force: bool) -> bool:
    """True (and logged) when ``path`` is complete for ``config`` and ``force`` is off."""
    if not force and is_complete(path, config_hash(config)):
        log.info("%s is up to date for this config; skipping (force=true redoes it)", path)
        return True
    return False
