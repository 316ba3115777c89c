"""The layout shared by ``patching.h5`` and ``ablations.h5``: per-puzzle rows, chunks, funnel.

Both files have one row per row of ``puzzles.h5`` (they join row by row). Each is built chunk
by chunk (:class:`~leela_interp.outputs.chunked.ChunkedOutput`): a :class:`RowBlock` holds a
chunk's rows against an in-memory copy of the file's layout (:func:`in_memory`), and
:func:`fill_rows` writes the committed chunks into the final file. :func:`write_common` makes
the datasets every effect file has (``puzzle_id``, ``different_targets``, ``done``,
``clean_log_odds``, ``clean_top_is_pv0``, ``ok``, ``skip_reason``, ``analysed``); :func:`screen`
fills a chunk's selection, :func:`write_summary` the ``summary/{subset}`` means and
:func:`write_funnel` the ``funnel`` group (layouts: ``docs/interventions.md``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import h5py
import numpy as np
from tqdm import tqdm

from leela_interp.errors import ConfigError
from leela_interp.experiments import interventions as iv
from leela_interp.outputs.chunked import ChunkedOutput
from leela_interp.outputs.results import STR, label_axes, write_strings
from leela_interp.puzzles.puzzle_set import PuzzleSet

log = logging.getLogger(__name__)

SUBSETS = ("all", "different_targets", "same_targets")
"""Puzzle subsets every summary is computed for (the paper splits on ``different_targets``)."""


def has_heads(net) -> bool:
    """Whether ``net`` has attention heads (a transformer body with heads)."""
    return net.config.body == "transformer" and net.config.n_heads > 0


def float_dataset(group: h5py.Group, name: str, shape: tuple[int, ...], dims: tuple[str, ...],
                  dtype: str = "f4", **attrs) -> h5py.Dataset:
    """A NaN-filled dataset chunked along its first (puzzle) axis, with named axes and attrs."""
    chunks = (min(shape[0], 64),) + tuple(shape[1:]) if shape and shape[0] else None
    ds = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks,
                              fillvalue=np.nan if dtype.startswith("f") else 0)
    return label_axes(ds, *dims, **attrs)


def effect_attrs(**extra) -> dict:
    """The attributes of every effect dataset (metric, sign, units) and ``extra``."""
    return {"metric": iv.METRIC, "sign": iv.SIGN, "units": "log-odds", **extra}


def write_common(f: h5py.File, net, puzzles: PuzzleSet, attrs: dict) -> None:
    """Root attributes and per-puzzle datasets both stages share (written once per file).

    Every per-puzzle dataset has one row per row of ``puzzles.h5`` (the files join row by
    row); rows that are not analysed keep NaN effects (see :func:`screen`).
    """
    n = len(puzzles)
    f.attrs.update({"network_sha256": net.sha256, "network_path": net.path,
                    "body": net.config.body, "n_layers": net.config.n_layers,
                    "n_heads": net.config.n_heads, "metric": iv.METRIC, "sign": iv.SIGN,
                    **attrs})
    label_axes(write_strings(f, "puzzle_id", puzzles.ids), "puzzle")
    label_axes(f.create_dataset("different_targets", data=puzzles.different_targets), "puzzle")
    label_axes(f.create_dataset("done", shape=(n,), dtype=bool), "puzzle",
               meaning="the puzzle's chunk is written (resume skips it)")
    float_dataset(f, "clean_log_odds", (n,), ("puzzle",), dtype="f8",
                  metric=iv.METRIC, units="log-odds")
    label_axes(f.create_dataset("clean_top_is_pv0", shape=(n,), dtype=bool), "puzzle",
               meaning="the network's own top legal move on the clean board is PV[0]")
    label_axes(f.create_dataset("ok", shape=(n,), dtype=bool), "puzzle",
               meaning="has a usable corrupted board (same side to move and canonical "
                       "transform as the clean board)")
    label_axes(f.create_dataset("skip_reason", shape=(n,), dtype=STR), "puzzle",
               meaning="why the corrupted board is not usable ('' if it is)")
    label_axes(f.create_dataset("analysed", shape=(n,), dtype=bool), "puzzle",
               meaning="the interventions ran on this puzzle (funnel/rule says why others did "
                       "not); every effect of the other rows is NaN")


class RowBlock:
    """The values of rows ``start:stop`` of a chunk, built against the file's layout.

    ``layout`` is an (in-memory) file made by the same code that makes the final file's
    datasets: each block array takes a dataset's dtype, row shape and fill value from it. The
    block's :attr:`arrays` are what a chunk commits (:class:`~leela_interp.outputs.results.
    ChunkedOutput`); :func:`fill_rows` writes them into the final file.
    """

    def __init__(self, layout: h5py.File, start: int, stop: int) -> None:
        self.layout, self.start, self.stop = layout, start, stop
        self.arrays: dict[str, np.ndarray] = {}
        """Dataset name -> the chunk's rows of it."""

    def set(self, name: str, values) -> None:
        """Rows ``start:stop`` of dataset ``name`` are ``values`` (one entry per row)."""
        values = np.asarray(values)
        if values.dtype.kind not in "OUS":
            values = values.astype(self.layout[name].dtype, copy=False)
        self.arrays[name] = values

    def put(self, name: str, rows: np.ndarray, values) -> None:
        """``values`` (one entry per analysed puzzle) at chunk-relative ``rows``; the chunk's
        other rows get the dataset's fill value (NaN for effects, ``""`` for strings)."""
        ds = self.layout[name]
        n = self.stop - self.start
        if ds.dtype.kind == "O":
            block = np.full(n, "", dtype=object)
        else:
            block = np.full((n,) + ds.shape[1:], ds.fillvalue, dtype=ds.dtype)
        block[rows] = values
        self.arrays[name] = block


def fill_rows(f: h5py.File, out: ChunkedOutput, skip: Sequence[int] = ()) -> None:
    """Write every committed chunk's rows (``meta["start"]``) into ``f``'s datasets, in key
    order, and set ``done`` on them; chunks with keys in ``skip`` are not row chunks."""
    for chunk in out.chunks():
        if chunk.key in skip:
            continue
        start = int(chunk.meta["start"])
        stop = start
        for name, values in chunk.arrays.items():
            stop = start + len(values)
            f[name][start:stop] = values
        f["done"][start:stop] = True


def in_memory() -> h5py.File:
    """An HDF5 file held in memory only (the layout that chunks are built against)."""
    return h5py.File(io.BytesIO(), "w")


def screen(block: RowBlock, chunk: iv.Prepared, *, need_corruption: bool,
           require_pv0_top: bool) -> np.ndarray:
    """Set a chunk's selection datasets (``clean_log_odds``, ``clean_top_is_pv0``, ``ok``,
    ``skip_reason``, ``analysed``) in ``block`` and return the chunk-relative indices of the
    puzzles to analyse: those with a usable corrupted board (if ``need_corruption``) on which
    PV[0] is the net's own top move (if ``require_pv0_top``)."""
    top = chunk.clean_top_is_pv0
    block.set("clean_log_odds", chunk.clean_log_odds)
    block.set("clean_top_is_pv0", top)
    block.set("ok", chunk.corrupted_ok)
    block.set("skip_reason", np.array(chunk.skip_reason, dtype=object))
    keep = np.ones(chunk.n, bool)
    if need_corruption:
        keep &= chunk.corrupted_ok
    if require_pv0_top:
        keep &= top
    block.set("analysed", keep)
    return np.nonzero(keep)[0]


def write_funnel(f: h5py.File, steps: list[tuple[str, np.ndarray, str]]) -> None:
    """``funnel/{step,rule,count}``: the puzzles left after each selection step.

    Args:
        steps: ``(step name, per-puzzle mask of the puzzles left after it, the rule)``, in
            order; each mask should imply the previous one.
    """
    if "funnel" in f:
        del f["funnel"]
    g = f.create_group("funnel")
    g.attrs["meaning"] = "puzzles left after each step and every step before it"
    label_axes(write_strings(g, "step", [s for s, _, _ in steps]), "step")
    label_axes(write_strings(g, "rule", [r for _, _, r in steps]), "step")
    label_axes(g.create_dataset("count", data=np.array([int(m.sum()) for _, m, _ in steps])),
               "step", units="puzzles")


def selection_steps(f: h5py.File, limit: int, key: str, *, need_corruption: bool,
                    require_pv0_top: bool, corruption_rule: str) -> list:
    """The funnel steps both stages share: puzzles.h5's rows, the first ``max_puzzles``, a
    usable corrupted board, PV[0] the net's top move, analysed."""
    n = f["analysed"].shape[0]
    rows = np.ones(n, bool)
    within = np.arange(n) < limit
    usable = within & f["ok"][()] if need_corruption else within
    top = usable & f["clean_top_is_pv0"][()] if require_pv0_top else usable
    return [
        ("puzzles", rows, "rows of puzzles.h5"),
        ("within_max_puzzles", within, f"the first {limit} rows ({key}.max_puzzles)"
         if limit < n else f"every row ({key}.max_puzzles)"),
        ("usable_corruption", usable, corruption_rule),
        ("pv0_is_top", top, f"PV[0] is the net's own top legal move ({key}.require_pv0_top=true)"
         if require_pv0_top else f"not required ({key}.require_pv0_top=false)"),
        ("analysed", f["analysed"][()], "the interventions ran"),
    ]


def chunks(out: ChunkedOutput, n: int, size: int, desc: str):
    """``(key, start, stop)`` of each chunk of ``size`` rows of ``n`` not yet committed in
    ``out``, with a progress bar."""
    total = -(-n // size)
    todo = [(k, k * size, min((k + 1) * size, n)) for k in range(total) if k not in out.keys]
    if len(todo) < total:
        log.info("%s: resuming, %d of %d chunks left", desc, len(todo), total)
    return tqdm(todo, desc=desc, unit="chunk", disable=None)


def write_summary(group: h5py.Group, name: str, values: np.ndarray, keep: np.ndarray,
                  subsets: dict[str, np.ndarray], dims: tuple[str, ...], **attrs) -> None:
    """``summary/{subset}/{name}_mean|_err2sigma|_n`` over puzzles ``keep & subset``."""
    for subset, mask in subsets.items():
        g = group.require_group(f"summary/{subset}")
        mean, err, count = iv.mean_and_err(values[keep & mask], axis=0)
        for suffix, data in (("mean", mean), ("err2sigma", err), ("n", count)):
            key = f"{name}_{suffix}"
            if key in g:
                del g[key]
            label_axes(g.create_dataset(key, data=data), *dims, **attrs)
            if suffix == "err2sigma":
                g[key].attrs["meaning"] = "2 * std / sqrt(n) over puzzles (ddof 1)"


def subset_masks(f: h5py.File) -> dict[str, np.ndarray]:
    """``{subset: per-puzzle mask}`` of :data:`SUBSETS`, from ``f``'s ``different_targets``."""
    dt = f["different_targets"][()].astype(bool)
    return {"all": np.ones_like(dt), "different_targets": dt, "same_targets": ~dt}


def considered(n: int, max_puzzles) -> int:
    """How many of ``puzzles.h5``'s ``n`` rows a stage considers (``max_puzzles``; null = all).

    Raises:
        ConfigError: a negative ``max_puzzles``.
    """
    if max_puzzles is None:
        return n
    if int(max_puzzles) < 0:
        raise ConfigError(f"max_puzzles={max_puzzles!r}; give a count >= 0 or null (all)")
    return min(n, int(max_puzzles))
