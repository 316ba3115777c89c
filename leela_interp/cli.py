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

# conf/ sits beside the package in a checkout; an installed wheel carries it as leela_interp.conf.
_CHECKOUT_CONF = Path(__file__).resolve().parent.parent / "conf"
CONFIG_PATH = str(_CHECKOUT_CONF) if _CHECKOUT_CONF.is_dir() else "pkg://leela_interp.conf"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    from leela_interp.stages import run_stages

    run_stages(cfg)


if __name__ == "__main__":
    main()
