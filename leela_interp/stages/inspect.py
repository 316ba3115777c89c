"""``stage=inspect path=FILE``: print an HDF5 result file's structure and summary statistics.

Works on any of the project's result files (``activations.h5``, ``puzzles.h5``, ...): root and
group attributes, then every dataset with its shape, dtype, chunks, compression, axis labels,
attributes and, for numeric data, count / NaN count / mean / std / min / max. Statistics are
computed in a streaming way (blocks of about 64 MiB along the first axis, float64 accumulators,
Chan's pairwise update), so a 70 GB cache is inspected in flat memory. ``+stats=false`` skips
them (structure only, instant). ``++path=`` works whether or not
``leela_interp/conf/config.yaml`` declares ``path``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from omegaconf import DictConfig, OmegaConf

from leela_interp.errors import ConfigError

#: HDF5 bookkeeping attributes (dimension scales) that are not shown.
HIDDEN_ATTRS = {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "DIMENSION_LABELS"}
BLOCK_BYTES = 64 << 20


def run(cfg: DictConfig) -> None:
    """Print :func:`inspect_file` of ``cfg.path`` (``+stats=false``: structure only)."""
    path = OmegaConf.select(cfg, "path")
    if not path:
        raise ConfigError("stage=inspect needs the file to inspect: "
                          "leela-interp stage=inspect ++path=runs/default/activations.h5")
    stats = OmegaConf.select(cfg, "stats", default=True)
    inspect_file(path, stats=bool(stats))


def summary_stats(dataset: h5py.Dataset, block_bytes: int = BLOCK_BYTES) -> dict[str, float]:
    """count (non-NaN values), nan, mean, std (population), min, max of a numeric dataset,
    read ``block_bytes`` at a time along the first axis."""
    count, mean, m2, nan = 0, 0.0, 0.0, 0
    lo, hi = math.inf, -math.inf
    if dataset.ndim == 0:
        blocks = [np.asarray(dataset[()])]
    else:
        row_bytes = max(1, int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize)
        rows = max(1, block_bytes // row_bytes)
        if dataset.chunks:  # whole chunks per block: each chunk is read once
            rows = max(dataset.chunks[0], rows // dataset.chunks[0] * dataset.chunks[0])
        blocks = (dataset[i:i + rows] for i in range(0, dataset.shape[0], rows))
    for block in blocks:
        x = np.asarray(block, dtype=np.float64).reshape(-1)
        finite = ~np.isnan(x)
        nan += int(x.size - finite.sum())
        x = x[finite]
        if not x.size:
            continue
        b_mean = float(x.mean())
        b_m2 = float(((x - b_mean) ** 2).sum())
        total = count + x.size
        delta = b_mean - mean
        mean += delta * x.size / total
        m2 += b_m2 + delta * delta * count * x.size / total
        count = total
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if not count:
        return {"count": 0, "nan": nan, "mean": math.nan, "std": math.nan, "min": math.nan,
                "max": math.nan}
    return {"count": count, "nan": nan, "mean": mean, "std": math.sqrt(m2 / count), "min": lo,
            "max": hi}


def _attrs(obj: h5py.HLObject) -> dict[str, object]:
    out = {}
    for key, value in obj.attrs.items():
        if key in HIDDEN_ATTRS:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and len(value) > 200:
            value = value[:200] + f"... ({len(value)} chars)"
        out[key] = value
    return out


def inspect_file(path: str | Path, *, stats: bool = True,
                 out: Callable[[str], None] = print) -> None:
    """Print ``path``'s attributes, groups and datasets (with statistics unless ``stats=False``).

    Raises:
        FileNotFoundError: no such file.
        OSError: not an HDF5 file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    with h5py.File(path, "r") as f:
        out(f"{path}  ({path.stat().st_size / 2**20:.1f} MiB)")
        for key, value in _attrs(f).items():
            out(f"  @{key} = {value}")

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Group):
                out(f"{name}/")
                for key, value in _attrs(obj).items():
                    out(f"  @{key} = {value}")
                return
            labels = [dim.label or "?" for dim in obj.dims]
            axes = ", ".join(f"{label}={size}" for label, size in zip(labels, obj.shape))
            filt = obj.compression or "none"
            if obj.shuffle:
                filt += "+shuffle"
            kind = "string" if h5py.check_string_dtype(obj.dtype) else str(obj.dtype)
            out(f"{name}  [{axes}]  {kind}  chunks={obj.chunks}  compression={filt}")
            for key, value in _attrs(obj).items():
                out(f"  @{key} = {value}")
            if h5py.check_string_dtype(obj.dtype):
                head = [v.decode() if isinstance(v, bytes) else str(v)
                        for v in obj[:min(3, obj.shape[0])]] if obj.ndim == 1 else []
                out(f"  first: {head}")
            elif stats and obj.dtype.kind in "fiub":
                s = summary_stats(obj)
                out(f"  count={s['count']} nan={s['nan']} mean={s['mean']:.6g} "
                    f"std={s['std']:.6g} min={s['min']:.6g} max={s['max']:.6g}")

        f.visititems(visit)
