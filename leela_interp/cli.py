"""The ``leela-interp`` command: a Hydra app that runs one stage (``stage=NAME``) or all of them.

Only argument handling lives here; each stage is a plain function ``run(cfg) -> None`` in
:mod:`leela_interp.stages`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Sequence
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
    return first_folder(str(OmegaConf.to_container(_root_, resolve=False)["out_dir"]))


def first_folder(out_dir: str) -> str:
    """The folder Hydra makes first for the raw (unresolved) ``out_dir``: the folder above its
    first interpolation, or ``out_dir`` itself when it has none."""
    static = out_dir.split("${", 1)[0]
    if static == out_dir:
        return out_dir
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


def check_out_dir(argv: Sequence[str]) -> None:
    """Check, before Hydra starts, the run folders that the command line ``argv`` names.

    Hydra makes ``hydra.run.dir`` (``out_dir``; a multirun: :func:`sweep_dir`) and writes
    ``.hydra/`` there before any stage runs, so an unusable ``out_dir`` would end in Hydra's
    raw ``OSError``. Checked: the last ``out_dir=`` override (each value of a multirun sweep
    over it), else the default of ``config.yaml``, each as :func:`first_folder`, by
    :func:`leela_interp.stages.common.check_run_folder` (which creates nothing). Hydra's own
    flags that run nothing (``--help``, ``--cfg``, ``--info``, ...) and command lines Hydra
    refuses are left to Hydra.

    Raises:
        ConfigError: a folder that cannot be made or written, naming ``out_dir`` and the value.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from leela_interp.stages.common import check_run_folder

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(argv)
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except (SystemExit, HydraException):  # --version, a usage error: Hydra reports them
        return
    if (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
            or args.experimental_rerun):
        return
    values = [] if args.config_name else [
        OmegaConf.load(Path(CONFIG_PATH) / "config.yaml").out_dir]
    for override in overrides:
        if override.key_or_group != "out_dir" or override.package is not None:
            continue
        if override.is_delete():
            values = []
        elif override.is_sweep_override():  # Hydra refuses a sweep without -m
            values = list(override.sweep_string_iterator()) if args.multirun else []
        else:
            values = [override.value()]
    for value in values:
        if value is not None:
            check_run_folder(first_folder(str(value)), str(value))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def run(cfg: DictConfig) -> None:
    """Hydra's app: :func:`leela_interp.stages.run_stages` on the composed config."""
    from leela_interp.stages import run_stages

    run_stages(cfg)


def main() -> None:
    """The ``leela-interp`` command: :func:`check_out_dir`, then Hydra runs :func:`run`.

    An unusable ``out_dir`` ends the command with exit status 1 and one line,
    ``leela_interp.errors.ConfigError: out_dir='...' cannot be used as a run folder (...)``.
    """
    try:
        check_out_dir(sys.argv[1:])
    except ConfigError as exc:
        sys.exit(f"{ConfigError.__module__}.{ConfigError.__name__}: {exc}")
    run()


if __name__ == "__main__":
    main()
