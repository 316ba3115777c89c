"""Merging the ``puzzles.h5`` files of sharded runs (``puzzles.shard=i puzzles.num_shards=n``).

Each shard keeps the rows ``i, i+n, ...`` of the source file and records every kept row's
``source_row``; :func:`merge_puzzles` concatenates the shards' ``/puzzles`` datasets in
source-row order (padding per-ply arrays to the longest PV with their fill values) and adds up
their ``/counts``, so the merged file has the layout of an unsharded run.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from leela_interp.errors import ConfigError
from leela_interp.outputs.chunked import ChunkedOutput
from leela_interp.outputs.results import STR, is_complete, label_axes, read_array

GROUP = "puzzles"


def merge_puzzles(paths: list[str | Path], out: str | Path) -> Path:
    """Merge shard files ``paths`` into ``out`` (a complete ``puzzles.h5``).

    Raises:
        ConfigError: a shard is missing or incomplete, or the shards were made with different
            settings (anything but ``shard`` differs) or cover the same shard twice.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ConfigError(f"merge needs at least two shard files, got {[str(p) for p in paths]}")
    configs, files = [], []
    for path in paths:
        if not is_complete(path):
            raise ConfigError(f"{path} is missing or incomplete: finish that shard's puzzles stage")
        files.append(h5py.File(path, "r"))
        configs.append(json.loads(files[-1].attrs["config"]))
    try:
        shards = [c.pop("shard") for c in configs]
        if any(c != configs[0] for c in configs[1:]):
            raise ConfigError("the shards were made with different settings; merge only the "
                              "shards of one run")
        if len(set(shards)) != len(shards):
            raise ConfigError(f"shard numbers repeat: {shards}")
        order = np.argsort(np.concatenate([f[GROUP]["source_row"][()] for f in files]),
                           kind="stable")
        merged_config = {**configs[0], "merged_shards": sorted(shards)}

        def write(dst: h5py.File) -> None:
            for key, value in files[0].attrs.items():
                if key not in ("complete", "config", "config_hash"):
                    dst.attrs[key] = value
            group = dst.create_group(GROUP)
            group.attrs.update(dict(files[0][GROUP].attrs))
            for name, first in files[0][GROUP].items():
                parts = [read_array(f[GROUP][name]) for f in files]
                if first.ndim == 2 and first.maxshape[1] is None:  # per-ply: pad to widest
                    width = max(p.shape[1] for p in parts)
                    fill = "" if h5py.check_string_dtype(first.dtype) else first.fillvalue
                    parts = [np.pad(p.astype(object) if fill == "" else p,
                                    ((0, 0), (0, width - p.shape[1])), constant_values=fill)
                             for p in parts]
                data = np.concatenate(parts)[order]
                is_str = h5py.check_string_dtype(first.dtype)
                ds = group.create_dataset(name, data=data.astype(object) if is_str else data,
                                          dtype=STR if is_str else first.dtype)
                labels = [d.label for d in first.dims]
                if all(labels):
                    label_axes(ds, *labels)
                for key, value in first.attrs.items():
                    if key not in ("DIMENSION_LABELS", "DIMENSION_LIST", "REFERENCE_LIST"):
                        ds.attrs[key] = value
            counts = dst.create_group("counts", track_order=True)
            first = files[0]["counts"]
            for sub_name, sub in first.items():
                dst_sub = counts.create_group(sub_name, track_order=True)
                for key in sub.attrs:
                    total = sum(int(f["counts"][sub_name].attrs[key]) for f in files)
                    dst_sub.attrs[key] = total
            rows = int(first.attrs["rows"])  # every shard reads every row
            valid = sum(int(f["counts"].attrs["valid"]) for f in files)
            counts.attrs.update({"rows": rows, "valid": valid, "other_shard": 0,
                                 "examples": first.attrs.get("examples", "{}")})

        ChunkedOutput(out, schema=files[0].attrs["schema"], config=merged_config,
                      resume=False).finish(write)
    finally:
        for f in files:
            f.close()
    return Path(out)
