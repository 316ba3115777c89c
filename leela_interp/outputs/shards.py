"""Shards of a stage's result file: which puzzle rows a shard holds, what its file is called,
and finding a complete set of shard files to merge.

A stage run with ``STAGE.shard=k STAGE.num_shards=n`` (``n > 1``) takes the rows ``i`` of the
run's ``puzzles.h5`` with ``i % n == k``, in order, and writes ``NAME.shard-k-of-n.h5``
(:func:`shard_name`) instead of ``NAME.h5``: a shard's file is never mistaken for the whole
file by a later stage. ``stage=merge`` joins the ``n`` files into ``NAME.h5``; row ``i`` of the
merged file is row ``i // n`` of shard ``i % n``: shard ``k``'s rows go back to
:func:`shard_rows` ``(N, k, n)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leela_interp.errors import ConfigError
from leela_interp.outputs.results import read_array

_SHARD = re.compile(r"^(?P<stem>.+)\.shard-(?P<k>\d+)-of-(?P<n>\d+)\.h5$")


def check_shard(key: str, shard: int, num_shards: int) -> None:
    """``0 <= shard < num_shards`` and ``num_shards >= 1``.

    Raises:
        ConfigError: naming ``key.shard`` / ``key.num_shards`` and their values.
    """
    if num_shards < 1:
        raise ConfigError(f"{key}.num_shards={num_shards!r}; give a number >= 1")
    if not 0 <= shard < num_shards:
        raise ConfigError(f"{key}.shard={shard!r} with {key}.num_shards={num_shards!r}; give "
                          f"0 <= shard < num_shards (shards are numbered from 0)")


def shard_rows(n: int, shard: int, num_shards: int) -> np.ndarray:
    """The rows ``i`` of ``range(n)`` with ``i % num_shards == shard``, ascending: the puzzle
    rows a shard computes, and where its rows go in the merged file of ``n`` rows.

    >>> shard_rows(7, 1, 3).tolist()
    [1, 4]
    """
    return np.arange(shard, n, num_shards, dtype=np.int64)


def shard_name(name: str, shard: int, num_shards: int) -> str:
    """The file name of shard ``shard`` of ``num_shards`` of the result file ``name``.

    >>> shard_name("activations.h5", 0, 4)
    'activations.shard-0-of-4.h5'
    """
    return f"{name.removesuffix('.h5')}.shard-{shard}-of-{num_shards}.h5"


def find_shards(folders: Sequence[str | Path], name: str) -> list[Path]:
    """The shard files ``NAME.shard-k-of-n.h5`` of ``name`` in ``folders``, one per shard,
    ordered by ``k``.

    Raises:
        ConfigError: no folder given or none holds a shard of ``name``; shards of different
            ``n`` (mixed runs); a shard found twice; a shard missing (the message names them
            and the folders searched).
    """
    folders = [Path(p) for p in folders]
    if not folders:
        raise ConfigError("merge.inputs is empty: give the run folders of the shards, e.g. "
                          "'merge.inputs=[runs/s0,runs/s1]'")
    stem = name.removesuffix(".h5")
    found: dict[int, list[Path]] = {}
    counts: set[int] = set()
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"merge.inputs: {str(folder)!r} is not a folder")
        for path in sorted(folder.glob(f"{stem}.shard-*-of-*.h5")):
            m = _SHARD.match(path.name)
            if m is None or m["stem"] != stem:
                continue
            counts.add(int(m["n"]))
            found.setdefault(int(m["k"]), []).append(path)
    where = ", ".join(str(f) for f in folders)
    if not found:
        raise ConfigError(f"no shard of {name} ({stem}.shard-K-of-N.h5) in merge.inputs "
                          f"({where}): run that stage with its shard/num_shards keys there "
                          f"first")
    if len(counts) > 1:
        raise ConfigError(f"merge.inputs mix shards of runs split {sorted(counts)} ways "
                          f"({where}); merge the shards of one run")
    num_shards = counts.pop()
    twice = {k: paths for k, paths in found.items() if len(paths) > 1}
    if twice:
        k, paths = next(iter(sorted(twice.items())))
        raise ConfigError(f"shard {k} of {num_shards} of {name} is in merge.inputs twice: "
                          f"{[str(p) for p in paths]}")
    missing = sorted(set(range(num_shards)) - set(found))
    if missing:
        raise ConfigError(f"shards {missing} of {num_shards} of {name} are missing from "
                          f"merge.inputs ({where}): run them first, or add their folders")
    return [found[k][0] for k in range(num_shards)]


def gather(sources: Sequence, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of the merged file of shards ``sources`` (h5py datasets or arrays,
    shard ``k`` at position ``k``): row ``i`` is row ``i // n`` of ``sources[i % n]``.

    >>> gather([np.array([0, 2, 4]), np.array([1, 3])], 1, 5).tolist()
    [1, 2, 3, 4]
    """
    n = len(sources)
    first = sources[0]
    out = np.empty((stop - start, *first.shape[1:]), dtype=first.dtype)
    for k, rows in enumerate(sources):
        i0 = start + (k - start) % n  # the first merged row >= start that is shard k's
        count = len(range(i0, stop, n))
        if count:
            out[i0 - start::n] = rows[i0 // n:i0 // n + count]
    return out


def differences(a: dict, b: dict, prefix: str = "") -> str:
    """The keys whose values differ between two nested configs, as ``key: a != b``."""
    out = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = differences(x, y, f"{prefix}{key}.")
            out += [inner] if inner else []
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} != {y!r}")
    return "; ".join(out)


def read_shard_rows(paths: Sequence[Path], config: dict, section: str, n: int,
                    layout: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """The per-puzzle rows of the shard files ``paths`` (shard ``k`` at position ``k``, from
    :func:`find_shards`) of one stage's sharded run, checked against the merge's ``config``:
    ``{dataset: [shard 0's rows, shard 1's, ...]}`` for every dataset whose first axis is
    labelled ``puzzle``, less the ``layout`` datasets (those the stage writes from
    ``puzzles.h5`` itself, not from its chunks). Join them with :func:`gather`.

    Args:
        paths: The shard files.
        config: The unsharded config the merged file records (its ``section`` has no
            ``shard``/``num_shards``).
        section: The stage's config section (``ablations``).
        n: Rows of the ``puzzles.h5`` the shards split.
        layout: Datasets left out.

    Raises:
        ConfigError: a file is not shard ``k`` of ``len(paths)`` by its config, was made with
            another config (the keys that differ are named), or holds another number of rows
            than shard ``k`` of ``n`` rows.
    """
    import json

    import h5py

    count = len(paths)
    rows: dict[str, list[np.ndarray]] = {}
    for k, shard in enumerate(paths):
        with h5py.File(shard, "r") as f:
            own = json.loads(f.attrs["config"])
            where = (own[section].pop("shard", None), own[section].pop("num_shards", None))
            if where != (k, count):
                raise ConfigError(f"{shard} is shard {where[0]} of {where[1]} by its config, "
                                  f"not shard {k} of {count}: merge the files of one run")
            if own != config:
                raise ConfigError(f"{shard} was made with another config than this merge's: "
                                  f"{differences(own, config)}; pass the shards' {section}.* "
                                  f"and model.* settings to the merge")
            expected = len(range(k, n, count))
            if "puzzle_id" in f and f["puzzle_id"].shape[0] != expected:
                raise ConfigError(f"{shard} holds {f['puzzle_id'].shape[0]} rows; shard {k} of "
                                  f"{n} rows split {count} ways holds {expected}")

            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset) and obj.ndim and name not in layout \
                        and obj.dims[0].label == "puzzle":
                    rows.setdefault(name, []).append(read_array(obj))

            f.visititems(visit)
    return rows


def commit_shard_rows(out_file, rows: dict[str, list[np.ndarray]], limit: int,
                      size: int) -> None:
    """Commit the shards' ``rows`` (from :func:`read_shard_rows`) to ``out_file`` (a
    :class:`~leela_interp.outputs.chunked.ChunkedOutput`) as the chunks an unsharded run
    commits: chunk ``k`` = rows ``[k * size, min((k + 1) * size, limit))``, joined with
    :func:`gather`; chunks already committed (an earlier merge) are kept. No rows (a network
    without the datasets, e.g. no attention heads) commits nothing."""
    for key in range(-(-limit // size)) if rows else ():
        if key not in out_file.keys:
            start, stop = key * size, min((key + 1) * size, limit)
            out_file.commit(key, {name: gather(parts, start, stop)
                                  for name, parts in rows.items()}, {"start": start})
