"""What every stage shares: its run folder, its config section, skipping finished work."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
from omegaconf import DictConfig, OmegaConf

from leela_interp.errors import ConfigError
from leela_interp.outputs.results import config_hash, is_complete

log = logging.getLogger(__name__)


#: Outputs of earlier stages that later stages read from the run folder (``patching.h5``: the
#: ablations stage's default single-edge head).
SHARED_INPUTS = ("puzzles.h5", "activations.h5", "patching.h5")


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


def puzzles_net(puzzles_path: Path, network_sha256: str, model_path) -> dict[str, str]:
    """Whether the network under study is the strong net that filtered ``puzzles.h5``.

    The puzzles stage keeps the puzzles its strong net solves and picks each corrupted board
    with it; another network may not solve them, so its effects are measured on someone else's
    puzzle set. A mismatch is logged as a warning and recorded, not refused.

    Returns:
        The root attributes every stage output records: ``puzzles_strong_sha256`` (the
        ``strong_sha256`` of ``puzzles.h5``; ``""`` when it does not record one) and
        ``puzzles_net``: ``same``, ``different`` or ``unknown``.
    """
    with h5py.File(puzzles_path, "r") as f:
        strong = str(f.attrs.get("strong_sha256", ""))
    if not strong:
        log.info("%s does not record the strong net that filtered it (no strong_sha256 "
                 "attribute); cannot check that model.path is that net", puzzles_path)
        verdict = "unknown"
    elif strong == network_sha256:
        verdict = "same"
    else:
        log.warning("model.path=%s (sha256 %s) is not the strong net that filtered %s "
                    "(strong_sha256 %s): its puzzles were chosen for another network's "
                    "moves", model_path, network_sha256, puzzles_path, strong)
        verdict = "different"
    return {"puzzles_strong_sha256": strong, "puzzles_net": verdict}
