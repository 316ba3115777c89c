"""Pipeline stages. Each stage is a module with ``run(cfg: DictConfig) -> None``.

``STAGES`` lists them in pipeline order; ``stage=all`` runs every stage in that order.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from leela_interp.errors import ConfigError

#: Stage name -> module under leela_interp.stages, in pipeline order.
STAGES: dict[str, str] = {
    "info": "info",
    "puzzles": "puzzles",
    "activations": "activations",
    "inspect": "inspect",
    "patching": "patching",
    "ablations": "ablations",
    "probes": "probes",
    "report": "report",
}
#: Stages that ``stage=all`` runs (``info`` and ``inspect`` only print).
PIPELINE: list[str] = ["puzzles", "activations", "patching", "ablations", "probes", "report"]


def run_stages(cfg: DictConfig) -> None:
    """Run ``cfg.stage`` (one name, or ``all`` for every stage of the pipeline in order)."""
    names = PIPELINE if cfg.stage == "all" else [cfg.stage]
    for name in names:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; choose one of {['all', *STAGES]}")
        importlib.import_module(f"leela_interp.stages.{STAGES[name]}").run(cfg)
