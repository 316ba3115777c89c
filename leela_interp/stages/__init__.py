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
    """Run ``cfg.stage``: one name, a list of names (in that order), or ``all`` (the pipeline).

    ``cfg.threads`` (if set) is the torch thread count for the whole run.
    """
    import torch

    stage = cfg.stage
    names = PIPELINE if stage == "all" else [stage] if isinstance(stage, str) else list(stage)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}; choose one of {['all', *STAGES]}")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    for name in names:
        importlib.import_module(f"leela_interp.stages.{STAGES[name]}").run(cfg)
