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

from leela_interp.errors import ConfigError

log = logging.getLogger(__name__)

#: The Hydra configs: package data (``leela_interp/conf``), so an installed wheel finds them too.
CONFIG_PATH = str(Path(__file__).resolve().parent / "conf")
_CHECKOUT = Path(__file__).resolve().parent.parent
#: The project's ``data/`` folder (its trained nets and mined puzzles) when the package runs from
#: its checkout (editable install or ``PYTHONPATH``); None for an installed wheel (see
#: :func:`data_path`).
CHECKOUT_DATA = _CHECKOUT / "data" if (_CHECKOUT / "pyproject.toml").is_file() else None


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


def data_path(relative: str, *, _node_, _root_: DictConfig) -> str:
    """``${leela_interp.data:nets/x.pb.gz}``: a file of the project's data folder, the top-level
    key ``data_dir`` when set, else the checkout's ``data/`` (:data:`CHECKOUT_DATA`).

    Raises:
        ConfigError: ``data_dir`` is null and there is no checkout ``data/`` folder (an installed
            wheel); the message names the key that asked for the file, to pass it directly.
    """
    data_dir = _root_.get("data_dir")
    if data_dir is None:
        data_dir = CHECKOUT_DATA
    if data_dir is None:
        key = _node_._get_full_key(None)
        raise ConfigError(
            f"{key} defaults to data/{relative}, a file of the project's data/ folder, which an "
            f"installed package does not have: pass {key}=FILE, or data_dir=FOLDER (a "
            f"checkout's data/)")
    return str(Path(data_dir) / relative)


OmegaConf.register_new_resolver("leela_interp.data", data_path, replace=True)
OmegaConf.register_new_resolver("leela_interp.sweep_dir", sweep_dir, replace=True)
OmegaConf.register_new_resolver("leela_interp.job_subdir", job_subdir, replace=True)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    from leela_interp.stages import run_stages

    run_stages(cfg)


if __name__ == "__main__":
    main()
