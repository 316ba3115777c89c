"""What every stage shares: its run folder and its lock, its config section, skipping finished
work."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
from omegaconf import DictConfig, OmegaConf

from leela_interp.errors import ConfigError, RunFolderInUseError
from leela_interp.identity import sha256_file
from leela_interp.outputs.results import config_hash, is_complete, remove_leftovers

log = logging.getLogger(__name__)


#: Outputs of earlier stages that later stages read from the run folder (``patching.h5``: the
#: ablations stage's default single-edge head).
SHARED_INPUTS = ("puzzles.h5", "activations.h5", "patching.h5")


def model_device(cfg: DictConfig) -> str:
    """``model.device``, or (null) cuda when available, else cpu: where every stage's nets run."""
    import torch

    return cfg.model.device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(cfg: DictConfig):
    """The network of ``cfg.model`` on its device (:func:`model_device`)."""
    from leela_interp.network import load_network

    return load_network(cfg.model.path, policy_head=cfg.model.policy_head,
                        value_head=cfg.model.value_head, device=model_device(cfg),
                        dtype=cfg.model.dtype)


def run_dir(cfg: DictConfig) -> Path:
    """The run folder (``out_dir``), created if needed. Stages read and write only here.

    With ``inputs_dir`` set (multirun sweeps: one ``out_dir`` per job), the earlier stages'
    outputs found there are symlinked into ``out_dir`` first, so every job reads the same inputs
    and writes its own outputs.
    """
    path = Path(cfg.out_dir)
    path.mkdir(parents=True, exist_ok=True)
    inputs = cfg.get("inputs_dir")
    if inputs:
        inputs = Path(inputs).resolve()
        if not inputs.is_dir():
            raise ConfigError(f"inputs_dir {str(inputs)!r} is not a folder")
        for name in SHARED_INPUTS:
            source, target = inputs / name, path / name
            if source.exists() and not target.exists() and source != target.resolve():
                target.symlink_to(source)
    return path


def puzzles_input(cfg: DictConfig) -> Path:
    """``<out_dir>/puzzles.h5``; raises ConfigError naming the stage to run when it is absent."""
    path = run_dir(cfg) / "puzzles.h5"
    if not path.exists():
        raise ConfigError(f"{path} not found: run the puzzles stage first "
                          f"(leela-interp stage=puzzles out_dir={path.parent})")
    return path


def _unusable(path: Path, why: str) -> ConfigError:
    return ConfigError(f"out_dir={str(path)!r} cannot be used as a run folder ({why}); give a "
                       f"folder you can write")


def check_run_folder(path: str | Path, out_dir: str | None = None) -> None:
    """Check that ``path`` is a folder this process can write in, or can be made one, creating
    nothing: its nearest existing ancestor (``path`` itself when it exists) must be a folder
    in which a temporary file can be made (and is at once removed).

    Args:
        path: the folder.
        out_dir: the ``out_dir`` value to name in the error (default: ``path``).

    Raises:
        ConfigError: it cannot (``/proc/x``, a file or a folder under a file, a read-only
            folder); the message names ``out_dir``, the value and why.
    """
    path = Path(path)
    name = Path(out_dir) if out_dir is not None else path
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _unusable(name, f"{str(existing)!r} is not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise _unusable(name, f"cannot write in {str(existing)!r}: "
                              f"{exc.strerror or exc}") from None


#: The lock file in every run folder (holds the PID and command of the run that has it).
LOCK = ".lock"


def _holder(fd: int) -> dict:
    """The lock file's record; the holder writes it just after locking, so retry briefly."""
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        try:
            return json.loads(text)
        except ValueError:
            time.sleep(0.05)
    return {}


@contextlib.contextmanager
def lock_run_dir(path: str | Path) -> Iterator[Path]:
    """Hold the run folder ``path`` (created if needed) for the duration of the block.

    An exclusive ``flock`` on ``path/.lock``, which records this process's PID, command, host
    and start time. The kernel drops the lock when its process ends, however it ends, so the
    lock of a killed run is simply taken over (with a log line naming that run).

    Raises:
        RunFolderInUseError: another live process holds the lock; the message names its PID
            and command. The second run stops at once and touches nothing.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unusable(path, exc.strerror or str(exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(fd)
            raise RunFolderInUseError(
                f"out_dir {str(path)!r} is in use by PID {h.get('pid', '?')} (command "
                f"{h.get('command', '?')!r}, host {h.get('host', '?')}, since "
                f"{h.get('since', '?')}); wait for it to finish, or use another out_dir") \
                from None
        stale = _holder(fd) if os.fstat(fd).st_size else {}
        if stale.get("pid"):
            log.info("out_dir %s: taking over the lock left by PID %s (command %r), which "
                     "ended without releasing it", path, stale["pid"], stale.get("command"))
        record = {"pid": os.getpid(), "command": " ".join(sys.argv),
                  "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released cleanly: an empty lock file
    finally:
        os.close(fd)  # drops the flock


def section(cfg: DictConfig, *keys: str) -> dict:
    """The resolved config sections ``keys`` as one plain dict (what a stage's hash covers)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig)
            else cfg[k] for k in keys}


def effects_config(cfg: DictConfig, name: str, puzzles_path: Path) -> dict:
    """What the output of stage ``name`` (patching, ablations) hashes: its config section (less
    ``figures``, and less ``shard``/``num_shards`` unless it is a shard's), the model settings
    that change values, and the sha256 of the network and of the puzzle file."""
    section = OmegaConf.to_container(cfg[name], resolve=True)
    section.pop("figures", None)
    if section.get("num_shards", 1) == 1:
        section.pop("shard", None)
        section.pop("num_shards", None)
    return {name: section,
            "model": {"dtype": cfg.model.dtype, "policy_head": cfg.model.policy_head,
                      "value_head": cfg.model.value_head},
            "network_sha256": sha256_file(cfg.model.path),
            "puzzles_sha256": sha256_file(puzzles_path)}


def up_to_date(path: Path, config: dict, force: bool) -> bool:
    """True (and logged) when ``path`` is complete for ``config`` and ``force`` is off; what a
    run killed while finishing it left behind is then removed."""
    if not force and is_complete(path, config_hash(config)):
        log.info("%s is up to date for this config; skipping (force=true redoes it)", path)
        remove_leftovers(path)
        return True
    return False


def puzzles_net(puzzles_path: Path, network_sha256: str, model_path) -> dict[str, str]:
    """Whether the network under study is the strong net that filtered ``puzzles.h5``.

    The puzzles stage keeps the puzzles its strong net solves and picks each corrupted board
    with it; another network may not solve them, so its effects are measured on someone else's
    puzzle set. A mismatch is logged as a warning and recorded, not refused.

    Returns:
        The root attributes every stage output records: ``puzzles_strong_sha256`` (the
        ``strong_sha256`` of ``puzzles.h5``; ``""`` when it does not record one) and
        ``puzzles_net``: ``same``, ``different`` or ``unknown``.
    """
    with h5py.File(puzzles_path, "r") as f:
        strong = str(f.attrs.get("strong_sha256", ""))
    if not strong:
        log.info("%s does not record the strong net that filtered it (no strong_sha256 "
                 "attribute); cannot check that model.path is that net", puzzles_path)
        verdict = "unknown"
    elif strong == network_sha256:
        verdict = "same"
    else:
        log.warning("model.path=%s (sha256 %s) is not the strong net that filtered %s "
                    "(strong_sha256 %s): its puzzles were chosen for another network's "
                    "moves", model_path, network_sha256, puzzles_path, strong)
        verdict = "different"
    return {"puzzles_strong_sha256": strong, "puzzles_net": verdict}
