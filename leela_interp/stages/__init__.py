"""Pipeline stages. Each stage is a module with ``run(cfg: DictConfig) -> None``.

``STAGES`` lists them in pipeline order; ``stage=all`` runs every stage in that order.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from leela_interp.errors import ConfigError

log = logging.getLogger(__name__)

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
#: Stages that only read (run without taking the run folder's lock).
READ_ONLY: frozenset[str] = frozenset({"info", "inspect"})


#: Stages that analyse the puzzles of ``puzzles.h5`` (skipped when it kept none).
ANALYSES: frozenset[str] = frozenset({"activations", "patching", "ablations", "probes"})


def run_stages(cfg: DictConfig) -> None:
    """Run ``cfg.stage``: one name, a list of names (in that order), or ``all`` (the pipeline).

    ``cfg.threads`` (if set) is the torch thread count for the whole run. Every stage but
    ``info`` and ``inspect`` runs holding the lock of ``out_dir``
    (:func:`~leela_interp.stages.common.lock_run_dir`), taken once for all of them.

    The whole config is checked first (:func:`~leela_interp.stages.schema.validate`: types,
    ranges, choices), then what the stages read (:func:`~leela_interp.stages.schema.
    check_inputs`: network files, the puzzle source, the device, Stockfish), before any work.

    When ``puzzles.h5`` kept no puzzle, the stages that analyse puzzles (:data:`ANALYSES`) are
    skipped with a warning saying why
    (:func:`~leela_interp.puzzles.layout.nothing_to_analyse`); the report says so too.

    Raises:
        ConfigError: an unknown stage, a bad ``force``, a value the schema refuses, or a stage
            ran out of memory (the message names ``model.batch_size``).
        WeightsFormatError: a network file the stages read is missing or a folder.
        RunFolderInUseError: another run is writing ``out_dir``.
    """
    import torch

    from leela_interp.puzzles.layout import nothing_to_analyse
    from leela_interp.stages.common import lock_run_dir
    from leela_interp.stages.schema import check_inputs, validate

    stage = cfg.stage
    names = PIPELINE if stage == "all" else [stage] if isinstance(stage, str) else list(stage)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}; choose one of {['all', *STAGES]}")
    validate(cfg)
    check_inputs(cfg, names)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    force = cfg.get("force", False)
    if isinstance(force, str):  # force=STAGE: redo that stage and every later pipeline stage
        if force not in PIPELINE:
            raise ConfigError(f"force={force!r}: give true, false or a stage of {PIPELINE}")
        redo = set(PIPELINE[PIPELINE.index(force):])
    lock = contextlib.nullcontext() if READ_ONLY.issuperset(names) else lock_run_dir(cfg.out_dir)
    with lock:
        for name in names:
            if isinstance(force, str):
                with open_dict(cfg):
                    cfg.force = name in redo
            if name in ANALYSES and (why := nothing_to_analyse(Path(cfg.out_dir) /
                                                               "puzzles.h5")):
                log.warning("%s: skipped, nothing to analyse: %s", name, why)
                continue
            try:
                importlib.import_module(f"leela_interp.stages.{STAGES[name]}").run(cfg)
            except torch.OutOfMemoryError as exc:
                raise ConfigError(
                    f"stage={name} ran out of memory on "
                    f"{cfg.model.device or 'the default device'} with "
                    f"model.batch_size={cfg.model.batch_size} positions per forward pass "
                    f"(activations.batch_size={cfg.activations.get('batch_size')}); rerun "
                    f"with a smaller model.batch_size: {exc}") from exc
    if isinstance(force, str):
        with open_dict(cfg):
            cfg.force = force
