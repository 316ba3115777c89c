"""The ``leela-interp`` command: a Hydra app that runs one stage (``stage=NAME``) or all of them.

Only argument handling lives here; each stage is a plain function ``run(cfg) -> None`` in
:mod:`leela_interp.stages`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# conf/ sits beside the package: the project is installed editable from its checkout
# (scripts/setup.sh), so the configs users edit are the ones that run.
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


def sweep_dir(*, _root_: DictConfig) -> str:
    """``hydra.sweep.dir`` (where a multirun writes ``multirun.yaml``): ``out_dir`` up to the
    folder above its first interpolation (``runs/sweep/${hydra:job.num}`` -> ``runs/sweep``),
    or ``out_dir`` itself when it has none. Resolvable before any job exists."""
    raw = str(OmegaConf.to_container(_root_, resolve=False)["out_dir"])
    static = raw.split("${", 1)[0]
    if static == raw:
        return raw
    return os.path.dirname(static) or "."


def job_subdir(out_dir: str, *, _root_: DictConfig) -> str:
    """``hydra.sweep.subdir``: the job's ``out_dir`` relative to :func:`sweep_dir`, so that
    Hydra writes each job's ``.hydra/`` into that job's own run folder."""
    return os.path.relpath(out_dir, sweep_dir(_root_=_root_))


OmegaConf.register_new_resolver("leela_interp.sweep_dir", sweep_dir, replace=True)
OmegaConf.register_new_resolver("leela_interp.job_subdir", job_subdir, replace=True)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    from leela_interp.stages import run_stages

    run_stages(cfg)


if __name__ == "__main__":
    main()
