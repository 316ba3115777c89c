"""HDF5 result files: a life cycle that survives ``kill -9`` at any instant, config hashes,
UTF-8 strings and named axes.

Every stage writes one HDF5 file ``NAME.h5`` in the run folder. A file under its final name is
always complete (``attrs["complete"] = True``): it appears by an atomic rename after everything
in it is written and fsync'd. While a stage works, what it has *committed* is known exactly and
stays consistent whatever instant the process is killed at; a rerun of the same command verifies
it, continues after it, and ends with the file an uninterrupted run writes. Two writers:

- :class:`ChunkedOutput` (small outputs: puzzles, patching, ablations, probes): each committed
  chunk is its own small HDF5 file in ``NAME.h5.partial.d/`` (written to a temporary name,
  fsync'd, renamed), beside a ``manifest.json`` holding the config hash. At the end the chunks
  are assembled into a fresh ``NAME.h5`` in one deterministic pass (temporary name, fsync,
  rename; the folder is removed only after), so a resumed run writes the same bytes as an
  uninterrupted one. A chunk is never rewritten in place.
- :class:`RowsFile` (the big activation cache): fixed-size datasets in ``NAME.h5.partial``, all
  storage allocated when the file is created (uncompressed datasets), so filling rows never
  changes HDF5's metadata; after each batch of rows is flushed and fsync'd, a journal
  ``NAME.h5.partial.journal`` (JSON, replaced atomically) records the committed row range and a
  checksum of sampled rows. A rerun checks the file's layout and every committed range against
  the journal and continues after the last range that verifies. :class:`RowsWriter` fills and
  commits its ranges in one background thread while the caller computes the next range.

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

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
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


def _fsync_path(path: Path) -> None:
    """fsync a file or folder by name (flushes every open handle's data of that inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, label: str) -> None:
    """Make the finished file ``tmp`` appear as ``path``: fsync, atomic rename, fsync the folder."""
    _fsync_path(tmp)
    write_point(f"{label}: written")
    os.replace(tmp, path)
    _fsync_path(path.parent)
    write_point(f"{label}: renamed")


def _write_json(path: Path, value: object, label: str) -> None:
    """Replace ``path`` by ``value`` as JSON atomically (old or new content, never a mix)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    _publish(tmp, path, label)


def _root_attrs(f: h5py.File, schema: str, config: Mapping, digest: str) -> None:
    f.attrs["schema"] = schema
    f.attrs["config_hash"] = digest
    f.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    f.attrs["leela_interp_version"] = __version__
    f.attrs["command"] = shlex.join(sys.argv)
    f.attrs["git_commit"] = git_commit()
    f.attrs["complete"] = False


def _open_h5(path: Path, mode: str) -> h5py.File:
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
    """``NAME.h5.partial``: the in-progress file of :class:`RowsFile` (and of
    :func:`open_partial`)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def journal_path(path: str | Path) -> Path:
    """``NAME.h5.partial.journal``: :class:`RowsFile`'s record of committed rows."""
    path = Path(path)
    return path.with_name(path.name + ".partial.journal")


def chunks_dir(path: str | Path) -> Path:
    """``NAME.h5.partial.d``: :class:`ChunkedOutput`'s folder of committed chunks."""
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


# --------------------------------------------------------------------------- ChunkedOutput


def _normalise(value) -> np.ndarray:
    """A chunk's array as stored and read back: strings as an object array of ``str``."""
    if isinstance(value, np.ndarray) and value.dtype.kind not in "OUS":
        return value
    array = np.asarray(value)
    if array.dtype.kind in "OUS":
        return np.array([str(v) for v in array.reshape(-1)], dtype=object).reshape(array.shape)
    return array


def _digest(arrays: Mapping[str, np.ndarray], meta: str) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(arrays):
        a = arrays[name]
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(json.dumps(a.tolist()).encode() if a.dtype.kind == "O"
                 else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class Chunk:
    """One committed chunk of a :class:`ChunkedOutput`: its arrays and its metadata."""

    def __init__(self, key: int, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.key = key
        """The chunk's key (its position in the output's order)."""
        self.arrays = arrays
        """Name -> array, as committed (strings as object arrays of ``str``)."""
        self.meta = meta
        """The JSON-able mapping committed with the arrays."""


class ChunkedOutput:
    """A small result file ``path`` built from chunks committed one by one.

    Opening it resumes the committed chunks of an earlier run with the same ``schema`` and
    ``config`` (each verified against its checksum; a damaged one is deleted with a warning and
    must be redone), or starts afresh (``resume=False``, another config, or an unreadable
    manifest), with a log line saying which. Nothing is written under ``path`` until
    :meth:`finish`.

    >>> out = ChunkedOutput(path, schema="leela_interp.x/1", config=cfg)  # doctest: +SKIP
    >>> for key in range(n_chunks):                                       # doctest: +SKIP
    ...     if key not in out.keys:
    ...         out.commit(key, {"effect": compute(key)})
    >>> out.finish(lambda f: f.create_dataset("effect", data=out.concat("effect")))  # doctest: +SKIP

    Args:
        path: the final file name, e.g. ``run_dir / "probes.h5"``.
        schema: file kind and version, e.g. ``"leela_interp.probes/1"``.
        config: the stage config; its hash decides whether earlier chunks are resumed.
        resume: reuse committed chunks of the same config (else discard them).
    """

    def __init__(self, path: str | Path, *, schema: str, config: Mapping,
                 resume: bool = True) -> None:
        self.path = Path(path)
        self.schema = schema
        self.config = config
        self.digest = config_hash(config)
        self.folder = chunks_dir(self.path)
        self._files: dict[int, Path] = {}
        self._open(resume)

    @property
    def keys(self) -> list[int]:
        """Keys of the committed chunks, sorted."""
        return sorted(self._files)

    def _open(self, resume: bool) -> None:
        manifest_path = self.folder / "manifest.json"
        if self.folder.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
                why = None
            except (OSError, ValueError) as exc:
                manifest, why = {}, f"no readable manifest ({exc.__class__.__name__})"
            if why is None and not resume:
                why = "force: redoing it"
            elif why is None and (manifest.get("schema"), manifest.get("config_hash")) != \
                    (self.schema, self.digest):
                why = "made under another config or schema"
            if why:
                log.info("%s: discarding earlier partial work (%s); starting afresh",
                         self.folder, why)
                shutil.rmtree(self.folder)
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            _write_json(manifest_path, {"schema": self.schema, "config_hash": self.digest,
                                        "config": json.loads(json.dumps(self.config,
                                                                        default=str))},
                        f"{self.folder.name}/manifest.json")
            return
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink()
        for file in sorted(self.folder.glob("*.h5")):
            try:
                key = int(file.stem)
                chunk = self._load(file)
                if chunk.key != key:
                    raise ValueError(f"it holds chunk {chunk.key}")
            except Exception as exc:  # anything unreadable is damage: redo that chunk
                log.warning("%s: damaged chunk %s (%s: %s); it is deleted and redone",
                            self.folder, file.name, exc.__class__.__name__, exc)
                file.unlink()
                continue
            self._files[key] = file
        if self._files:
            log.info("%s: resuming after %d committed chunks", self.folder, len(self._files))

    def _load(self, file: Path) -> Chunk:
        with h5py.File(file, "r") as f:
            meta = str(f.attrs["meta"])
            arrays: dict[str, np.ndarray] = {}
            f.visititems(lambda name, ds: arrays.__setitem__(name, _normalise(
                ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]))
                if isinstance(ds, h5py.Dataset) else None)
            if f.attrs["config_hash"] != self.digest:
                raise ValueError("it was made under another config")
            if f.attrs["sha256"] != _digest(arrays, meta):
                raise ValueError("its content does not match its checksum")
            return Chunk(int(f.attrs["key"]), arrays, json.loads(meta))

    def commit(self, key: int, arrays: Mapping[str, object], meta: Mapping | None = None) -> None:
        """Store chunk ``key`` durably: once this returns, a kill loses nothing of it.

        Args:
            key: a non-negative int; chunks are assembled in key order. Committing a key again
                replaces that chunk.
            arrays: name -> numeric array, or sequence of ``str``; a name may hold slashes
                (``"residual/resid_post/effect"``).
            meta: JSON-able values kept with the chunk (counts, progress markers).
        """
        key = int(key)
        if key < 0:
            raise ValueError(f"chunk key {key!r}: must be >= 0")
        arrays = {name: _normalise(value) for name, value in arrays.items()}
        text = json.dumps(dict(meta or {}), sort_keys=True)
        name = f"{key:08d}.h5"
        tmp, final = self.folder / f".{name}.tmp", self.folder / name
        with h5py.File(tmp, "w") as f:
            for array_name, array in arrays.items():
                if array.dtype.kind == "O":
                    f.create_dataset(array_name, data=array, dtype=STR)
                else:
                    f.create_dataset(array_name, data=array)
            f.attrs["key"] = key
            f.attrs["config_hash"] = self.digest
            f.attrs["meta"] = text
            f.attrs["sha256"] = _digest(arrays, text)
        _publish(tmp, final, f"{self.path.name} chunk {key}")
        self._files[key] = final

    def read(self, key: int) -> Chunk:
        """Committed chunk ``key``, read back from disk."""
        return self._load(self._files[key])

    def chunks(self) -> Iterator[Chunk]:
        """Every committed chunk, in key order."""
        for key in self.keys:
            yield self.read(key)

    def concat(self, name: str) -> np.ndarray:
        """Array ``name`` of every committed chunk that has one, concatenated along axis 0 in
        key order (so per-row chunks and a chunk of other arrays can share an output)."""
        return np.concatenate([chunk.arrays[name] for chunk in self.chunks()
                               if name in chunk.arrays])

    def finish(self, write: Callable[[h5py.File], None]) -> Path:
        """Write the final file: root attributes, then ``write(f)`` (datasets, attributes, from
        the chunks), then ``complete``; publish it atomically; then remove the chunk folder.

        ``write`` must depend only on the chunks and the config for a resumed run to write the
        same bytes as an uninterrupted one. A kill before the rename leaves the chunks (a rerun
        finishes again); after it, the file is complete (a rerun skips it and removes the
        folder, :func:`remove_leftovers`).
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            with h5py.File(tmp, "w") as f:
                _root_attrs(f, self.schema, self.config, self.digest)
                write(f)
                f.attrs["complete"] = True
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _publish(tmp, self.path, self.path.name)
        shutil.rmtree(self.folder)
        write_point(f"{self.path.name}: chunks removed")
        return self.path


# --------------------------------------------------------------------------- RowsFile


class RowsFile:
    """A big result file whose fixed-size datasets are filled row range by row range, in place.

    Work goes into ``NAME.h5.partial``; ``NAME.h5.partial.journal`` records each committed row
    range ``[start, stop)`` with a CRC-32 of sampled rows (the first row of every HDF5 chunk
    and the range's last row, of every row dataset). Opening resumes an earlier run of the same
    ``schema`` and ``config`` if the file opens, its layout matches the journal's fingerprint,
    and its committed ranges verify (a range that fails is redone from its start); otherwise it
    starts afresh. Each decision is logged.

    Use as a context manager (the file is closed, not finished, on exit)::

        with RowsFile(path, schema=..., config=..., rows=n, create=layout) as part:
            for start in range(part.rows_done, n, batch):
                part.file["x"][start:start + batch] = compute(start)
                part.commit(min(start + batch, n))
            part.finish()

    Args:
        path: the final file name.
        schema, config: as for :class:`ChunkedOutput`.
        rows: the length of every row dataset's first axis.
        create: makes the layout of a fresh file (called with this object; creates row datasets
            with :meth:`create_dataset`, anything else with ``self.file``). Runs only when no
            earlier work is resumed.
        resume: reuse an earlier run's partial file (else discard it).
    """

    def __init__(self, path: str | Path, *, schema: str, config: Mapping, rows: int,
                 create: Callable[[RowsFile], None], resume: bool = True) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.journal = journal_path(self.path)
        self.schema = schema
        self.config = config
        self.digest = config_hash(config)
        self.rows = int(rows)
        self.datasets: list[str] = []
        """Names of the row datasets, in creation order."""
        self.batches: list[list[int]] = []
        """Committed ``[start, stop, crc]``, in order."""
        self.file: h5py.File
        if not (resume and self._resume()):
            self._create(create)

    def __enter__(self) -> RowsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rows_done(self) -> int:
        """Rows committed so far (every row before this is on disk and in the journal)."""
        return self.batches[-1][1] if self.batches else 0

    def close(self) -> None:
        """Close the file without finishing it (its committed rows stay resumable)."""
        if self.file.id.valid:
            self.file.close()

    def create_dataset(self, group: h5py.Group, name: str, *, shape: tuple[int, ...], dtype,
                       chunks: tuple[int, ...], compression: str | None = None,
                       **attrs) -> h5py.Dataset:
        """A row dataset ``[rows, ...]`` filled later by row ranges.

        Uncompressed: all storage is allocated now and never pre-filled, so writing rows later
        changes no HDF5 metadata (what makes a kill mid-write harmless; every row must then be
        written). Compressed (``"lzf"``, ``"gzip"``, with shuffle): HDF5 allocates chunks as
        they are written; a kill mid-write can then damage the file, which :meth:`commit`'s
        checksums and the resume check detect (the file is started afresh).
        """
        if shape[0] != self.rows:
            raise ValueError(f"{name}: first axis {shape[0]}, this file has {self.rows} rows")
        if compression:
            ds = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks,
                                      compression=compression, shuffle=True, fillvalue=np.nan
                                      if np.dtype(dtype).kind == "f" else None)
        else:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            ds = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, dcpl=dcpl,
                                      fill_time="never")
        ds.attrs.update(attrs)
        self.datasets.append(ds.name)
        return ds

    def _discard(self) -> None:
        for path in (self.partial, self.journal, self.journal.with_name(
                f".{self.journal.name}.tmp")):
            path.unlink(missing_ok=True)

    def _create(self, create: Callable[[RowsFile], None]) -> None:
        self._discard()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = _open_h5(self.partial, "w")
        _root_attrs(self.file, self.schema, self.config, self.digest)
        self.file.attrs["rows_done"] = 0
        create(self)
        self.file.flush()
        _fsync_path(self.partial)
        write_point(f"{self.partial.name}: layout written")
        self.batches = []
        self._write_journal()

    def _fingerprint(self) -> str:
        """The row datasets' names, shapes, dtypes, chunks, filters and first chunk's offset."""
        layout = []
        for name in self.datasets:
            ds = self.file[name]
            # Uncompressed row datasets are allocated at creation: their place is fixed.
            offset = None if ds.compression or not ds.size else \
                ds.id.get_chunk_info(0).byte_offset
            layout.append([name, list(ds.shape), ds.dtype.str, list(ds.chunks or ()),
                           ds.compression, offset])
        return hashlib.sha256(json.dumps(layout).encode()).hexdigest()

    def _write_journal(self) -> None:
        _write_json(self.journal, {"schema": self.schema, "config_hash": self.digest,
                                   "rows": self.rows, "datasets": self.datasets,
                                   "layout": self._fingerprint(), "batches": self.batches},
                    self.journal.name)

    def _sample_crc(self, start: int, stop: int) -> int:
        crc = 0
        for name in self.datasets:
            ds = self.file[name]
            step = ds.chunks[0] if ds.chunks else stop - start
            rows = sorted({*range(start + (-start) % step, stop, step), start, stop - 1})
            crc = zlib.crc32(np.ascontiguousarray(ds[rows]).tobytes(), crc)
        return crc

    def _resume(self) -> bool:
        if not self.partial.exists():
            return False
        try:
            journal = json.loads(self.journal.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: no readable journal (%s: killed before its first commit?); "
                        "starting afresh", self.partial, exc.__class__.__name__)
            return False
        if (journal.get("schema"), journal.get("config_hash"), journal.get("rows")) != \
                (self.schema, self.digest, self.rows):
            log.info("%s was made under another config; starting afresh", self.partial)
            return False
        try:
            self.file = _open_h5(self.partial, "r+")
        except OSError as exc:
            log.warning("%s cannot be opened (%s); starting afresh", self.partial, exc)
            return False
        try:
            self.datasets = list(journal["datasets"])
            if self._fingerprint() != journal["layout"]:
                raise ValueError("its layout differs from the journal's")
            for start, stop, crc in journal["batches"]:
                if self._sample_crc(start, stop) != crc:
                    log.warning("%s: rows %d-%d fail verification; redoing them and every later "
                                "row", self.partial, start, stop - 1)
                    break
                self.batches.append([start, stop, crc])
        except Exception as exc:  # a damaged file: unreadable metadata, missing datasets, ...
            log.warning("%s is damaged (%s: %s); starting afresh", self.partial,
                        exc.__class__.__name__, exc)
            self.close()
            self.batches = []
            return False
        if len(self.batches) < len(journal["batches"]):
            self._write_journal()
        if self.rows_done:
            log.info("resuming %s after %d of %d rows", self.partial, self.rows_done, self.rows)
        return True

    def commit(self, stop: int) -> None:
        """Rows ``[rows_done, stop)`` are written: make them durable and record them."""
        start = self.rows_done
        if not start < stop <= self.rows:
            raise ValueError(f"commit({stop}) after {start} of {self.rows} rows")
        self.file.flush()
        _fsync_path(self.partial)
        write_point(f"{self.partial.name}: rows {start}-{stop - 1} flushed")
        self.batches.append([start, stop, self._sample_crc(start, stop)])
        self._write_journal()

    def finish(self) -> Path:
        """Every row is committed: mark the file complete, rename it to ``path``, drop the
        journal. A kill at any step leaves either the verified partial file (a rerun finishes
        again) or the complete file."""
        if self.rows_done != self.rows:
            raise ValueError(f"{self.partial}: finish() after {self.rows_done} of {self.rows} "
                             f"rows")
        # In-place writes of fixed-size values: the root header keeps its size and place.
        self.file.attrs.modify("rows_done", self.rows)
        self.file.attrs.modify("complete", True)
        self.file.close()
        _publish(self.partial, self.path, self.path.name)
        self.journal.unlink(missing_ok=True)
        write_point(f"{self.journal.name}: removed")
        return self.path


class RowsWriter:
    """Writes a :class:`RowsFile`'s row ranges in one background thread, so that the caller
    computes the next range (on a GPU, say) while the last one goes to disk.

    :meth:`submit` hands over one range: the thread calls ``write()`` (which fills rows
    ``[part.rows_done, stop)``), then ``part.commit(stop)``, then ``on_commit(stop)``, range
    after range in the order handed over. A range is therefore in the journal only once its rows
    are on disk, as without the thread. At most ``depth`` ranges are handed over and not yet
    committed; :meth:`submit` waits for a free slot, so memory holds ``depth`` ranges besides
    the one being computed. ``write`` should own its arrays (the caller keeps no reference it
    changes later).

    Leaving the context (or :meth:`close`) drains the queue: every range handed over is written
    and committed, also when the caller raised, and the thread stops. ::

        with RowsFile(path, schema=..., config=..., rows=n, create=layout) as part:
            with RowsWriter(part) as writer:
                for start in range(part.rows_done, n, batch):
                    stop = min(start + batch, n)
                    writer.submit(stop, functools.partial(fill, part.file, start, compute(start)))
            part.finish()

    Args:
        part: the open file.
        thread: write in a background thread; ``False`` makes :meth:`submit` write and commit
            before it returns (the same calls in the same order, so the same file).
        depth: ranges handed over and not yet committed, at most (>= 1).
        on_commit: called in the writer's thread with ``stop`` after each range is committed.

    Raises:
        ValueError: ``depth`` < 1.
    """

    def __init__(self, part: RowsFile, *, thread: bool = True, depth: int = 1,
                 on_commit: Callable[[int], None] | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth={depth!r}; must be >= 1")
        self.part = part
        self.on_commit = on_commit
        self._error: BaseException | None = None
        self._slots = threading.Semaphore(depth)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"RowsWriter {part.path.name}",
                                        daemon=True) if thread else None
        if self._thread is not None:
            self._thread.start()

    def __enter__(self) -> RowsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except BaseException as writer_exc:  # the caller's exception goes on; say both
            if writer_exc is not exc:
                log.error("%s: the writer thread failed too (%s: %s)", self.part.partial,
                          writer_exc.__class__.__name__, writer_exc)

    def _write(self, stop: int, write: Callable[[], None]) -> None:
        write()
        self.part.commit(stop)
        if self.on_commit is not None:
            self.on_commit(stop)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if self._error is None:  # after a failure nothing more is written
                    self._write(*item)
            except BaseException as exc:
                self._error = exc
            finally:
                self._slots.release()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, stop: int, write: Callable[[], None]) -> None:
        """Hand over the rows up to ``stop``: ``write()`` fills them, then they are committed.

        Waits while ``depth`` ranges are in flight.

        Raises:
            BaseException: what ``write``, :meth:`RowsFile.commit` or ``on_commit`` raised for
                an earlier range (the original exception, re-raised in this thread).
        """
        if self._thread is None:
            self._write(stop, write)
            return
        self._raise()
        self._slots.acquire()
        try:
            self._raise()
        except BaseException:
            self._slots.release()
            raise
        self._queue.put((stop, write))

    def close(self) -> None:
        """Wait until every range handed over is committed (or the writer failed), stop the
        thread, and re-raise the writer's exception, if any."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()


# --------------------------------------------------------------------------- open_partial


@contextlib.contextmanager
def open_partial(path: str | Path, *, schema: str, config: Mapping,
                 resume: bool = True) -> Iterator[h5py.File]:
    """The older life cycle, used by no stage any more (tests make small fixture files with it):
    one ``NAME.h5.partial`` written in place, marked complete and renamed on clean exit.

    Args:
        path: the final file name.
        schema: file kind and version, e.g. ``"leela_interp.puzzles/1"``.
        config: the stage config; its hash decides whether an existing partial file is resumed.
        resume: reuse an existing partial file with the same config hash (else start afresh).

    A partial file written under another config, or one HDF5 cannot open, is discarded. If the
    block raises, the partial file is left for a later resume and the final name is not touched.

    .. warning:: In-place writes are not safe against a kill: a partial file that opens may
       still hold damaged data (variable-length strings rewritten in place). New stages use
       :class:`ChunkedOutput` or :class:`RowsFile`.

    Raises:
        RunFolderInUseError: another process has the partial file open.
    """
    path = Path(path)
    tmp = partial_path(path)
    digest = config_hash(config)
    if tmp.exists() and resume:
        try:
            with _open_h5(tmp, "r") as f:
                if f.attrs.get("config_hash") != digest or f.attrs.get("schema") != schema:
                    resume = False
        except RunFolderInUseError:
            raise
        except OSError:  # a file broken mid-write (killed process): start again
            resume = False
    if tmp.exists() and not resume:
        tmp.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    f = _open_h5(tmp, "a")
    try:
        _root_attrs(f, schema, config, digest)
        yield f
        f.attrs["complete"] = True
    finally:
        f.close()
    if path.exists():
        path.unlink()
    os.replace(tmp, path)


# --------------------------------------------------------------------------- datasets


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
                out[name] = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
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
