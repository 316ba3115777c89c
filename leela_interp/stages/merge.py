"""``stage=merge``: join the shards of one stage's sharded run into ``out_dir``.

    leela-interp stage=merge 'merge.inputs=[runs/s0,runs/s1]' out_dir=runs/merged
    leela-interp stage=merge merge.stage=activations 'merge.inputs=[runs/a0,runs/a1]' \\
        out_dir=runs/merged

``merge.stage=puzzles`` (the default) merges each folder's ``puzzles.h5`` (made with
``puzzles.shard``/``num_shards``) in source-row order
(:func:`leela_interp.puzzles.shards.merge_puzzles`). ``merge.stage=activations`` joins the
``activations.shard-K-of-N.h5`` files found in the folders (every shard once:
:func:`leela_interp.outputs.shards.find_shards`) into ``activations.h5``, the file an unsharded
run writes (:func:`leela_interp.experiments.activations.merge_activations`).
``merge.stage=patching`` joins the ``patching.shard-K-of-N.h5`` files into ``patching.h5`` and
finishes it as an unsharded run does (:func:`merge_patching`; give the merge the shards'
``patching.*`` and ``model.*`` settings).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
from omegaconf import DictConfig, open_dict

from leela_interp.errors import ConfigError
from leela_interp.identity import sha256_file
from leela_interp.outputs.results import ChunkedOutput, config_hash, is_complete
from leela_interp.outputs.shards import find_shards, gather
from leela_interp.puzzles.puzzle_set import PuzzleSet
from leela_interp.puzzles.shards import merge_puzzles
from leela_interp.stages.common import effects_config, puzzles_input, run_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Merge the shards of ``merge.stage`` found in ``merge.inputs``; returns the merged file.

    Raises:
        ConfigError: no shards, shards of different runs, a shard missing or found twice, or
            shards made from another ``puzzles.h5`` than ``out_dir``'s (or, patching, with
            another config than the merge's).
    """
    out = run_dir(cfg)
    if cfg.merge.stage == "puzzles":
        merged = merge_puzzles([Path(p) / "puzzles.h5" for p in cfg.merge.inputs],
                               out / "puzzles.h5")
    elif cfg.merge.stage == "patching":
        merged = merge_patching(cfg)
    elif cfg.merge.stage == "ablations":
        from leela_interp.experiments.ablations import merge_ablations

        merged = merge_ablations(cfg)
    else:
        from leela_interp.experiments.activations import ActivationFile, merge_activations

        paths = find_shards(cfg.merge.inputs, "activations.h5")
        puzzles = out / "puzzles.h5"
        if puzzles.exists():
            with ActivationFile(paths[0]) as first:
                made_from = first.puzzles_sha256
            if made_from != sha256_file(puzzles):
                raise ConfigError(f"{paths[0]} was made from another puzzles.h5 than {puzzles} "
                                  f"(sha256 {made_from[:12]}...): merge into the folder whose "
                                  f"puzzles.h5 the shards read (their inputs_dir)")
        a = cfg.activations
        merged = merge_activations(paths, out / "activations.h5",
                                   batch_size=a.batch_size or cfg.model.batch_size,
                                   overwrite=bool(cfg.force))
    print(merged)
    return merged


#: Per-puzzle datasets a stage's layout writes from ``puzzles.h5`` itself (not from chunks).
LAYOUT_ROWS = ("puzzle_id", "different_targets", "done")


def _read(ds: h5py.Dataset) -> np.ndarray:
    return ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]


def merge_patching(cfg: DictConfig) -> Path:
    """Merge the ``patching.shard-K-of-N.h5`` files of ``merge.inputs`` into
    ``out_dir/patching.h5``.

    The shards' rows are committed as the chunks an unsharded run of the merge's config
    commits (chunk ``k`` = rows ``[k * chunk_size, ...)`` of the considered puzzles, row ``i``
    from shard ``i % n``), then the patching stage itself runs: it finds every chunk done and
    only finishes the file (summaries, head-pair joint patching, funnel, figures), so the file
    is the one an unsharded run writes.

    Raises:
        ConfigError: the merge's config is itself sharded; a shard was made with another
            config, network or puzzle set than the merge's (the keys that differ are named);
            a shard's rows are not those of one split of ``out_dir``'s ``puzzles.h5``.
    """
    from leela_interp.experiments.effects import considered
    from leela_interp.experiments.patching import OUTPUT, SCHEMA
    from leela_interp.stages import patching

    section = cfg.patching
    if section.num_shards != 1:
        raise ConfigError("stage=merge merge.stage=patching: leave patching.shard and "
                          "patching.num_shards out (the merge writes the unsharded file)")
    out = run_dir(cfg)
    path = out / OUTPUT
    paths = find_shards(cfg.merge.inputs, OUTPUT)
    puzzles_path = puzzles_input(cfg)
    config = effects_config(cfg, "patching", puzzles_path)
    force = bool(cfg.force)
    if not force and is_complete(path, config_hash(config)):
        log.info("%s is up to date for this config; skipping (force=true redoes it)", path)
        return path
    n_shards = len(paths)
    n = len(PuzzleSet.load(puzzles_path))
    rows: dict[str, list[np.ndarray]] = {}
    for k, shard in enumerate(paths):
        with h5py.File(shard, "r") as f:
            own = json.loads(f.attrs["config"])
            where = (own["patching"].pop("shard", None), own["patching"].pop("num_shards", None))
            if where != (k, n_shards):
                raise ConfigError(f"{shard} is shard {where[0]} of {where[1]} by its config, "
                                  f"not shard {k} of {n_shards}: merge the files of one run")
            if own != config:
                raise ConfigError(f"{shard} was made with another config than this merge's: "
                                  f"{_differences(own, config)}; pass the shards' "
                                  f"patching.* and model.* settings to the merge")
            if f["puzzle_id"].shape[0] != len(range(k, n, n_shards)):
                raise ConfigError(f"{shard} holds {f['puzzle_id'].shape[0]} rows; shard {k} of "
                                  f"{puzzles_path}'s {n} rows split {n_shards} ways holds "
                                  f"{len(range(k, n, n_shards))}")

            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset) and obj.ndim and name not in LAYOUT_ROWS \
                        and obj.dims[0].label == "puzzle":
                    rows.setdefault(name, []).append(_read(obj))

            f.visititems(visit)
    limit = considered(n, section.max_puzzles)
    size = int(section.chunk_size)
    out_file = ChunkedOutput(path, schema=SCHEMA, config=config, resume=not force)
    for key in range(-(-limit // size)):
        if key not in out_file.keys:
            start, stop = key * size, min((key + 1) * size, limit)
            out_file.commit(key, {name: gather(parts, start, stop)
                                  for name, parts in rows.items()}, {"start": start})
    with open_dict(cfg):
        cfg.force = False  # the stage must resume the chunks just committed
    try:
        return patching.run(cfg)
    finally:
        with open_dict(cfg):
            cfg.force = force


def _differences(a: dict, b: dict, prefix: str = "") -> str:
    """The keys whose values differ between two nested configs, as ``key: a != b``."""
    out = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = _differences(x, y, f"{prefix}{key}.")
            out += [inner] if inner else []
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} != {y!r}")
    return "; ".join(out)
