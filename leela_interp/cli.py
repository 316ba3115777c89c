"""The ``leela-interp`` command: a Hydra app that runs one stage (``stage=NAME``) or all of them.

Only argument handling lives here; each stage is a plain function ``run(cfg) -> None`` in
:mod:`leela_interp.stages`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# conf/ sits beside the package: the project is installed editable from its checkout
# (scripts/setup.sh), so the configs users edit are the ones that run.
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    from leela_interp.stages import run_stages

    run_stages(cfg)


if __name__ == "__main__":
    main()
