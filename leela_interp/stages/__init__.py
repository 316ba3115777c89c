"""Pipeline stages. Each stage is a module with ``run(cfg: DictConfig) -> None``.

``STAGES`` lists them in pipeline order; ``stage=all`` runs every stage in that order.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig, open_dict

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
    "show": "show",
    "merge": "merge",
}
#: Stages that ``stage=all`` runs (``info`` and ``inspect`` only print; ``show`` draws one
#: puzzle).
PIPELINE: list[str] = ["puzzles", "activations", "patching", "ablations", "probes", "report"]


def run_stages(cfg: DictConfig) -> None:
    """Run ``cfg.stage``: one name, a list of names (in that order), or ``all`` (the pipeline).

    ``cfg.threads`` (if set) is the torch thread count for the whole run.

    Raises:
        ConfigError: an unknown stage or ``force`` value, or a stage ran out of memory (the
            message names ``model.batch_size``).
    """
    import torch

    stage = cfg.stage
    names = PIPELINE if stage == "all" else [stage] if isinstance(stage, str) else list(stage)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}; choose one of {['all', *STAGES]}")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    force = cfg.get("force", False)
    if isinstance(force, str):  # force=STAGE: redo that stage and every later pipeline stage
        if force not in PIPELINE:
            raise ConfigError(f"force={force!r}: give true, false or a stage of {PIPELINE}")
        redo = set(PIPELINE[PIPELINE.index(force):])
    for name in names:
        if isinstance(force, str):
            with open_dict(cfg):
                cfg.force = name in redo
        try:
            importlib.import_module(f"leela_interp.stages.{STAGES[name]}").run(cfg)
        except torch.OutOfMemoryError as exc:
            raise ConfigError(
                f"stage={name} ran out of memory on {cfg.model.device or 'the default device'} "
                f"with model.batch_size={cfg.model.batch_size} positions per forward pass "
                f"(activations.batch_size={cfg.activations.get('batch_size')}); rerun with a "
                f"smaller model.batch_size: {exc}") from exc
    if isinstance(force, str):
        with open_dict(cfg):
            cfg.force = force
