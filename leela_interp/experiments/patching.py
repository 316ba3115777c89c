"""``patching.h5``: activation patching from the corrupted board, chunk by chunk, and its layout.

:func:`write_patching` runs the interventions of :mod:`leela_interp.experiments.interventions`
(residual stream and heads; or their first-order estimate,
:mod:`leela_interp.experiments.attribution`) on the puzzles of a ``puzzles.h5`` and writes
``patching.h5``; every dataset, attribute and axis of that file is made by :func:`create_layout`
here (the rows every effect file shares by :mod:`leela_interp.experiments.effects`). Layout, sign
convention and square categories: ``docs/interventions.md``. The ``patching`` stage
(:mod:`leela_interp.stages.patching`) builds :class:`PatchingSettings` from its config section.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from leela_interp.board.encoding import TOKEN_NUMBERING
from leela_interp.errors import ConfigError
from leela_interp.experiments import attribution
from leela_interp.experiments import head_pairs as hp
from leela_interp.experiments import interventions as iv
from leela_interp.experiments.effects import (RowBlock, chunks, considered, effect_attrs,
                                              fill_rows, float_dataset, has_heads, in_memory,
                                              screen, selection_steps, subset_masks,
                                              write_common, write_funnel, write_summary)
from leela_interp.outputs.chunked import ChunkedOutput
from leela_interp.outputs.results import label_axes, write_strings
from leela_interp.outputs.shards import check_shard, commit_shard_rows, read_shard_rows, shard_rows
from leela_interp.puzzles.puzzle_set import PuzzleSet

log = logging.getLogger(__name__)

OUTPUT = "patching.h5"
SCHEMA = "leela_interp.patching/1"
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


def residual_patching(prep: iv.Prepared, *, site: str = "resid_post", skip_identical: bool = True,
                      layers: Sequence[int] | None = None) -> np.ndarray:
    """Patch each (layer, square) of the residual stream with its value on the corrupted board.

    Args:
        prep: the chunk (its puzzles without a usable corrupted board get NaN).
        site: ``resid_post`` (after block l; the paper's choice), ``resid_mid`` (after the
            attention sub-layer; transformers only) or ``resid_pre`` (entering block l).
        skip_identical: record an exact 0 for squares whose corrupted activation equals the clean
            one instead of running them.
        layers: layers to patch (default all); others are NaN.

    Returns:
        Effects ``[P, n_layers, 64]`` (float32; positive = log-odds of PV[0] reduced).
    """
    net = prep.net
    n_layers = net.config.n_layers
    if site not in iv.RESIDUAL_SITES:
        raise ConfigError(f"unknown residual site {site!r}; choose from {list(iv.RESIDUAL_SITES)}")
    if site == "resid_mid" and net.config.body != "transformer":
        raise ConfigError("resid_mid exists only in transformer blocks; this net is a "
                          f"{net.config.body!r}; choose resid_post or resid_pre")
    out = np.full((prep.n, n_layers, 64), np.nan, np.float32)
    ok = np.nonzero(prep.corrupted_ok)[0]
    if len(ok) == 0:
        return out
    name = f"blocks.*.hook_{site}"
    clean = prep.cache("clean", [name, "blocks.*.hook_resid_pre"])
    corr = prep.cache("corrupted", name)
    for layer in (range(n_layers) if layers is None else layers):
        hook = f"blocks.{layer}.hook_{site}"
        base, donor = clean[hook], corr[hook]
        same = (base[ok] == donor[ok]).all(dim=2).cpu().numpy()  # [ok, 64]
        pairs = [(p, s) for j, p in enumerate(ok) for s in range(64)
                 if not (skip_identical and same[j, s])]
        out[ok, layer, :] = 0.0
        if not pairs:
            continue
        rp = np.array([p for p, _ in pairs])
        rs = np.array([s for _, s in pairs])

        def patch(t: torch.Tensor, rows: np.ndarray, rp=rp, rs=rs, donor=donor) -> torch.Tensor:
            t = t.clone()
            t[np.arange(len(rows)), rs[rows]] = donor[rp[rows], rs[rows]].to(t.dtype)
            return t

        if site in ("resid_post", "resid_pre"):  # post[l] is the stream entering block l+1
            start = layer + 1 if site == "resid_post" else layer
            logits = iv.run_rows(net, start, len(rp),
                              lambda rows, b=base: patch(b[rp[rows]], rows),
                              batch_size=prep.batch_size)
        else:
            start = prep.resid_in(layer)
            logits = iv.run_rows(net, layer, len(rp), lambda rows, b=start: b[rp[rows]],
                              edits=[(hook, patch)], batch_size=prep.batch_size)
        out[rp, layer, rs] = iv.row_effects(prep, rp, logits)
    return out


def head_patching(prep: iv.Prepared, *, skip_identical: bool = True) -> np.ndarray:
    """Patch each (layer, head)'s output ``hook_z`` (all squares) with its corrupted-run value.

    Returns:
        Effects ``[P, n_layers, n_heads]`` (float32; NaN for puzzles without a usable
        corrupted board).

    Raises:
        ConfigError: the network has no attention heads.
    """
    net = prep.net
    iv.require_heads(net)
    n_layers, n_heads = net.config.n_layers, net.config.n_heads
    out = np.full((prep.n, n_layers, n_heads), np.nan, np.float32)
    ok = np.nonzero(prep.corrupted_ok)[0]
    if len(ok) == 0:
        return out
    clean = prep.cache("clean", ["blocks.*.attn.hook_z", "blocks.*.hook_resid_pre"])
    corr = prep.cache("corrupted", "blocks.*.attn.hook_z")
    for layer in range(n_layers):
        hook = f"blocks.{layer}.attn.hook_z"
        same = (clean[hook][ok] == corr[hook][ok]).flatten(2).all(2).cpu().numpy()
        pairs = [(p, h) for j, p in enumerate(ok) for h in range(n_heads)
                 if not (skip_identical and same[j, h])]
        out[ok, layer, :] = 0.0
        if not pairs:
            continue
        rp = np.array([p for p, _ in pairs])
        rh = np.array([h for _, h in pairs])
        donor = corr[hook]

        def patch(t, rows, rp=rp, rh=rh, donor=donor):
            t = t.clone()
            t[np.arange(len(rows)), rh[rows]] = donor[rp[rows], rh[rows]].to(t.dtype)
            return t

        start = prep.resid_in(layer)
        logits = iv.run_rows(net, layer, len(rp), lambda rows: start[rp[rows]],
                          edits=[(hook, patch)], batch_size=prep.batch_size)
        out[rp, layer, rh] = iv.row_effects(prep, rp, logits)
    return out


@dataclass(frozen=True)
class PatchingSettings:
    """What :func:`write_patching` computes (the ``patching`` config keys, documented in
    ``leela_interp/conf/patching/default.yaml``).

    Raises:
        ConfigError: On construction: an unknown site, method or overlap rule, a
            ``head_pairs_top_n`` of 1 or below 0, or not ``0 <= shard < num_shards``.
    """

    sites: tuple[str, ...] = ("resid_post",)
    """Residual-stream hooks patched (:data:`iv.RESIDUAL_SITES`)."""
    heads: bool = True
    """Patch every (layer, head)'s ``hook_z`` too (transformer nets)."""
    method: str = "exact"
    """``exact`` or ``attribution`` (:data:`attribution.METHODS`)."""
    overlap_rule: str = "paper"
    """Which puzzles the category means leave out (:data:`iv.OVERLAP_RULES`)."""
    skip_identical: bool = True
    """Skip patched forward passes whose activation is unchanged (its effect is 0)."""
    require_pv0_top: bool = True
    """Analyse only puzzles on which PV[0] is the net's own top legal move."""
    max_puzzles: int | None = None
    """Consider the first this many rows of ``puzzles.h5``; None = all."""
    chunk_size: int = 32
    """Puzzles per committed chunk (the unit of resumption)."""
    head_pairs_top_n: int = 0
    """Joint patching of every pair of the top n heads (0 = off)."""
    batch_size: int = 256
    """Positions per forward pass."""
    shard: int = 0
    """Which shard this run computes, ``0 <= shard < num_shards``."""
    num_shards: int = 1
    """Shards of the puzzle set: a shard patches the rows ``i % num_shards == shard`` (of the
    first ``max_puzzles``) only, and leaves head pairs to the merge
    (:func:`merge_patching`); 1 = every row."""

    def __post_init__(self) -> None:
        for site in self.sites:
            if site not in iv.RESIDUAL_SITES:
                raise ConfigError(f"patching.sites: unknown site {site!r}; choose from "
                                  f"{list(iv.RESIDUAL_SITES)}")
        if self.method not in attribution.METHODS:
            raise ConfigError(f"patching.method={self.method!r}; choose from "
                              f"{list(attribution.METHODS)}")
        if self.overlap_rule not in iv.OVERLAP_RULES:
            raise ConfigError(f"patching.overlap_rule={self.overlap_rule!r}; choose from "
                              f"{list(iv.OVERLAP_RULES)}")
        top_n = self.head_pairs_top_n
        if not isinstance(top_n, int) or top_n == 1 or top_n < 0:
            raise ConfigError(f"patching.head_pairs.top_n={top_n!r}; give 0 (off) or at least "
                              f"2 heads")
        check_shard("patching", self.shard, self.num_shards)


def create_layout(f: h5py.File, net, puzzles: PuzzleSet, settings: PatchingSettings,
                  attrs: dict) -> None:
    """Every dataset, attribute and axis of ``patching.h5`` (rows unfilled: NaN effects).

    ``attrs`` are extra root attributes (e.g. the ``puzzles_net`` check of the stage).
    """
    n, L, H = len(puzzles), net.config.n_layers, net.config.n_heads
    C = len(iv.COLUMNS)
    heads = settings.heads and has_heads(net)
    write_common(f, net, puzzles, {**attrs, "overlap_rule": settings.overlap_rule,
                                   "require_pv0_top": settings.require_pv0_top,
                                   "method": settings.method,
                                   "method_meaning": METHOD_MEANING[settings.method]})
    f.attrs["heads"] = ("head patching of every (layer, head)'s hook_z" if heads else
                        f"not run: the network has no attention heads "
                        f"({net.config.body} body)" if not has_heads(net) else
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
               rule=settings.overlap_rule,
               meaning=OVERLAP_MEANING[settings.overlap_rule])
    label_axes(f.create_dataset("square_category", shape=(n, 64), dtype="i1"),
               "puzzle", "square", categories=list(iv.CATEGORIES),
               numbering=TOKEN_NUMBERING,
               meaning="index into category_names; squares are clean-board tokens")
    for site in settings.sites:
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


#: Key of the first head-pair chunk of ``patching.h5``; the row chunks' keys stay below it.
PAIRS_KEY = 90_000_000


def pair_keys(out: ChunkedOutput) -> list[int]:
    """The keys of the head-pair chunks committed in ``out`` (:func:`commit_head_pairs`)."""
    return [k for k in out.keys if k >= PAIRS_KEY]


def commit_head_pairs(out: ChunkedOutput, layout: h5py.File, net, puzzles: PuzzleSet,
                      top_n: int, *, batch_size: int,
                      chunk_size: int) -> list[tuple[int, int]]:
    """Joint patching of every pair of the ``top_n`` heads of single-head patching (the
    largest mean effect over the analysed puzzles, ``heads/summary/all/effect_mean``;
    :mod:`leela_interp.experiments.head_pairs`), ``chunk_size`` analysed puzzles at a time,
    each committed to ``out`` as chunk ``PAIRS_KEY + k`` (``meta["rows"]``: its puzzles)
    unless an earlier run committed it: a kill redoes one chunk of it, not all. Needs every
    row chunk committed; writes them into ``layout``.

    Returns:
        The chosen (layer, head), best first.

    Raises:
        ConfigError: ``top_n`` below 2.
    """
    fill_rows(layout, out, skip=pair_keys(out))
    analysed = layout["analysed"][()]
    chosen = hp.top_heads(iv.mean_and_err(layout["heads/effect"][()][analysed], axis=0)[0],
                          top_n)
    rows = np.flatnonzero(analysed)
    total = -(-len(rows) // chunk_size)
    todo = [k for k in range(total) if PAIRS_KEY + k not in out.keys]
    if len(todo) < total:
        log.info("patching: head pairs resuming, %d of %d chunks left", len(todo), total)
    for k in tqdm(todo, desc="patching: head pairs", unit="chunk", disable=None):
        part = rows[k * chunk_size:(k + 1) * chunk_size]
        prep = iv.prepare(net, [iv.Puzzle.from_set(puzzles, int(i)) for i in part],
                          batch_size=batch_size)
        out.commit(PAIRS_KEY + k, {"heads/pairs/joint_effect": hp.pair_patching(prep, chosen)},
                   {"rows": part.tolist()})
    return chosen


def write_head_pairs(f: h5py.File, out: ChunkedOutput, chosen: list[tuple[int, int]],
                     top_n: int, analysed: np.ndarray, subsets: dict[str, np.ndarray]) -> None:
    """The ``heads/pairs`` group: the ``chosen`` heads, the joint effects of
    :func:`commit_head_pairs`'s chunks of ``out``, their interaction with the singles
    (``heads/effect``), and their summaries over the ``analysed`` puzzles."""
    pairs = hp.pairs_of(chosen)
    n = f["analysed"].shape[0]
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
    for key in pair_keys(out):
        chunk = out.read(key)
        joint[chunk.meta["rows"]] = chunk.arrays["heads/pairs/joint_effect"]
    inter = hp.interaction(joint, f["heads/effect"][()], chosen)
    for name, values, meaning in (
            ("joint_effect", joint, "both heads of the pair patched from the corrupted run"),
            ("interaction", inter, "joint_effect - (single_a + single_b) of heads/effect")):
        label_axes(g.create_dataset(name, data=values), "puzzle", "pair",
                   **effect_attrs(meaning=meaning))
        write_summary(g, name, values, analysed, subsets, ("pair",),
                      **effect_attrs(meaning="over analysed puzzles"))


def write_patching(net, puzzles_path: str | Path, path: str | Path, settings: PatchingSettings,
                   *, config: dict, attrs: dict | None = None, resume: bool = True) -> Path:
    """Patch every analysed puzzle of ``puzzles_path`` and write ``path`` (``patching.h5``;
    a shard's ``patching.shard-K-of-N.h5``: its rows only, see :class:`PatchingSettings`).

    Chunks of ``settings.chunk_size`` puzzles are committed one by one
    (:class:`~leela_interp.outputs.chunked.ChunkedOutput`): a kill at any instant loses at most
    the chunk in progress, and a call with ``resume`` continues after the last committed one.
    The head pairs (``settings.head_pairs_top_n``) follow as chunks of their own
    (:func:`commit_head_pairs`); the summaries and funnel are computed in the finishing step.

    Args:
        net: The network under study (:class:`~leela_interp.network.net.LeelaNet`).
        puzzles_path: The ``puzzles.h5`` to analyse.
        path: The file to write.
        settings: What to compute.
        config: What the file records and hashes (its ``config`` attribute).
        attrs: Extra root attributes.
        resume: Continue from committed chunks of the same config (False: start over).

    Raises:
        ConfigError: ``resid_mid`` patched in a net without transformer blocks, or a
            negative ``max_puzzles``.
    """
    sites = list(settings.sites)
    if "resid_mid" in sites and not has_heads(net):
        raise ConfigError(f"patching.sites: resid_mid exists only in transformer blocks; "
                          f"{net.path} is a {net.config.body!r} net")
    heads = settings.heads and has_heads(net)
    if settings.heads and not heads:
        log.warning("%s has no attention heads (%s body): head patching is skipped; only "
                    "residual-stream patching runs", net.path, net.config.body)
    attrs = attrs or {}
    path = Path(path)
    puzzles = PuzzleSet.load(puzzles_path)
    limit = considered(len(puzzles), settings.max_puzzles)
    sharded = settings.num_shards > 1
    if sharded:  # the shard's rows, and how many of them are among the considered rows
        rows = shard_rows(len(puzzles), settings.shard, settings.num_shards)
        puzzles, limit = puzzles.select(rows), int(np.count_nonzero(rows < limit))
    bs = settings.batch_size
    require_top = settings.require_pv0_top
    clean_hooks = [f"blocks.*.hook_{s}" for s in sites] + ["blocks.*.hook_resid_pre"]
    corrupted_hooks = [f"blocks.*.hook_{s}" for s in sites]
    if heads:
        clean_hooks.append("blocks.*.attn.hook_z")
        corrupted_hooks.append("blocks.*.attn.hook_z")
    layout = in_memory()
    create_layout(layout, net, puzzles, settings, attrs)
    out_file = ChunkedOutput(path, schema=SCHEMA, config=config, resume=resume)
    for key, s, e in chunks(out_file, limit, settings.chunk_size, "patching"):
        block = RowBlock(layout, s, e)
        chunk = [iv.Puzzle.from_set(puzzles, i) for i in range(s, e)]
        selection = iv.prepare(net, chunk, batch_size=bs, overlap_rule=settings.overlap_rule)
        rows = screen(block, selection, need_corruption=True, require_pv0_top=require_top)
        block.set("overlap", selection.overlap)
        block.set("square_category", selection.categories)
        if len(rows):
            prep = iv.prepare(net, [chunk[j] for j in rows], batch_size=bs,
                              clean_hooks=clean_hooks, corrupted_hooks=corrupted_hooks,
                              overlap_rule=settings.overlap_rule)
            block.put("corrupted_log_odds", rows, prep.corrupted_log_odds)
            block.put("corruption_effect", rows, prep.clean_log_odds - prep.corrupted_log_odds)
            est = (attribution.attribution_patching(prep, sites=sites, heads=heads)
                   if settings.method == "attribution" else None)
            for site in sites:
                eff = est.residual[site] if est else residual_patching(
                    prep, site=site, skip_identical=settings.skip_identical)
                block.put(f"residual/{site}/effect", rows, eff)
                block.put(f"residual/{site}/category_max", rows,
                          iv.category_max(eff, prep.categories, prep.deep_targets))
            if heads:
                block.put("heads/effect", rows, est.heads if est else
                          head_patching(prep, skip_identical=settings.skip_identical))
        out_file.commit(key, block.arrays, {"start": s})
    top_n = settings.head_pairs_top_n if heads and not sharded else 0  # a merge's: all puzzles
    chosen = commit_head_pairs(out_file, layout, net, puzzles, top_n, batch_size=bs,
                               chunk_size=settings.chunk_size) if top_n else []
    layout.close()

    def finish(f: h5py.File) -> None:
        create_layout(f, net, puzzles, settings, attrs)
        fill_rows(f, out_file, skip=pair_keys(out_file))
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
                write_head_pairs(f, out_file, chosen, top_n, analysed, subsets)
        steps = selection_steps(f, limit, "patching", need_corruption=True,
                                require_pv0_top=require_top,
                                corruption_rule="a usable corrupted board (patching needs one)")
        steps.append(("no_overlap", no_overlap,
                      f"no overlap (patching.overlap_rule={settings.overlap_rule}): the "
                      f"puzzles of the residual category means"))
        write_funnel(f, steps)
        log.info("patching: funnel %s", ", ".join(f"{name} {int(m.sum())}"
                                                  for name, m, _ in steps))

    out_file.finish(finish)
    log.info("wrote %s", path)
    return path


#: Per-puzzle datasets a file's layout writes from ``puzzles.h5`` itself (not from chunks):
#: :func:`merge_patching` leaves them out of the chunks it commits.
LAYOUT_ROWS = ("puzzle_id", "different_targets", "done")


def merge_patching(paths: Sequence[str | Path], path: str | Path, puzzles_path: str | Path,
                   settings: PatchingSettings, *, config: dict, resume: bool = True) -> None:
    """Commit the rows of the patching shards ``paths`` (``paths[k]`` is shard ``k``) as the
    chunks an unsharded :func:`write_patching` of ``settings`` and ``config`` commits for
    ``path``: chunk ``k`` = rows ``[k * chunk_size, ...)`` of the considered puzzles, row ``i``
    from shard ``i % n``. That call, made next with ``resume=True``, finds every chunk done and
    only finishes the file (summaries, head-pair joint patching, funnel), so the file is the
    one an unsharded run writes.

    Args:
        paths: the shards' ``patching.shard-k-of-n.h5``, in shard order
            (:func:`leela_interp.outputs.shards.find_shards`).
        path: the merged file, normally ``run_dir / "patching.h5"``.
        puzzles_path: the ``puzzles.h5`` the shards split.
        settings: the unsharded run's settings (``chunk_size``, ``max_puzzles``).
        config: the unsharded run's recorded config; each shard's, less its ``shard`` and
            ``num_shards``, must equal it.
        resume: keep chunks committed by an earlier merge of the same config.

    Raises:
        ConfigError: a shard was made with another config, network or puzzle set than the
            merge's (the keys that differ are named), or a shard's rows are not those of one
            split of ``puzzles_path``.
    """
    n = len(PuzzleSet.load(puzzles_path))
    rows = read_shard_rows(paths, config, "patching", n, LAYOUT_ROWS)
    out_file = ChunkedOutput(path, schema=SCHEMA, config=config, resume=resume)
    commit_shard_rows(out_file, rows, considered(n, settings.max_puzzles), int(settings.chunk_size))
