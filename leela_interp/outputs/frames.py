"""Result files as pandas long tables: one row per value, one column per axis, the puzzles'
metadata joined.

``to_frame("runs/maia/patching.h5")`` gives ``dataset, puzzle, layer, square, head, effect``
plus every per-puzzle dataset of the file (``puzzle_id``, ``analysed``, ``clean_log_odds``,
...) and of ``puzzles.h5`` in the same folder (``fen``, ``moves``, ``rating``, ...). Axis
values come from the file: an HDF5 dimension scale when one is attached (``probes.h5``), else
the dataset's attribute listing them (``categories``, ``variants``), else the index (layer,
square token, head). pandas is an optional dependency (``pip install leela-interp[frames]``).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from leela_interp.errors import ConfigError

DEFAULT_VALUES = {"leela_interp.patching/1": "effect", "leela_interp.ablations/1": "effect",
                  "leela_interp.probes/1": "accuracy"}
"""Per file schema, the dataset name :func:`to_frame` tables by default (every dataset of that
name in the file)."""


def _pandas():
    try:
        import pandas
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_frame needs pandas: pip install 'leela-interp[frames]'") from e
    return pandas


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "OS":
        return np.array([v.decode() if isinstance(v, bytes) else v for v in values], object)
    return values


def _coords(ds: h5py.Dataset, axis: int) -> np.ndarray:
    n = ds.shape[axis]
    dim = ds.dims[axis]
    if len(dim):
        return _decode(dim[0][()])
    label = dim.label
    for key in (label + "s", "categories" if label == "category" else None):
        listed = ds.attrs.get(key) if key else None
        if listed is not None and len(listed) == n:
            return _decode(np.asarray(listed))
    return np.arange(n)


def _long(ds: h5py.Dataset, value: str):
    pd = _pandas()
    names = [d.label or f"axis{i}" for i, d in enumerate(ds.dims)]
    index = pd.MultiIndex.from_product([_coords(ds, i) for i in range(ds.ndim)], names=names)
    return pd.DataFrame({value: _decode(ds[()].reshape(-1))}, index=index).reset_index()


def _per_puzzle(group: h5py.Group, n: int, *, skip: set[str]) -> dict[str, np.ndarray]:
    """The group's 1-D datasets of length ``n`` (by its ``puzzle`` axis, or any in puzzles.h5)."""
    out = {}
    for name, ds in group.items():
        if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and ds.shape[0] == n \
                and name not in skip and ds.dims[0].label in ("puzzle", ""):
            out[name] = _decode(ds[()])
    return out


def to_frame(path: str | Path, dataset: str | None = None, *, metadata: bool = True,
             dropna: bool = True):
    """A long table of a result file's values.

    Args:
        path: ``patching.h5``, ``ablations.h5``, ``probes.h5`` (or any file whose datasets
            have named axes).
        dataset: the dataset's path in the file (``"heads/effect"``); default every dataset
            named :data:`DEFAULT_VALUES` of the file's schema (``effect``, or ``accuracy`` for
            probes), stacked with a ``dataset`` column (axes a dataset lacks are NaN).
        metadata: join, on ``puzzle`` (the row of ``puzzles.h5``: the files join row by row),
            the file's per-puzzle datasets and the ``puzzles`` group of ``puzzles.h5`` in the
            same folder (when present).
        dropna: drop rows whose value is NaN (the puzzles that were not analysed).

    Returns:
        A ``pandas.DataFrame``; the value column is named after the dataset (``effect``).

    Raises:
        ConfigError: no such dataset, or no default for the file's schema.
        ValueError: ``puzzles.h5`` has another number of rows than the file.
    """
    pd = _pandas()
    path = Path(path)
    with h5py.File(path, "r") as f:
        if dataset is None:
            schema = f.attrs.get("schema", "")
            if schema not in DEFAULT_VALUES:
                raise ConfigError(f"{path}: no default dataset for schema {schema!r}; "
                                  f"give dataset= (one of the file's datasets)")
            wanted = DEFAULT_VALUES[schema]
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset)
                         and n.rsplit("/", 1)[-1] == wanted else None)
        else:
            if not isinstance(f.get(dataset), h5py.Dataset):
                found: list[str] = []
                f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset)
                             else None)
                raise ConfigError(f"{path}: no dataset {dataset!r}; choose from {found}")
            names = [dataset]
        if not names:
            raise ConfigError(f"{path}: no dataset named {wanted!r}; give dataset=")
        value = names[0].rsplit("/", 1)[-1]
        parts = []
        for name in names:
            part = _long(f[name], name.rsplit("/", 1)[-1])
            if dataset is None:
                part.insert(0, "dataset", name)
            parts.append(part)
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        frame = frame[[c for c in frame.columns if c != value] + [value]]
        has_puzzle = "puzzle" in frame.columns
        meta = {}
        if metadata and has_puzzle:
            n = max(f[name].shape[0] for name in names)
            meta = _per_puzzle(f, n, skip=set(names) | {"done"})
    if dropna and frame[value].dtype.kind == "f":
        frame = frame[frame[value].notna()].reset_index(drop=True)
    if not (metadata and has_puzzle):
        return frame
    puzzles_h5 = path.parent / "puzzles.h5"
    if puzzles_h5.exists() and puzzles_h5 != path:
        with h5py.File(puzzles_h5, "r") as f:
            group = f["puzzles"]
            rows = group["id"].shape[0]
            if rows != n:
                raise ValueError(f"{puzzles_h5} has {rows} puzzles but {path} has {n} rows; "
                                 f"they join row by row: is it the puzzles.h5 of this run?")
            for name, values in _per_puzzle(group, n, skip=set(meta)).items():
                meta[name] = values
    table = pd.DataFrame(meta)
    table.insert(0, "puzzle", np.arange(n))
    return frame.merge(table, on="puzzle", how="left")
