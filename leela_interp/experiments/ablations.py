"""``ablations.h5``: head ablations, the single-edge ablation and the piece-movement-head
ablation, on the clean boards, chunk by chunk, and the file's layout.

:func:`write_ablations` runs the interventions of :mod:`leela_interp.experiments.interventions`
(:func:`head_ablation` here, :func:`~leela_interp.experiments.edge.edge_ablation`,
:func:`~leela_interp.experiments.piece_heads.piece_head_ablation`) on the puzzles of a
``puzzles.h5`` and writes ``ablations.h5``; every dataset, attribute and axis of that file is
made by :func:`create_layout` here (the rows every effect file shares by
:mod:`leela_interp.experiments.effects`). :func:`~leela_interp.experiments.edge.edge_head`
chooses the single-edge head (given, or the one ``patching.h5`` ranks first);
:func:`merge_ablations` joins a sharded run's files
(``ablations.shard``/``num_shards``). Layout and conventions: ``docs/interventions.md``. The
``ablations`` stage (:mod:`leela_interp.stages.ablations`) builds :class:`AblationSettings` from
its config section.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import chess
import h5py
import numpy as np
import torch
from tqdm import tqdm

from leela_interp.board.encoding import TOKEN_NUMBERING
from leela_interp.errors import ConfigError
from leela_interp.experiments import interventions as iv
from leela_interp.experiments import piece_heads as ph
from leela_interp.experiments.edge import EDGE_VARIANTS, EdgeHead, edge_ablation
from leela_interp.experiments.effects import (RowBlock, chunks, considered, effect_attrs,
                                              fill_rows, float_dataset, has_heads, in_memory,
                                              screen, selection_steps, subset_masks,
                                              write_common, write_funnel, write_summary)
from leela_interp.outputs.chunked import ChunkedOutput
from leela_interp.outputs.results import STR, label_axes, write_strings
from leela_interp.outputs.shards import check_shard, commit_shard_rows, read_shard_rows, shard_rows
from leela_interp.puzzles.puzzle_set import PuzzleSet

log = logging.getLogger(__name__)

OUTPUT = "ablations.h5"
SCHEMA = "leela_interp.ablations/1"
PUZZLE_CHOICES = ("corrupted", "all")
"""``ablations.puzzles``: analyse the puzzles with a usable corrupted board (as patching and the
paper do) or every puzzle."""
MEAN_KEY = 99_999_999
"""The chunk key of ``heads/mean_z`` (after every row chunk's key)."""
ABLATION_METHODS: tuple[str, ...] = ("zero", "mean", "resample")
"""Head-ablation methods: the head's output ``hook_z`` set to 0, to its mean over the puzzle set
(per square), or to its value on another puzzle's clean board."""



def head_outputs(net, boards: Sequence[chess.Board], *, batch_size: int = 256) -> torch.Tensor:
    """Every head's output ``hook_z`` on ``boards``: ``[B, n_layers, n_heads, 64, d_head]``."""
    iv.require_heads(net)
    planes = net.encode(list(boards))
    parts = []
    for s in range(0, len(planes), batch_size):
        with torch.no_grad():
            _, c = net.run_with_cache(planes[s:s + batch_size], names="blocks.*.attn.hook_z")
        parts.append(torch.stack([c[f"blocks.{l}.attn.hook_z"]
                                  for l in range(net.config.n_layers)], dim=1))
    return torch.cat(parts)


class MeanHeadOutputs:
    """Running mean of every head's output over a puzzle set, per square
    (``[n_layers, n_heads, 64, d_head]``, float64): ``add`` chunks, read ``mean``."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, z: torch.Tensor) -> None:
        """Add ``[B, n_layers, n_heads, 64, d_head]`` head outputs."""
        s = z.double().sum(0).cpu()
        self.total = s if self.total is None else self.total + s
        self.count += z.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        if self.total is None or self.count == 0:
            raise ValueError("no head outputs added")
        return self.total / self.count


def resample_donors(n: int, seed: int) -> np.ndarray:
    """For each of ``n`` puzzles a donor puzzle ``!= itself`` (seeded; -1 everywhere if n < 2)."""
    if n < 2:
        return np.full(n, -1, np.int64)
    rng = np.random.default_rng(seed)
    return (np.arange(n) + 1 + rng.integers(0, n - 1, size=n)) % n


def head_ablation(prep: iv.Prepared, method: str, *, mean_z: torch.Tensor | None = None,
                  donor_z: torch.Tensor | None = None) -> np.ndarray:
    """Ablate each (layer, head)'s output ``hook_z`` on the clean board, one head at a time.

    Args:
        prep: the chunk.
        method: ``zero``, ``mean`` (``mean_z`` ``[L, H, 64, d_head]``, e.g.
            :class:`MeanHeadOutputs`) or ``resample`` (``donor_z`` ``[P, L, H, 64, d_head]``:
            the head outputs of each puzzle's donor board, :func:`head_outputs`).

    Returns:
        Effects ``[P, n_layers, n_heads]`` (float32).
    """
    net = prep.net
    iv.require_heads(net)
    if method not in ABLATION_METHODS:
        raise ConfigError(f"unknown ablation method {method!r}; choose from "
                          f"{list(ABLATION_METHODS)}")
    if method == "mean" and mean_z is None:
        raise ValueError("mean ablation needs mean_z")
    if method == "resample" and donor_z is None:
        raise ValueError("resample ablation needs donor_z")
    n_layers, n_heads = net.config.n_layers, net.config.n_heads
    out = np.full((prep.n, n_layers, n_heads), np.nan, np.float32)
    rp = np.repeat(np.arange(prep.n), n_heads)
    rh = np.tile(np.arange(n_heads), prep.n)
    for layer in range(n_layers):
        hook = f"blocks.{layer}.attn.hook_z"

        def ablate(t, rows, layer=layer):
            t = t.clone()
            ar = np.arange(len(rows))
            if method == "zero":
                t[ar, rh[rows]] = 0.0
            elif method == "mean":
                t[ar, rh[rows]] = mean_z[layer, rh[rows]].to(t.device, t.dtype)
            else:
                t[ar, rh[rows]] = donor_z[rp[rows], layer, rh[rows]].to(t.device, t.dtype)
            return t

        start = prep.resid_in(layer)
        logits = iv.run_rows(net, layer, len(rp), lambda rows: start[rp[rows]],
                          edits=[(hook, ablate)], batch_size=prep.batch_size)
        out[rp, layer, rh] = iv.row_effects(prep, rp, logits)
    return out


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
            random-key rule, or not ``0 <= shard < num_shards``.
    """

    methods: tuple[str, ...] = ("zero", "mean", "resample")
    """Head-ablation methods (:data:`ABLATION_METHODS`)."""
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
    """Run the single-edge ablation (of the head
    :func:`~leela_interp.experiments.edge.edge_head` chooses)."""
    full_sweep: bool = False
    """Single-edge ablation: also zero each of the head's 64x64 entries in turn."""
    sweep_renormalize: bool = False
    """Renormalise the query row in the full sweep."""
    min_pv_length: int = 5
    """Piece-movement heads: puzzles with at least this many PV moves."""
    piece_rule: str = "initial"
    """Where the piece playing PV[2] is read (:data:`ph.PIECE_RULES`)."""
    random_key: str = "any"
    """Key square of the random-square control (:data:`ph.RANDOM_KEY_RULES`)."""
    batch_size: int = 256
    """Positions per forward pass."""
    shard: int = 0
    """Which shard this run computes, ``0 <= shard < num_shards``."""
    num_shards: int = 1
    """Shards of the puzzle set: a shard ablates the rows ``i % num_shards == shard`` (of the
    first ``max_puzzles``) only; what needs every puzzle (the mean head outputs, the resample
    donors) it computes from the whole set, so its rows equal the unsharded run's
    (:func:`merge_ablations` joins the shards); 1 = every row."""

    def __post_init__(self) -> None:
        check_shard("ablations", self.shard, self.num_shards)
        for m in self.methods:
            if m not in ABLATION_METHODS:
                raise ConfigError(f"ablations.method: unknown method {m!r}; choose from "
                                  f"{list(ABLATION_METHODS)}")
        _choice("ablations.puzzles", self.puzzles, PUZZLE_CHOICES)
        _choice("ablations.piece_heads.piece_rule", self.piece_rule, ph.PIECE_RULES)
        _choice("ablations.piece_heads.random_key", self.random_key, ph.RANDOM_KEY_RULES)


def create_layout(f: h5py.File, net, puzzles: PuzzleSet, settings: AblationSettings, *,
                  limit: int, edge: EdgeHead | None, piece_heads: dict[str, list],
                  piece_heads_source: str, attrs: dict, rows: np.ndarray | None = None) -> None:
    """Every dataset, attribute and axis of ``ablations.h5`` (rows unfilled: NaN effects).

    ``puzzles`` are the file's rows: ``rows`` of the whole puzzle set (a shard's,
    :func:`~leela_interp.outputs.shards.shard_rows`; None = all of it), ``limit`` the number of
    rows of the whole set considered (``max_puzzles``), ``edge`` the single-edge head
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
        rows = np.arange(n) if rows is None else rows
        held = rows < limit
        donors = np.full(n, -1, np.int64)
        donors[held] = resample_donors(limit, settings.seed)[rows[held]]
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
        label_axes(write_strings(g, "variant_names", EDGE_VARIANTS), "variant")
        float_dataset(g, "effect", (n, len(EDGE_VARIANTS)), ("puzzle", "variant"),
                      variants=list(EDGE_VARIANTS), **effect_attrs())
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
        label_axes(write_strings(g, "variant_names", ph.PIECE_VARIANTS), "variant")
        float_dataset(g, "effect", (n, len(ph.PIECE_VARIANTS)), ("puzzle", "variant"),
                      variants=list(ph.PIECE_VARIANTS), **effect_attrs())
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

    A shard (``settings.num_shards > 1``) writes the rows of its puzzles only (the mean head
    outputs and the resample donors still come from every considered puzzle).
    Chunks of ``settings.chunk_size`` puzzles are committed one by one
    (:class:`~leela_interp.outputs.chunked.ChunkedOutput`), ``heads/mean_z`` (method ``mean``)
    as chunk :data:`MEAN_KEY`; the summaries and funnel are computed in the finishing step. A
    network without attention heads gets a complete file whose ``note`` says so.

    Args:
        net: The network under study (:class:`~leela_interp.network.net.LeelaNet`).
        puzzles_path: The ``puzzles.h5`` to analyse.
        path: The file to write.
        settings: What to compute.
        edge: The single-edge head (:func:`~leela_interp.experiments.edge.edge_head`); None:
            that part is not run.
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
    held = shard_rows(len(puzzles), settings.shard, settings.num_shards)  # the file's rows
    own = puzzles.select(held) if settings.num_shards > 1 else puzzles
    own_limit = int(np.count_nonzero(held < limit))
    methods = settings.methods
    bs = settings.batch_size
    need_corruption = settings.puzzles == "corrupted"
    require_top = settings.require_pv0_top
    piece_on = any(piece_heads.values())

    def create(f: h5py.File) -> None:
        create_layout(f, net, own, settings, limit=limit, edge=edge,
                      piece_heads=piece_heads, piece_heads_source=piece_heads_source,
                      attrs=attrs, rows=held)

    layout = in_memory()
    create(layout)
    out_file = ChunkedOutput(path, schema=SCHEMA, config=config, resume=resume)
    mean_z = None
    if "mean" in methods:
        if MEAN_KEY not in out_file.keys:
            acc = MeanHeadOutputs()
            step = min(bs, 64)  # every head's output of 64 boards at a time
            for s in tqdm(range(0, limit, step), desc="ablations: mean head outputs",
                          unit="chunk", disable=None):
                acc.add(head_outputs(net, [puzzles.clean_board(i)
                                              for i in range(s, min(s + step, limit))],
                                        batch_size=step))
            out_file.commit(MEAN_KEY, {"heads/mean_z": acc.mean.float().numpy()})
        mean_z = torch.from_numpy(out_file.read(MEAN_KEY).arrays["heads/mean_z"])
    donors = layout["heads/resample_donor"][()] if "resample" in methods else None
    for key, s, e in chunks(out_file, own_limit, settings.chunk_size, "ablations"):
        block = RowBlock(layout, s, e)
        chunk = [iv.Puzzle.from_set(puzzles, int(held[i])) for i in range(s, e)]
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
                    donor_z = head_outputs(net, [puzzles.clean_board(int(j))
                                                    for j in donors[s + rows]],
                                              batch_size=bs)
                block.put(f"heads/{m}/effect", rows,
                          head_ablation(prep, m, mean_z=mean_z, donor_z=donor_z))
            if edge is not None:
                r = edge_ablation(prep, edge.layer, edge.head, full_sweep=settings.full_sweep,
                                     sweep_renormalize=settings.sweep_renormalize)
                block.put("edge/effect", rows, r.effects)
                block.put("edge/weight", rows, r.weight)
                block.put("edge/rank_in_row", rows, r.rank_in_row)
                block.put("edge/is_head_max", rows, r.is_head_max)
                if r.sweep is not None:
                    block.put("edge/sweep", rows, r.sweep)
            if piece_on:
                r = ph.piece_head_ablation(prep, piece_heads, seed=settings.seed,
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
                          ("variant",), variants=list(EDGE_VARIANTS), **effect_attrs())
        if piece_on:
            write_summary(f["piece_heads"], "effect", f["piece_heads/effect"][()], analysed,
                          subsets, ("variant",), variants=list(ph.PIECE_VARIANTS),
                          **effect_attrs())
        steps = selection_steps(
            f, own_limit, "ablations", need_corruption=need_corruption, require_pv0_top=require_top,
            corruption_rule="a usable corrupted board, as patching (ablations.puzzles=corrupted)"
            if need_corruption else "not required (ablations.puzzles=all)")
        write_funnel(f, steps)
        log.info("ablations: funnel %s", ", ".join(f"{name} {int(m.sum())}"
                                                   for name, m, _ in steps))

    out_file.finish(finish)
    log.info("wrote %s", path)
    return path


#: Per-puzzle datasets the layout writes from ``puzzles.h5`` and the seed (not from chunks).
LAYOUT_ROWS = ("puzzle_id", "different_targets", "done", "heads/resample_donor")


def merge_ablations(paths: Sequence[str | Path], path: str | Path, puzzles_path: str | Path,
                    settings: AblationSettings, *, config: dict, resume: bool = True) -> None:
    """Commit the rows of the ablation shards ``paths`` (``paths[k]`` is shard ``k``) as the
    chunks an unsharded :func:`write_ablations` of ``settings`` and ``config`` commits for
    ``path``: chunk ``k`` = rows ``[k * chunk_size, ...)`` of the considered puzzles, row ``i``
    from shard ``i % n``, and their ``heads/mean_z`` (the same in every shard: it is over every
    considered puzzle) as chunk :data:`MEAN_KEY`. That call, made next with ``resume=True``,
    finds every chunk done and only finishes the file (summaries, funnel), so the file is the
    one an unsharded run writes.

    Args:
        paths: the shards' ``ablations.shard-k-of-n.h5``, in shard order
            (:func:`leela_interp.outputs.shards.find_shards`).
        path: the merged file, normally ``run_dir / "ablations.h5"``.
        puzzles_path: the ``puzzles.h5`` the shards split.
        settings: the unsharded run's settings (``chunk_size``, ``max_puzzles``).
        config: the unsharded run's recorded config; each shard's, less its ``shard`` and
            ``num_shards``, must equal it.
        resume: keep chunks committed by an earlier merge of the same config.

    Raises:
        ConfigError: a shard was made with another config, network, puzzle set or
            ``patching.h5`` than the merge's (the keys that differ are named); a shard's rows
            are not those of one split of ``puzzles_path``; the shards' mean head outputs differ.
    """
    n = len(PuzzleSet.load(puzzles_path))
    rows = read_shard_rows(paths, config, "ablations", n, LAYOUT_ROWS)
    means = []
    for shard in paths:
        with h5py.File(shard, "r") as f:
            if "heads/mean_z" in f:
                means.append(f["heads/mean_z"][()])
    if any(not np.array_equal(m, means[0]) for m in means):
        raise ConfigError(f"the shards' heads/mean_z differ ({[str(p) for p in paths]}): they "
                          f"were not made from the same puzzles.h5 and network; rerun them")
    out_file = ChunkedOutput(path, schema=SCHEMA, config=config, resume=resume)
    if means and MEAN_KEY not in out_file.keys:
        out_file.commit(MEAN_KEY, {"heads/mean_z": means[0]})
    commit_shard_rows(out_file, rows, considered(n, settings.max_puzzles), int(settings.chunk_size))
