"""``stage=report``: write ``report.md`` and ``report.html`` in the run folder from every stage
output found there (the gallery's size and seed: ``report.gallery``; the comparison with an
ordinary-position control folder: ``report.control_dir``)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from leela_interp.errors import ConfigError
from leela_interp.outputs.report import write_report
from leela_interp.stages.common import run_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    g = cfg.report.gallery
    if not isinstance(g.k, int) or g.k < 0:
        raise ConfigError(f"report.gallery.k={g.k!r}: give an integer >= 0 (puzzles of each "
                          f"kind in report.html's gallery)")
    control = cfg.report.get("control_dir")
    path = write_report(run_dir(cfg), gallery_k=g.k, gallery_seed=int(g.seed),
                        model_path=cfg.model.path, control_dir=control)
    log.info("wrote %s and %s", path, path.with_suffix(".html"))
    print(path)
