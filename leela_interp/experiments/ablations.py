"""``ablations.h5``: head ablations, the single-edge ablation and the piece-movement-head
ablation, on the clean boards, chunk by chunk, and the file's layout.

:func:`write_ablations` runs the interventions of :mod:`leela_interp.experiments.interventions`
(:func:`~leela_interp.experiments.interventions.head_ablation`,
:func:`~leela_interp.experiments.interventions.edge_ablation`,
:func:`~leela_interp.experiments.interventions.piece_head_ablation`) on the puzzles of a
``puzzles.h5`` and writes ``ablations.h5``; every dataset, attribute and axis of that file is
made by :func:`create_layout` here (the rows every effect file shares by
:mod:`leela_interp.experiments.effects`). :func:`edge_head` chooses the single-edge head (given,
or the one ``patching.h5`` ranks first). Layout and conventions: ``docs/interventions.md``. The
``ablations`` stage (:mod:`leela_interp.stages.ablations`) builds :class:`AblationSettings` from
its config section.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from leela_interp.board.encoding import TOKEN_NUMBERING
from leela_interp.errors import ConfigError
from leela_interp.experiments import interventions as iv
from leela_interp.experiments.effects import (RowBlock, chunks, considered, effect_attrs,
                                              fill_rows, float_dataset, has_heads, in_memory,
                                              screen, selection_steps, subset_masks,
                                              write_common, write_funnel, write_summary)
from leela_interp.outputs.results import (STR, ChunkedOutput, is_complete, label_axes,
                                          sha256_file, write_strings)
from leela_interp.puzzles.puzzle_set import PuzzleSet

log = logging.getLogger(__name__)

OUTPUT = "ablations.h5"
SCHEMA = "leela_interp.ablations/1"
PUZZLE_CHOICES = ("corrupted", "all")
"""``ablations.puzzles``: analyse the puzzles with a usable corrupted board (as patching and the
paper do) or every puzzle."""
MEAN_KEY = 99_999_999
"""The chunk key of ``heads/mean_z`` (after every row chunk's key)."""
EDGE_SOURCE = "heads/summary/different_targets/effect_mean"
"""The ``patching.h5`` dataset whose largest entry is the default single-edge head."""


def _choice(key: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}; choose from {list(choices)}")
    return str(value)


@dataclass(frozen=True)
class AblationSettings:
    """What :func:`write_ablations` computes (the ``ablations`` config keys, documented in
    ``leela_interp/conf/ablations/default.yaml``).

    Raises:
        ConfigError: On construction: an unknown method, ``puzzles`` choice, piece rule or
            random-key rule.
    """

    methods: tuple[str, ...] = ("zero", "mean", "resample")
    """Head-ablation methods (:data:`iv.ABLATION_METHODS`)."""
    puzzles: str = "corrupted"
    """Which puzzles are analysed (:data:`PUZZLE_CHOICES`)."""
    require_pv0_top: bool = True
    """Analyse only puzzles on which PV[0] is the net's own top legal move."""
    max_puzzles: int | None = None
    """Consider the first this many rows of ``puzzles.h5``; None = all."""
    chunk_size: int = 32
    """Puzzles per committed chunk (the unit of resumption)."""
    seed: int = 0
    """Seed of the resample donors and of the piece heads' random-square control."""
    edge: bool = True
    """Run the single-edge ablation (of the head :func:`edge_head` chooses)."""
    full_sweep: bool = False
    """Single-edge ablation: also zero each of the head's 64x64 entries in turn."""
    sweep_renormalize: bool = False
    """Renormalise the query row in the full sweep."""
    min_pv_length: int = 5
    """Piece-movement heads: puzzles with at least this many PV moves."""
    piece_rule: str = "initial"
    """Where the piece playing PV[2] is read (:data:`iv.PIECE_RULES`)."""
    random_key: str = "any"
    """Key square of the random-square control (:data:`iv.RANDOM_KEY_RULES`)."""
    batch_size: int = 256
    """Positions per forward pass."""

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in iv.ABLATION_METHODS:
                raise ConfigError(f"ablations.method: unknown method {m!r}; choose from "
                                  f"{list(iv.ABLATION_METHODS)}")
        _choice("ablations.puzzles", self.puzzles, PUZZLE_CHOICES)
        _choice("ablations.piece_heads.piece_rule", self.piece_rule, iv.PIECE_RULES)
        _choice("ablations.piece_heads.random_key", self.random_key, iv.RANDOM_KEY_RULES)


@dataclass(frozen=True)
class EdgeHead:
    """The head of the single-edge ablation (:func:`edge_head`)."""

    layer: int
    head: int
    attrs: dict
    """Written on the ``edge`` group: how the head was chosen."""


def edge_head(net, patching_path: str | Path, layer: int | None = None,
              head: int | None = None) -> EdgeHead:
    """The (layer, head) of the single-edge ablation and how it was chosen.

    ``layer`` and ``head`` given (``ablations.edge.layer/head``): that head. Both None (the
    default): the head this net's own head patching ranks first, the largest
    :data:`EDGE_SOURCE` of ``patching_path``.

    Returns:
        The head; its ``attrs`` (written on the ``edge`` group) say how it was chosen:
        ``choice`` (``config`` or ``patching``), ``chosen_by`` (a sentence) and, for
        ``patching``, the source file, its sha256 and the head's mean, error and n.

    Raises:
        ConfigError: only one of layer/head given, a head outside the net, or (automatic
            choice) no complete ``patching.h5`` of this network with finite head-patching
            means on ``different_targets``.
    """
    patching_path = Path(patching_path)
    if (layer is None) != (head is None):
        raise ConfigError(f"ablations.edge.layer={layer!r}, ablations.edge.head={head!r}: "
                          f"give both, or both null (the head head patching ranks first)")
    if layer is not None:
        try:
            layer, head = iv.resolve_head(net, int(layer), int(head))
        except ConfigError as e:
            raise ConfigError(f"ablations.edge: {e}") from None
        return EdgeHead(layer, head, {"choice": "config",
                                      "chosen_by": f"ablations.edge.layer={layer}, "
                                                   f"ablations.edge.head={head}"})
    fix = (f"run the patching stage first (leela-interp stage=patching model.path="
           f"{net.path} out_dir={patching_path.parent}) or set ablations.edge.layer=L "
           f"ablations.edge.head=H")
    if not is_complete(patching_path):
        raise ConfigError(f"ablations.edge.layer/head are null, so the single-edge head is the "
                          f"one head patching ranks first ({EDGE_SOURCE} of {patching_path}), "
                          f"but that file is missing or incomplete: {fix}")
    with h5py.File(patching_path, "r") as f:
        if f.attrs.get("network_sha256") != net.sha256:
            raise ConfigError(f"{patching_path} was computed with another network "
                              f"(network_sha256 {f.attrs.get('network_sha256')!r}, not "
                              f"{net.sha256!r} of model.path={net.path}): {fix}")
        if EDGE_SOURCE not in f:
            raise ConfigError(f"{patching_path} has no {EDGE_SOURCE} (heads: "
                              f"{f.attrs.get('heads', '?')}): rerun patching with "
                              f"patching.heads=true, or set ablations.edge.layer=L "
                              f"ablations.edge.head=H")
        base = EDGE_SOURCE.rsplit("_", 1)[0]
        mean, err = f[EDGE_SOURCE][()], f[base + "_err2sigma"][()]
        count = f[base + "_n"][()]
    if not np.isfinite(mean).any():
        raise ConfigError(f"{patching_path}: {EDGE_SOURCE} is NaN for every head (no analysed "
                          f"puzzle with different_targets; see its funnel): set "
                          f"ablations.edge.layer=L ablations.edge.head=H, or analyse more "
                          f"puzzles")
    layer, head = (int(i) for i in np.unravel_index(np.nanargmax(mean), mean.shape))
    sha = sha256_file(patching_path)
    m, e, k = float(mean[layer, head]), float(err[layer, head]), int(count[layer, head])
    return EdgeHead(layer, head, {
        "choice": "patching",
        "chosen_by": f"largest {EDGE_SOURCE} of {patching_path.name} (sha256 {sha[:12]}): "
                     f"{m:.4f} ± {e:.4f} (2σ) over {k} puzzles",
        "source_file": str(patching_path), "source_sha256": sha,
        "source_effect_mean": m, "source_effect_err2sigma": e, "source_n": k})


def create_layout(f: h5py.File, net, puzzles: PuzzleSet, settings: AblationSettings, *,
                  limit: int, edge: EdgeHead | None, piece_heads: dict[str, list],
                  piece_heads_source: str, attrs: dict) -> None:
    """Every dataset, attribute and axis of ``ablations.h5`` (rows unfilled: NaN effects).

    ``limit`` is the number of rows considered (``max_puzzles``), ``edge`` the single-edge head
    (None: not run), ``piece_heads`` the piece-movement-head lists (all empty: not run) and
    ``piece_heads_source`` where they come from; ``attrs`` are extra root attributes.
    """
    n, L, H = len(puzzles), net.config.n_layers, net.config.n_heads
    methods = settings.methods
    write_common(f, net, puzzles, {**attrs, "puzzles": settings.puzzles,
                                   "require_pv0_top": settings.require_pv0_top})
    g = f.require_group("heads")
    g.attrs["hook"] = "blocks.{layer}.attn.hook_z"
    for m in methods:
        float_dataset(g, f"{m}/effect", (n, L, H), ("puzzle", "layer", "head"),
                      **effect_attrs(method=m))
    if "resample" in methods:
        donors = np.full(n, -1, np.int64)
        donors[:limit] = iv.resample_donors(limit, settings.seed)
        label_axes(g.create_dataset("resample_donor", data=donors), "puzzle",
                   meaning="row of the puzzle whose clean head outputs are used (any "
                           "of the considered rows; -1 past max_puzzles)")
    if edge is not None:
        g = f.require_group("edge")
        g.attrs.update({"layer": edge.layer, "head": edge.head, **edge.attrs,
                        "hook": f"blocks.{edge.layer}.attn.hook_pattern",
                        "query": "1st-move target (PV[0].to_square) token",
                        "key": "3rd-move target (PV[2].to_square) token",
                        "numbering": TOKEN_NUMBERING})
        label_axes(write_strings(g, "variant_names", iv.EDGE_VARIANTS), "variant")
        float_dataset(g, "effect", (n, len(iv.EDGE_VARIANTS)), ("puzzle", "variant"),
                      variants=list(iv.EDGE_VARIANTS), **effect_attrs())
        float_dataset(g, "weight", (n,), ("puzzle",),
                      meaning="clean attention weight pattern[query, key]")
        label_axes(g.create_dataset("rank_in_row", shape=(n,), dtype="i8",
                                    fillvalue=-1), "puzzle",
                   meaning="rank of the weight in its query row (0 = largest)")
        label_axes(g.create_dataset("is_head_max", shape=(n,), dtype=bool), "puzzle",
                   meaning="the weight is the largest of the head's 4096 entries")
        if settings.full_sweep:
            float_dataset(g, "sweep", (n, 64, 64), ("puzzle", "query", "key"),
                          renormalized=settings.sweep_renormalize,
                          numbering=TOKEN_NUMBERING,
                          **effect_attrs(meaning="zero one pattern entry"))
    if any(piece_heads.values()):
        g = f.require_group("piece_heads")
        g.attrs.update({"heads": str(piece_heads), "heads_source": piece_heads_source,
                        "min_pv_length": settings.min_pv_length,
                        "seed": settings.seed,
                        "piece_rule": settings.piece_rule,
                        "random_key": settings.random_key})
        label_axes(write_strings(g, "variant_names", iv.PIECE_VARIANTS), "variant")
        float_dataset(g, "effect", (n, len(iv.PIECE_VARIANTS)), ("puzzle", "variant"),
                      variants=list(iv.PIECE_VARIANTS), **effect_attrs())
        label_axes(g.create_dataset("piece", shape=(n,), dtype=STR), "puzzle",
                   meaning="piece playing PV[2] (knight/bishop/rook; read by "
                           f"piece_rule={settings.piece_rule}); '' = not in the subset")
        label_axes(g.create_dataset("random_key", shape=(n,), dtype="i8",
                                    fillvalue=-1), "puzzle", numbering=TOKEN_NUMBERING,
                   meaning=f"key token of the random_square control (random_key="
                           f"{settings.random_key}); -1 = none")


def write_ablations(net, puzzles_path: str | Path, path: str | Path, settings: AblationSettings,
                    *, edge: EdgeHead | None, piece_heads: dict[str, list],
                    piece_heads_source: str = "config", config: dict,
                    attrs: dict | None = None, resume: bool = True) -> Path:
    """Ablate every analysed puzzle of ``puzzles_path`` and write ``path`` (``ablations.h5``).

    Chunks of ``settings.chunk_size`` puzzles are committed one by one
    (:class:`~leela_interp.outputs.results.ChunkedOutput`), ``heads/mean_z`` (method ``mean``)
    as chunk :data:`MEAN_KEY`; the summaries and funnel are computed in the finishing step. A
    network without attention heads gets a complete file whose ``note`` says so.

    Args:
        net: The network under study (:class:`~leela_interp.network.net.LeelaNet`).
        puzzles_path: The ``puzzles.h5`` to analyse.
        path: The file to write.
        settings: What to compute.
        edge: The single-edge head (:func:`edge_head`); None: that part is not run.
        piece_heads: ``{piece: [(layer, head), ...]}`` of the piece-movement-head ablation
            (:func:`~leela_interp.experiments.interventions.check_head_lists`); all empty: not
            run.
        piece_heads_source: Where the lists come from (recorded).
        config: What the file records and hashes (its ``config`` attribute).
        attrs: Extra root attributes.
        resume: Continue from committed chunks of the same config (False: start over).

    Raises:
        ConfigError: a negative ``max_puzzles``.
    """
    attrs = attrs or {}
    path = Path(path)
    if not has_heads(net):
        note = (f"not run: {net.path} has no attention heads ({net.config.body} body); "
                f"head, edge and piece-movement-head ablations need a transformer")
        log.warning("ablations: %s", note)
        root = {"note": note, "network_sha256": net.sha256, "body": net.config.body,
                "metric": iv.METRIC, "sign": iv.SIGN, **attrs}
        ChunkedOutput(path, schema=SCHEMA, config=config, resume=False).finish(
            lambda f: f.attrs.update(root))
        return path
    puzzles = PuzzleSet.load(puzzles_path)
    limit = considered(len(puzzles), settings.max_puzzles)
    methods = settings.methods
    bs = settings.batch_size
    need_corruption = settings.puzzles == "corrupted"
    require_top = settings.require_pv0_top
    piece_on = any(piece_heads.values())

    def create(f: h5py.File) -> None:
        create_layout(f, net, puzzles, settings, limit=limit, edge=edge,
                      piece_heads=piece_heads, piece_heads_source=piece_heads_source,
                      attrs=attrs)

    layout = in_memory()
    create(layout)
    out_file = ChunkedOutput(path, schema=SCHEMA, config=config, resume=resume)
    mean_z = None
    if "mean" in methods:
        if MEAN_KEY not in out_file.keys:
            acc = iv.MeanHeadOutputs()
            step = min(bs, 64)  # every head's output of 64 boards at a time
            for s in tqdm(range(0, limit, step), desc="ablations: mean head outputs",
                          unit="chunk", disable=None):
                acc.add(iv.head_outputs(net, [puzzles.clean_board(i)
                                              for i in range(s, min(s + step, limit))],
                                        batch_size=step))
            out_file.commit(MEAN_KEY, {"heads/mean_z": acc.mean.float().numpy()})
        mean_z = torch.from_numpy(out_file.read(MEAN_KEY).arrays["heads/mean_z"])
    donors = layout["heads/resample_donor"][()] if "resample" in methods else None
    for key, s, e in chunks(out_file, limit, settings.chunk_size, "ablations"):
        block = RowBlock(layout, s, e)
        chunk = [iv.Puzzle.from_set(puzzles, i) for i in range(s, e)]
        rows = screen(block, iv.prepare(net, chunk, batch_size=bs),
                      need_corruption=need_corruption, require_pv0_top=require_top)
        if len(rows):
            prep = iv.prepare(net, [chunk[j] for j in rows], batch_size=bs,
                              clean_hooks=["blocks.*.hook_resid_pre"])
            for m in methods:
                donor_z = None
                if m == "resample":
                    if limit < 2:
                        continue
                    donor_z = iv.head_outputs(net, [puzzles.clean_board(int(j))
                                                    for j in donors[s + rows]],
                                              batch_size=bs)
                block.put(f"heads/{m}/effect", rows,
                          iv.head_ablation(prep, m, mean_z=mean_z, donor_z=donor_z))
            if edge is not None:
                r = iv.edge_ablation(prep, edge.layer, edge.head, full_sweep=settings.full_sweep,
                                     sweep_renormalize=settings.sweep_renormalize)
                block.put("edge/effect", rows, r.effects)
                block.put("edge/weight", rows, r.weight)
                block.put("edge/rank_in_row", rows, r.rank_in_row)
                block.put("edge/is_head_max", rows, r.is_head_max)
                if r.sweep is not None:
                    block.put("edge/sweep", rows, r.sweep)
            if piece_on:
                r = iv.piece_head_ablation(prep, piece_heads, seed=settings.seed,
                                           min_pv_length=settings.min_pv_length,
                                           piece_rule=settings.piece_rule,
                                           random_key=settings.random_key)
                block.put("piece_heads/effect", rows, r.effects)
                block.put("piece_heads/piece", rows, np.array(r.piece, dtype=object))
                block.put("piece_heads/random_key", rows, r.random_key)
        out_file.commit(key, block.arrays, {"start": s})
    layout.close()

    def finish(f: h5py.File) -> None:
        create(f)
        fill_rows(f, out_file, skip=[MEAN_KEY])
        if mean_z is not None:
            label_axes(f.create_dataset("heads/mean_z", data=mean_z.numpy()),
                       "layer", "head", "square", "d_head", numbering=TOKEN_NUMBERING,
                       meaning=f"mean hook_z over the {limit} considered clean boards "
                               f"(every row within max_puzzles, analysed or not)")
        subsets = subset_masks(f)
        analysed = f["analysed"][()]
        for m in methods:
            write_summary(f[f"heads/{m}"], "effect", f[f"heads/{m}/effect"][()], analysed,
                          subsets, ("layer", "head"), **effect_attrs(method=m))
        if edge is not None:
            write_summary(f["edge"], "effect", f["edge/effect"][()], analysed, subsets,
                          ("variant",), variants=list(iv.EDGE_VARIANTS), **effect_attrs())
        if piece_on:
            write_summary(f["piece_heads"], "effect", f["piece_heads/effect"][()], analysed,
                          subsets, ("variant",), variants=list(iv.PIECE_VARIANTS),
                          **effect_attrs())
        steps = selection_steps(
            f, limit, "ablations", need_corruption=need_corruption, require_pv0_top=require_top,
            corruption_rule="a usable corrupted board, as patching (ablations.puzzles=corrupted)"
            if need_corruption else "not required (ablations.puzzles=all)")
        write_funnel(f, steps)
        log.info("ablations: funnel %s", ", ".join(f"{name} {int(m.sum())}"
                                                   for name, m, _ in steps))

    out_file.finish(finish)
    log.info("wrote %s", path)
    return path
