"""HDF5 result files: atomic completion, config hashes, UTF-8 strings and named axes.

Every stage writes one HDF5 file in the run folder with this life cycle:

1. Work happens in ``NAME.h5.partial`` (resumable: a rerun reopens it and continues).
2. On success the file gets ``attrs["complete"] = True`` and is renamed to ``NAME.h5``.

So a file under its final name is always complete, and a killed run never leaves one that claims
to be. Root attributes every result file carries: ``schema`` (file kind and version),
``config_hash`` and ``config`` (the stage's resolved config as JSON), ``leela_interp_version``,
``command`` (the command line, ``sys.argv``) and ``git_commit`` (:func:`git_commit`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from leela_interp import __version__

#: h5py dtype for variable-length UTF-8 strings (readable with plain h5py as ``bytes``/``str``).
STR = h5py.string_dtype(encoding="utf-8")


def config_hash(config: Mapping) -> str:
    """A stable sha256 of a (JSON-serialisable) config mapping; keys are sorted."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def git_commit() -> str:
    """The package checkout's ``git`` commit (``-dirty`` appended when tracked files differ from
    it), or ``"unknown"`` outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        run = functools.partial(subprocess.run, cwd=here, capture_output=True, text=True,
                                check=True, timeout=10)
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: how a result file names the network, puzzle set or earlier
    result file it was computed from (``network_sha256``, ``puzzles_sha256``, ...)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_path(path: str | Path) -> Path:
    """The in-progress name of result file ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def is_complete(path: str | Path, expected_hash: str | None = None) -> bool:
    """True if ``path`` exists, is marked complete, and (if given) has ``expected_hash``."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                return False
            return expected_hash is None or f.attrs.get("config_hash") == expected_hash
    except OSError:
        return False


@contextlib.contextmanager
def open_partial(path: str | Path, *, schema: str, config: Mapping,
                 resume: bool = True) -> Iterator[h5py.File]:
    """Open ``path``'s partial file for writing; on clean exit mark it complete and rename it.

    Args:
        path: the final file name.
        schema: file kind and version, e.g. ``"leela_interp.puzzles/1"``.
        config: the stage config; its hash decides whether an existing partial file is resumed.
        resume: reuse an existing partial file with the same config hash (else start afresh).

    A partial file written under another config is discarded. If the block raises, the partial
    file is left for a later resume and the final name is not touched.
    """
    path = Path(path)
    tmp = partial_path(path)
    digest = config_hash(config)
    if tmp.exists() and resume:
        try:
            with h5py.File(tmp, "r") as f:
                if f.attrs.get("config_hash") != digest or f.attrs.get("schema") != schema:
                    resume = False
        except OSError:  # a file broken mid-write (killed process): start again
            resume = False
    if tmp.exists() and not resume:
        tmp.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(tmp, "a")
    try:
        f.attrs["schema"] = schema
        f.attrs["config_hash"] = digest
        f.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
        f.attrs["leela_interp_version"] = __version__
        f.attrs["command"] = shlex.join(sys.argv)
        f.attrs["git_commit"] = git_commit()
        f.attrs["complete"] = False
        yield f
        f.attrs["complete"] = True
    finally:
        f.close()
    if path.exists():
        path.unlink()
    os.replace(tmp, path)


def write_strings(group: h5py.Group, name: str, values: Sequence[str], **kwargs) -> h5py.Dataset:
    """Store ``values`` as a 1-D variable-length UTF-8 string dataset."""
    if name in group:
        del group[name]
    return group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR,
                                **kwargs)


def read_strings(dataset: h5py.Dataset) -> list[str]:
    """A UTF-8 string dataset as a list of ``str``."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in dataset[()]]


def label_axes(dataset: h5py.Dataset, *names: str, **attrs) -> h5py.Dataset:
    """Name each axis (``dataset.dims[i].label``) and set attributes such as units or sign."""
    if len(names) != dataset.ndim:
        raise ValueError(f"{dataset.name}: {dataset.ndim} axes, got labels {names!r}")
    for dim, name in zip(dataset.dims, names):
        dim.label = name
    for key, value in attrs.items():
        dataset.attrs[key] = value
    return dataset
