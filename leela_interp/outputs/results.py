"""HDF5 result files: a life cycle that survives ``kill -9`` at any instant, config hashes,
UTF-8 strings and named axes.

Every stage writes one HDF5 file ``NAME.h5`` in the run folder. A file under its final name is
always complete (``attrs["complete"] = True``): it appears by an atomic rename after everything
in it is written and fsync'd. While a stage works, what it has *committed* is known exactly and
stays consistent whatever instant the process is killed at; a rerun of the same command verifies
it, continues after it, and ends with the file an uninterrupted run writes. Two writers, each in
its own module, share the machinery of this one (publishing a file, root attributes, the names
of partial work, fault points):

- :class:`~leela_interp.outputs.chunked.ChunkedOutput` (small outputs: puzzles, patching,
  ablations, probes): each committed chunk is its own small HDF5 file in
  ``NAME.h5.partial.d/``, assembled into a fresh ``NAME.h5`` at the end.
- :class:`~leela_interp.outputs.rows.RowsFile` (the big activation cache): fixed-size datasets
  in ``NAME.h5.partial`` filled in place, with a journal of the committed row ranges;
  :class:`~leela_interp.outputs.rows.RowsWriter` fills and commits its ranges in one background
  thread while the caller computes the next range.

A partial output made under another config, or one that fails verification (unreadable, other
layout, a damaged chunk), is discarded or cut back to its last good chunk, with a log line; it
is never trusted and never crashes the rerun. ``docs/reliability.md`` has the argument why a
kill at any instant is safe, and how a stage writes its file.

Root attributes every result file carries: ``schema`` (file kind and version), ``config_hash``
and ``config`` (the stage's resolved config as JSON), ``leela_interp_version``, ``command`` (the
command line, ``sys.argv``), ``git_commit`` (:func:`git_commit`), ``complete``.

For tests, :func:`write_point` marks every step of the life cycle at which a kill is
interesting; the environment variable :data:`FAULT_ENV` kills (or raises in) the process at the
N-th one, and :data:`FAULT_LOG_ENV` lists them (``tests/faults.py`` uses both).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from leela_interp.errors import RunFolderInUseError
from leela_interp.identity import __version__

log = logging.getLogger(__name__)

#: h5py dtype for variable-length UTF-8 strings (readable with plain h5py as ``bytes``/``str``).
STR = h5py.string_dtype(encoding="utf-8")
#: ``kill:N`` SIGKILLs the process at its N-th :func:`write_point` (as ``kill -9`` would);
#: ``raise:N`` raises :class:`InjectedFault` there. For fault-injection tests only.
FAULT_ENV = "LEELA_INTERP_FAULT"
#: A file to which every :func:`write_point` reached appends its label, one per line.
FAULT_LOG_ENV = "LEELA_INTERP_FAULT_LOG"
#: Attributes of HDF5's dimension scales that :func:`diff_files` leaves out: object references
#: (file addresses), and the axis labels it compares as ``#dims``.
_SCALE_ATTRS = ("DIMENSION_LIST", "REFERENCE_LIST", "DIMENSION_LABELS")


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


# --------------------------------------------------------------------------- fault points


class InjectedFault(RuntimeError):
    """Raised at a :func:`write_point` chosen with ``LEELA_INTERP_FAULT=raise:N``."""


_points = {"key": None, "count": 0}


def write_point(label: str) -> None:
    """Mark a step of an output's life cycle (a commit, a rename, ...) where a kill may land.

    Does nothing unless :data:`FAULT_ENV` or :data:`FAULT_LOG_ENV` is set. Points are counted
    per process from 1 (a forked child counts afresh).

    Raises:
        InjectedFault: this is the point that ``LEELA_INTERP_FAULT=raise:N`` names.
        ValueError: ``LEELA_INTERP_FAULT`` is not ``kill:N`` or ``raise:N``.
    """
    spec, log_path = os.environ.get(FAULT_ENV), os.environ.get(FAULT_LOG_ENV)
    if not spec and not log_path:
        return
    key = (os.getpid(), spec, log_path)
    if _points["key"] != key:
        _points.update(key=key, count=0)
    _points["count"] += 1
    if log_path:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(label + "\n")
    if spec:
        mode, _, at = spec.partition(":")
        if mode not in ("kill", "raise") or not at.isdigit():
            raise ValueError(f"{FAULT_ENV}={spec!r}: give kill:N or raise:N (N >= 1)")
        if int(at) == _points["count"]:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"{FAULT_ENV}={spec}: fault injected at {label!r}")


# --------------------------------------------------------------------------- durable files


def fsync_path(path: Path) -> None:
    """fsync a file or folder by name (flushes every open handle's data of that inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path, label: str) -> None:
    """Make the finished file ``tmp`` appear as ``path``: fsync, atomic rename, fsync the folder."""
    fsync_path(tmp)
    write_point(f"{label}: written")
    os.replace(tmp, path)
    fsync_path(path.parent)
    write_point(f"{label}: renamed")


def write_json(path: Path, value: object, label: str) -> None:
    """Replace ``path`` by ``value`` as JSON atomically (old or new content, never a mix)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    publish(tmp, path, label)


def root_attrs(f: h5py.File, schema: str, config: Mapping, digest: str) -> None:
    """Set the root attributes every result file carries (the module's list), ``complete``
    ``False``; ``digest`` is :func:`config_hash` of ``config``."""
    f.attrs["schema"] = schema
    f.attrs["config_hash"] = digest
    f.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    f.attrs["leela_interp_version"] = __version__
    f.attrs["command"] = shlex.join(sys.argv)
    f.attrs["git_commit"] = git_commit()
    f.attrs["complete"] = False


def open_h5(path: Path, mode: str) -> h5py.File:
    """``h5py.File(path, mode)``; HDF5's refusal to lock a file another process has open is a
    :class:`RunFolderInUseError`, not a broken file."""
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in str(exc):
            raise RunFolderInUseError(
                f"{path} is open in another process (HDF5 cannot lock it: {exc}); wait for that "
                f"process to finish or close the file") from None
        raise


# --------------------------------------------------------------------------- names


def partial_path(path: str | Path) -> Path:
    """``NAME.h5.partial``: the in-progress file of
    :class:`~leela_interp.outputs.rows.RowsFile` (and of
    :func:`~leela_interp.outputs.rows.open_partial`)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def journal_path(path: str | Path) -> Path:
    """``NAME.h5.partial.journal``: :class:`~leela_interp.outputs.rows.RowsFile`'s record of
    committed rows."""
    path = Path(path)
    return path.with_name(path.name + ".partial.journal")


def chunks_dir(path: str | Path) -> Path:
    """``NAME.h5.partial.d``: :class:`~leela_interp.outputs.chunked.ChunkedOutput`'s folder of
    committed chunks."""
    path = Path(path)
    return path.with_name(path.name + ".partial.d")


def has_partial(path: str | Path) -> bool:
    """Whether an unfinished run left work for ``path`` (a partial file or chunk folder)."""
    return partial_path(path).exists() or chunks_dir(path).exists()


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


def remove_leftovers(path: str | Path) -> None:
    """After ``path`` is found complete: remove what a run killed while finishing it left behind
    (the temporary ``NAME.h5.tmp``, a journal without its partial file, the chunk folder of the
    same config). Partial work of another config is kept for its own resume."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        digest = f.attrs.get("config_hash")
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
    if not partial_path(path).exists():
        journal_path(path).unlink(missing_ok=True)
    folder = chunks_dir(path)
    if folder.is_dir():
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("config_hash") in (digest, None):
            shutil.rmtree(folder)
            log.info("removed %s, left by a run killed after finishing %s", folder, path.name)


# --------------------------------------------------------------------------- datasets


def write_strings(group: h5py.Group, name: str, values: Sequence[str], **kwargs) -> h5py.Dataset:
    """Store ``values`` as a 1-D variable-length UTF-8 string dataset."""
    if name in group:
        del group[name]
    return group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR,
                                **kwargs)


def read_array(dataset: h5py.Dataset) -> np.ndarray:
    """A whole dataset as a numpy array, strings as ``str`` (not ``bytes``)."""
    return dataset.asstr()[()] if h5py.check_string_dtype(dataset.dtype) else dataset[()]


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


def _contents(path: Path, ignore_attrs: Sequence[str]) -> dict[str, object]:
    out: dict[str, object] = {}

    def attrs(name: str, obj) -> None:
        for key, value in obj.attrs.items():
            if key not in _SCALE_ATTRS and key not in ignore_attrs:
                out[f"{name}@{key}"] = value

    with h5py.File(path, "r") as f:
        attrs("/", f)

        def visit(name: str, obj) -> None:
            attrs(name, obj)
            if isinstance(obj, h5py.Dataset):
                out[name] = read_array(obj)
                out[f"{name}#dtype"] = obj.dtype.str
                out[f"{name}#dims"] = [d.label for d in obj.dims]

        f.visititems(visit)
    return out


def diff_files(a: str | Path, b: str | Path, *, ignore_attrs: Sequence[str] = ()) -> list[str]:
    """How two HDF5 files differ: every group, dataset (values, dtype, axis labels) and
    attribute is compared (NaN equals NaN); an empty list means the same contents.

    Args:
        a, b: the files.
        ignore_attrs: attribute names left out (e.g. run-specific measurements).
    """
    ca, cb = _contents(Path(a), ignore_attrs), _contents(Path(b), ignore_attrs)
    diffs = [f"{key}: only in {a}" for key in sorted(ca.keys() - cb.keys())]
    diffs += [f"{key}: only in {b}" for key in sorted(cb.keys() - ca.keys())]
    for key in sorted(ca.keys() & cb.keys()):
        x, y = np.asarray(ca[key]), np.asarray(cb[key])
        equal = x.shape == y.shape and (
            np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" == y.dtype.kind
            else np.array_equal(x, y))
        if not equal:
            diffs.append(f"{key}: {str(ca[key])[:80]} != {str(cb[key])[:80]}")
    return diffs
