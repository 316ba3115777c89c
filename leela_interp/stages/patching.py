"""``stage=patching``: activation patching from the corrupted board (residual stream and heads).

Reads ``<out_dir>/puzzles.h5``, writes ``<out_dir>/patching.h5`` and PNG figures under
``<out_dir>/figures/``. The work is :mod:`leela_interp.experiments.interventions`; the file
layout, sign convention and square categories are in ``docs/interventions.md``. Resumable by
chunks of puzzles (each committed as its own file,
:class:`~leela_interp.outputs.results.ChunkedOutput`: a kill at any instant loses at most the
chunk in progress); skipped when complete for the same network, puzzle set and ``patching``
config; ``force=true`` redoes it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from leela_interp.board.encoding import TOKEN_NUMBERING
from leela_interp.errors import ConfigError
from leela_interp.experiments import attribution
from leela_interp.experiments import head_pairs as hp
from leela_interp.experiments import interventions as iv
from leela_interp.network import load_network
from leela_interp.outputs.results import STR, ChunkedOutput, label_axes, sha256_file, write_strings
from leela_interp.puzzles.puzzle_set import PuzzleSet
from leela_interp.stages.common import model_device, puzzles_net, run_dir, up_to_date

log = logging.getLogger(__name__)

OUTPUT = "patching.h5"
SCHEMA = "leela_interp.patching/1"
SUBSETS = ("all", "different_targets", "same_targets")
"""Puzzle subsets every summary is computed for (the paper splits on ``different_targets``)."""
OVERLAP_MEANING = {
    "paper": "corrupted squares touch the 1st-move target or a target of PV[2:], or the "
             "1st-move target is a target of PV[2:]: left out of the category means",
    "third_only": "corrupted squares touch the 1st or 3rd move's target, or those two targets "
                  "coincide: left out of the category means"}
"""The ``overlap`` dataset's ``meaning`` under each of :data:`iv.OVERLAP_RULES`."""
METHOD_MEANING = {
    "exact": "every effect from its own patched forward pass",
    "attribution": "every effect estimated to first order, -(corrupted - clean) . "
                   "d log-odds / d activation (leela_interp.experiments.attribution)"}
"""The root attribute ``method_meaning`` under each ``patching.method``."""


# --------------------------------------------------------------------------- shared stage glue


def puzzles_input(cfg: DictConfig) -> Path:
    """``<out_dir>/puzzles.h5``; raises ConfigError naming the stage to run when it is absent."""
    path = run_dir(cfg) / "puzzles.h5"
    if not path.exists():
        raise ConfigError(f"{path} not found: run the puzzles stage first "
                          f"(leela-interp stage=puzzles out_dir={path.parent})")
    return path


def stage_config(cfg: DictConfig, name: str, puzzles_path: Path) -> dict:
    """What a stage's output hashes: its config section (less ``figures``), the model settings
    that change values, and the sha256 of the network and of the puzzle file."""
    section = OmegaConf.to_container(cfg[name], resolve=True)
    section.pop("figures", None)
    return {name: section,
            "model": {"dtype": cfg.model.dtype, "policy_head": cfg.model.policy_head,
                      "value_head": cfg.model.value_head},
            "network_sha256": sha256_file(cfg.model.path),
            "puzzles_sha256": sha256_file(puzzles_path)}


def load_model(cfg: DictConfig):
    """The network of ``cfg.model`` on its device (null = cuda when available, else cpu)."""
    return load_network(cfg.model.path, policy_head=cfg.model.policy_head,
                        value_head=cfg.model.value_head, device=model_device(cfg),
                        dtype=cfg.model.dtype)


def float_dataset(group: h5py.Group, name: str, shape: tuple[int, ...], dims: tuple[str, ...],
                  dtype: str = "f4", **attrs) -> h5py.Dataset:
    """A NaN-filled dataset chunked along its first (puzzle) axis, with named axes and attrs."""
    chunks = (min(shape[0], 64),) + tuple(shape[1:]) if shape and shape[0] else None
    ds = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks,
                              fillvalue=np.nan if dtype.startswith("f") else 0)
    return label_axes(ds, *dims, **attrs)


def effect_attrs(**extra) -> dict:
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
    dt = f["different_targets"][()].astype(bool)
    return {"all": np.ones_like(dt), "different_targets": dt, "same_targets": ~dt}


# --------------------------------------------------------------------------- the stage


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


def write_head_pairs(f: h5py.File, net, puzzles: PuzzleSet, top_n: int, analysed: np.ndarray,
                     subsets: dict[str, np.ndarray], *, batch_size: int,
                     chunk_size: int) -> None:
    """The ``heads/pairs`` group: joint patching of every pair of the ``top_n`` heads of
    ``heads/summary/all/effect_mean`` (:mod:`leela_interp.experiments.head_pairs`) on the
    analysed puzzles, its interaction with the singles, and their summaries (computed in the
    finishing step from the committed single-head effects, so redone whole on a rerun).

    Raises:
        ConfigError: ``top_n`` below 2.
    """
    chosen = hp.top_heads(f["heads/summary/all/effect_mean"][()], top_n)
    pairs = hp.pairs_of(chosen)
    n = len(puzzles)
    if "heads/pairs" in f:
        del f["heads/pairs"]
    g = f.create_group("heads/pairs")
    g.attrs["chosen_by"] = (f"the top {top_n} heads of heads/summary/all/effect_mean (single-"
                            f"head patching), every pair once")
    label_axes(g.create_dataset("heads", data=np.array(chosen, np.int64).reshape(-1, 2)),
               "head", "layer_head", meaning="the chosen (layer, head), best single first")
    label_axes(g.create_dataset("pair", data=np.array(pairs, np.int64).reshape(-1, 2)),
               "pair", "head_index", meaning="rows of heads/pairs/heads patched together")
    joint = np.full((n, len(pairs)), np.nan, np.float32)
    rows = np.flatnonzero(analysed)
    for s in range(0, len(rows), chunk_size):
        part = rows[s:s + chunk_size]
        prep = iv.prepare(net, [iv.Puzzle.from_set(puzzles, int(i)) for i in part],
                          batch_size=batch_size)
        joint[part] = hp.pair_patching(prep, chosen)
    inter = hp.interaction(joint, f["heads/effect"][()], chosen)
    for name, values, meaning in (
            ("joint_effect", joint, "both heads of the pair patched from the corrupted run"),
            ("interaction", inter, "joint_effect - (single_a + single_b) of heads/effect")):
        label_axes(g.create_dataset(name, data=values), "puzzle", "pair",
                   **effect_attrs(meaning=meaning))
        write_summary(g, name, values, analysed, subsets, ("pair",),
                      **effect_attrs(meaning="over analysed puzzles"))


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/patching.h5`` (or skip it when up to date) and its figures."""
    from leela_interp.outputs import figures

    pc = cfg.patching
    sites = list(pc.sites) if OmegaConf.is_list(pc.sites) else [pc.sites]
    for site in sites:
        if site not in iv.RESIDUAL_SITES:
            raise ConfigError(f"patching.sites: unknown site {site!r}; choose from "
                              f"{list(iv.RESIDUAL_SITES)}")
    if pc.method not in attribution.METHODS:
        raise ConfigError(f"patching.method={pc.method!r}; choose from "
                          f"{list(attribution.METHODS)}")
    if pc.overlap_rule not in iv.OVERLAP_RULES:
        raise ConfigError(f"patching.overlap_rule={pc.overlap_rule!r}; choose from "
                          f"{list(iv.OVERLAP_RULES)}")
    top_n = pc.head_pairs.top_n
    if not isinstance(top_n, int) or top_n == 1 or top_n < 0:
        raise ConfigError(f"patching.head_pairs.top_n={top_n!r}; give 0 (off) or at least 2 "
                          f"heads")
    puzzles_path = puzzles_input(cfg)
    out = run_dir(cfg)
    path = out / OUTPUT
    config = stage_config(cfg, "patching", puzzles_path)
    if up_to_date(path, config, bool(cfg.force)):
        if pc.figures:
            figures.patching_figures(path, out / "figures")
        return path
    net = load_model(cfg)
    has_heads = net.config.body == "transformer" and net.config.n_heads > 0
    if "resid_mid" in sites and not has_heads:
        raise ConfigError(f"patching.sites: resid_mid exists only in transformer blocks; "
                          f"{cfg.model.path} is a {net.config.body!r} net")
    heads = bool(pc.heads) and has_heads
    if pc.heads and not has_heads:
        log.warning("%s has no attention heads (%s body): head patching is skipped; only "
                    "residual-stream patching runs", cfg.model.path, net.config.body)
    net_attrs = puzzles_net(puzzles_path, net.sha256, cfg.model.path)
    puzzles = PuzzleSet.load(puzzles_path)
    n = len(puzzles)
    limit = considered(n, pc.max_puzzles)
    L, H = net.config.n_layers, net.config.n_heads
    C = len(iv.COLUMNS)
    bs = int(cfg.model.batch_size)
    require_top = bool(pc.require_pv0_top)
    clean_hooks = [f"blocks.*.hook_{s}" for s in sites] + ["blocks.*.hook_resid_pre"]
    corrupted_hooks = [f"blocks.*.hook_{s}" for s in sites]
    if heads:
        clean_hooks.append("blocks.*.attn.hook_z")
        corrupted_hooks.append("blocks.*.attn.hook_z")

    def create_layout(f: h5py.File) -> None:
        write_common(f, net, puzzles, {**net_attrs, "overlap_rule": pc.overlap_rule,
                                       "require_pv0_top": require_top, "method": pc.method,
                                       "method_meaning": METHOD_MEANING[pc.method]})
        f.attrs["heads"] = ("head patching of every (layer, head)'s hook_z" if heads else
                            f"not run: the network has no attention heads "
                            f"({net.config.body} body)" if not has_heads else
                            "not run: patching.heads=false")
        label_axes(write_strings(f, "category_names", iv.COLUMNS), "category")
        f["category_names"].attrs["meaning"] = (
            "square_category indexes the first five (a partition of the squares); "
            "category_max has all eight: follow_up_targets is the union of third_target and "
            "later_targets (the paper's '3rd-move target'); fifth_target / seventh_target: "
            "PV[4]'s / PV[6]'s target square where it is a later_targets square")
        float_dataset(f, "corrupted_log_odds", (n,), ("puzzle",), dtype="f8",
                      metric=iv.METRIC, units="log-odds")
        float_dataset(f, "corruption_effect", (n,), ("puzzle",),
                      **effect_attrs(meaning="the whole corrupted board instead of the "
                                             "clean one"))
        label_axes(f.create_dataset("overlap", shape=(n,), dtype=bool), "puzzle",
                   rule=pc.overlap_rule,
                   meaning=OVERLAP_MEANING[pc.overlap_rule])
        label_axes(f.create_dataset("square_category", shape=(n, 64), dtype="i1"),
                   "puzzle", "square", categories=list(iv.CATEGORIES),
                   numbering=TOKEN_NUMBERING,
                   meaning="index into category_names; squares are clean-board tokens")
        for site in sites:
            g = f.require_group(f"residual/{site}")
            g.attrs["hook"] = f"blocks.{{layer}}.hook_{site}"
            float_dataset(g, "effect", (n, L, 64), ("puzzle", "layer", "square"),
                          numbering=TOKEN_NUMBERING, **effect_attrs())
            float_dataset(g, "category_max", (n, L, C), ("puzzle", "layer", "category"),
                          categories=list(iv.COLUMNS),
                          **effect_attrs(meaning="max effect over the category's squares; "
                                                 "NaN if the category is empty"))
        if heads:
            g = f.require_group("heads")
            g.attrs["hook"] = "blocks.{layer}.attn.hook_z"
            float_dataset(g, "effect", (n, L, H), ("puzzle", "layer", "head"),
                          **effect_attrs())

    layout = in_memory()
    create_layout(layout)
    out_file = ChunkedOutput(path, schema=SCHEMA, config=config, resume=not cfg.force)
    for key, s, e in chunks(out_file, limit, int(pc.chunk_size), "patching"):
        block = RowBlock(layout, s, e)
        chunk = [iv.Puzzle.from_set(puzzles, i) for i in range(s, e)]
        selection = iv.prepare(net, chunk, batch_size=bs, overlap_rule=pc.overlap_rule)
        rows = screen(block, selection, need_corruption=True, require_pv0_top=require_top)
        block.set("overlap", selection.overlap)
        block.set("square_category", selection.categories)
        if len(rows):
            prep = iv.prepare(net, [chunk[j] for j in rows], batch_size=bs,
                              clean_hooks=clean_hooks, corrupted_hooks=corrupted_hooks,
                              overlap_rule=pc.overlap_rule)
            block.put("corrupted_log_odds", rows, prep.corrupted_log_odds)
            block.put("corruption_effect", rows, prep.clean_log_odds - prep.corrupted_log_odds)
            est = (attribution.attribution_patching(prep, sites=sites, heads=heads)
                   if pc.method == "attribution" else None)
            for site in sites:
                eff = est.residual[site] if est else iv.residual_patching(
                    prep, site=site, skip_identical=pc.skip_identical)
                block.put(f"residual/{site}/effect", rows, eff)
                block.put(f"residual/{site}/category_max", rows,
                          iv.category_max(eff, prep.categories, prep.deep_targets))
            if heads:
                block.put("heads/effect", rows, est.heads if est else
                          iv.head_patching(prep, skip_identical=pc.skip_identical))
        out_file.commit(key, block.arrays, {"start": s})
    layout.close()

    def finish(f: h5py.File) -> None:
        create_layout(f)
        fill_rows(f, out_file)
        analysed = f["analysed"][()]
        no_overlap = analysed & ~f["overlap"][()]
        subsets = subset_masks(f)
        for site in sites:
            g = f[f"residual/{site}"]
            write_summary(g, "category_max", g["category_max"][()], no_overlap, subsets,
                          ("layer", "category"), categories=list(iv.COLUMNS),
                          **effect_attrs(meaning="over puzzles with analysed and not overlap"))
        if heads:
            write_summary(f["heads"], "effect", f["heads/effect"][()], analysed, subsets,
                          ("layer", "head"), **effect_attrs(meaning="over analysed puzzles"))
            if top_n:
                write_head_pairs(f, net, puzzles, top_n, analysed, subsets,
                                 batch_size=bs, chunk_size=int(pc.chunk_size))
        steps = selection_steps(f, limit, "patching", need_corruption=True,
                                require_pv0_top=require_top,
                                corruption_rule="a usable corrupted board (patching needs one)")
        steps.append(("no_overlap", no_overlap,
                      f"no overlap (patching.overlap_rule={pc.overlap_rule}): the puzzles of "
                      f"the residual category means"))
        write_funnel(f, steps)
        log.info("patching: funnel %s", ", ".join(f"{name} {int(m.sum())}"
                                                  for name, m, _ in steps))

    out_file.finish(finish)
    log.info("wrote %s", path)
    if pc.figures:
        for fig in figures.patching_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    return path
