"""``stage=report``: write ``report.md`` in the run folder from every stage output found there."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from leela_interp.report import write_report
from leela_interp.stages.common import run_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    path = write_report(run_dir(cfg))
    log.info("wrote %s", path)
    print(path)
