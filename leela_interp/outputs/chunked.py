"""Small result files built from chunks committed one by one (:class:`ChunkedOutput`): the
writer of puzzles.h5, patching.h5, ablations.h5 and probes.h5.

Each committed chunk is its own small HDF5 file in ``NAME.h5.partial.d/`` (written to a
temporary name, fsync'd, renamed), beside a ``manifest.json`` holding the config hash. At the end
the chunks are assembled into a fresh ``NAME.h5`` in one deterministic pass (temporary name,
fsync, rename; the folder is removed only after), so a resumed run writes the same bytes as an
uninterrupted one. A chunk is never rewritten in place. The life cycle shared with the other
writers (publishing, root attributes, fault points) is in :mod:`leela_interp.outputs.results`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np

from leela_interp.outputs.results import (STR, chunks_dir, config_hash, publish, read_array,
                                          root_attrs, write_json, write_point)

log = logging.getLogger(__name__)


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
            write_json(manifest_path, {"schema": self.schema, "config_hash": self.digest,
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
            f.visititems(lambda name, ds: arrays.__setitem__(name, _normalise(read_array(ds)))
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
        publish(tmp, final, f"{self.path.name} chunk {key}")
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
        folder, :func:`~leela_interp.outputs.results.remove_leftovers`).
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            with h5py.File(tmp, "w") as f:
                root_attrs(f, self.schema, self.config, self.digest)
                write(f)
                f.attrs["complete"] = True
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        publish(tmp, self.path, self.path.name)
        shutil.rmtree(self.folder)
        write_point(f"{self.path.name}: chunks removed")
        return self.path
