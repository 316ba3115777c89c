"""The big activation cache's file, filled row range by row range in place
(:class:`RowsFile`), its background writer (:class:`RowsWriter`), and the older in-place life
cycle (:func:`open_partial`, for test fixtures).

:class:`RowsFile` keeps fixed-size datasets in ``NAME.h5.partial``, all storage allocated when
the file is created (uncompressed datasets), so filling rows never changes HDF5's metadata;
after each batch of rows is flushed and fsync'd, a journal ``NAME.h5.partial.journal`` (JSON,
replaced atomically) records the committed row range and a checksum of sampled rows. A rerun
checks the file's layout and every committed range against the journal and continues after the
last range that verifies. The life cycle shared with the other writers (publishing, root
attributes, fault points) is in :mod:`leela_interp.outputs.results`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

from leela_interp.errors import RunFolderInUseError
from leela_interp.outputs.results import (config_hash, fsync_path, journal_path, open_h5,
                                          partial_path, publish, root_attrs, write_json,
                                          write_point)

log = logging.getLogger(__name__)


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
        schema, config: as for :class:`~leela_interp.outputs.chunked.ChunkedOutput`.
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
        self.file = open_h5(self.partial, "w")
        root_attrs(self.file, self.schema, self.config, self.digest)
        self.file.attrs["rows_done"] = 0
        create(self)
        self.file.flush()
        fsync_path(self.partial)
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
        write_json(self.journal, {"schema": self.schema, "config_hash": self.digest,
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
            self.file = open_h5(self.partial, "r+")
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
        fsync_path(self.partial)
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
        publish(self.partial, self.path, self.path.name)
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
       :class:`~leela_interp.outputs.chunked.ChunkedOutput` or :class:`RowsFile`.

    Raises:
        RunFolderInUseError: another process has the partial file open.
    """
    path = Path(path)
    tmp = partial_path(path)
    digest = config_hash(config)
    if tmp.exists() and resume:
        try:
            with open_h5(tmp, "r") as f:
                if f.attrs.get("config_hash") != digest or f.attrs.get("schema") != schema:
                    resume = False
        except RunFolderInUseError:
            raise
        except OSError:  # a file broken mid-write (killed process): start again
            resume = False
    if tmp.exists() and not resume:
        tmp.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open_h5(tmp, "a")
    try:
        root_attrs(f, schema, config, digest)
        yield f
        f.attrs["complete"] = True
    finally:
        f.close()
    if path.exists():
        path.unlink()
    os.replace(tmp, path)
