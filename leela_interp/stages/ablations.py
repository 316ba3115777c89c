"""``stage=ablations``: head ablations (zero / mean / resample), single-edge ablation of one
(layer, head), and piece-movement-head ablations, on the clean boards.

Reads ``<out_dir>/puzzles.h5`` (and, for the default single-edge head, ``patching.h5``),
writes ``<out_dir>/ablations.h5`` and PNG figures under ``<out_dir>/figures/`` (layout and
conventions: ``docs/interventions.md``). By default only the puzzles patching analyses are
ablated (``ablations.puzzles``, ``ablations.require_pv0_top``). A network without attention
heads (a CNN) gets a complete file that says so and no figures. Resumable by chunks; skipped
when complete for the same network, puzzle set and ``ablations`` config (and, for the default
single-edge head, the same ``patching.h5``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import chess
import h5py
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from leela_interp.board.encoding import TOKEN_NUMBERING
from leela_interp.errors import ConfigError
from leela_interp.experiments import interventions as iv
from leela_interp.experiments import piece_heads as ph
from leela_interp.outputs.results import (STR, ChunkedOutput, is_complete, label_axes,
                                          sha256_file, write_strings)
from leela_interp.puzzles.puzzle_set import PuzzleSet
from leela_interp.stages.common import puzzles_net, run_dir, up_to_date
from leela_interp.stages.patching import (RowBlock, chunks, considered, effect_attrs,
                                          fill_rows, float_dataset, in_memory, load_model,
                                          puzzles_input, screen, selection_steps, stage_config,
                                          subset_masks, write_common, write_funnel,
                                          write_summary)

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


def _methods(value) -> list[str]:
    methods = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else [value]
    for m in methods:
        if m not in iv.ABLATION_METHODS:
            raise ConfigError(f"ablations.method: unknown method {m!r}; choose from "
                              f"{list(iv.ABLATION_METHODS)}")
    return methods


def _head_lists(ac) -> dict[str, list]:
    lists = OmegaConf.to_container(ac.piece_heads.heads, resolve=True) or {}
    return {k: v or [] for k, v in lists.items()}


def piece_head_lists(cfg: DictConfig, net, puzzles: PuzzleSet, puzzles_path: Path,
                     out: Path) -> tuple[dict[str, list], str]:
    """The piece-movement-head lists and where they come from.

    Any list of ``ablations.piece_heads.heads`` given: those (``"config"``). All empty and
    ``ablations.piece_heads.find.enabled``: the heads
    :mod:`leela_interp.experiments.piece_heads` selects on the positions before each puzzle's
    setup move (``puzzles.h5``'s ``fen``, the first ``find.max_positions``), read from
    ``<out>/piece_heads.h5``, which is written first unless it is complete for the same
    network, puzzles and ``find`` config (and its figure when ``ablations.figures``).

    Returns:
        ``(lists, source)``; ``source`` is ``"config"``, ``"none"`` (empty, no finder) or a
        sentence naming ``piece_heads.h5`` and its sha256.

    Raises:
        ConfigError: a bad list, head, ``find.min_lift`` or ``find.max_positions``.
    """
    ac = cfg.ablations
    lists = iv.check_head_lists(net, _head_lists(ac))
    find = ac.piece_heads.find
    if any(lists.values()) or not find.enabled:
        return lists, "config" if any(lists.values()) else "none"
    limit = find.max_positions
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"ablations.piece_heads.find.max_positions={limit!r}; give a "
                          f"positive number of positions or null (every puzzle's)")
    min_lift = float(find.min_lift)
    path = out / ph.OUTPUT
    config = {"find": OmegaConf.to_container(find, resolve=True),
              "model": {"dtype": cfg.model.dtype}, "network_sha256": net.sha256,
              "puzzles_sha256": sha256_file(puzzles_path)}
    if not up_to_date(path, config, bool(cfg.force)):
        boards = [chess.Board(fen) for fen in puzzles.fens[:limit]]
        scores = ph.movement_scores(net, boards, batch_size=min(int(cfg.model.batch_size), 64))
        ph.write(path, scores, ph.select_heads(scores, min_lift), min_lift=min_lift,
                 config=config, attrs={"network_sha256": net.sha256, "network_path": net.path,
                                       "positions": "puzzles.h5 fen (before the setup move)"})
        log.info("wrote %s", path)
    if ac.figures:
        from leela_interp.outputs import figures

        for fig in figures.piece_head_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    lists = ph.read_lists(path)
    return lists, f"found: {path.name} (sha256 {sha256_file(path)[:12]}, min_lift {min_lift:g})"


def _choice(key: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}; choose from {list(choices)}")
    return str(value)


def edge_head(cfg: DictConfig, net, patching_path: Path) -> tuple[int, int, dict]:
    """The (layer, head) of the single-edge ablation and how it was chosen.

    ``ablations.edge.layer/head`` given: that head. Both null (the default): the head this
    net's own head patching ranks first, the largest :data:`EDGE_SOURCE` of
    ``patching_path``.

    Returns:
        ``(layer, head, attrs)``; ``attrs`` (written on the ``edge`` group) say how the head
        was chosen: ``choice`` (``config`` or ``patching``), ``chosen_by`` (a sentence) and,
        for ``patching``, the source file, its sha256 and the head's mean, error and n.

    Raises:
        ConfigError: only one of layer/head given, a head outside the net, or (automatic
            choice) no complete ``patching.h5`` of this network with finite head-patching
            means on ``different_targets``.
    """
    ec = cfg.ablations.edge
    if (ec.layer is None) != (ec.head is None):
        raise ConfigError(f"ablations.edge.layer={ec.layer!r}, ablations.edge.head={ec.head!r}: "
                          f"give both, or both null (the head head patching ranks first)")
    if ec.layer is not None:
        try:
            layer, head = iv.resolve_head(net, int(ec.layer), int(ec.head))
        except ConfigError as e:
            raise ConfigError(f"ablations.edge: {e}") from None
        return layer, head, {"choice": "config", "chosen_by": f"ablations.edge.layer={layer}, "
                                                              f"ablations.edge.head={head}"}
    fix = (f"run the patching stage first (leela-interp stage=patching model.path="
           f"{cfg.model.path} out_dir={patching_path.parent}) or set ablations.edge.layer=L "
           f"ablations.edge.head=H")
    if not is_complete(patching_path):
        raise ConfigError(f"ablations.edge.layer/head are null, so the single-edge head is the "
                          f"one head patching ranks first ({EDGE_SOURCE} of {patching_path}), "
                          f"but that file is missing or incomplete: {fix}")
    with h5py.File(patching_path, "r") as f:
        if f.attrs.get("network_sha256") != net.sha256:
            raise ConfigError(f"{patching_path} was computed with another network "
                              f"(network_sha256 {f.attrs.get('network_sha256')!r}, not "
                              f"{net.sha256!r} of model.path={cfg.model.path}): {fix}")
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
    return layer, head, {
        "choice": "patching",
        "chosen_by": f"largest {EDGE_SOURCE} of {patching_path.name} (sha256 {sha[:12]}): "
                     f"{m:.4f} ± {e:.4f} (2σ) over {k} puzzles",
        "source_file": str(patching_path), "source_sha256": sha,
        "source_effect_mean": m, "source_effect_err2sigma": e, "source_n": k}


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/ablations.h5`` (or skip it when up to date) and its figures."""
    from leela_interp.outputs import figures

    ac = cfg.ablations
    methods = _methods(ac.method)
    which = _choice("ablations.puzzles", ac.puzzles, PUZZLE_CHOICES)
    piece_rule = _choice("ablations.piece_heads.piece_rule", ac.piece_heads.piece_rule,
                         iv.PIECE_RULES)
    random_key = _choice("ablations.piece_heads.random_key", ac.piece_heads.random_key,
                         iv.RANDOM_KEY_RULES)
    puzzles_path = puzzles_input(cfg)
    out = run_dir(cfg)
    path = out / OUTPUT
    patching_path = out / "patching.h5"
    edge_on = bool(ac.edge.enabled)
    auto_edge = edge_on and ac.edge.layer is None and ac.edge.head is None
    config = stage_config(cfg, "ablations", puzzles_path)
    if auto_edge and patching_path.exists():  # the chosen head depends on patching.h5
        config["patching_sha256"] = sha256_file(patching_path)
    if up_to_date(path, config, bool(cfg.force)):
        if ac.figures:
            figures.ablation_figures(path, out / "figures")
        return path
    net = load_model(cfg)
    net_attrs = puzzles_net(puzzles_path, net.sha256, cfg.model.path)
    if net.config.body != "transformer" or net.config.n_heads == 0:
        note = (f"not run: {cfg.model.path} has no attention heads ({net.config.body} body); "
                f"head, edge and piece-movement-head ablations need a transformer")
        log.warning("ablations: %s", note)
        attrs = {"note": note, "network_sha256": net.sha256, "body": net.config.body,
                 "metric": iv.METRIC, "sign": iv.SIGN, **net_attrs}
        ChunkedOutput(path, schema=SCHEMA, config=config, resume=False).finish(
            lambda f: f.attrs.update(attrs))
        return path
    puzzles = PuzzleSet.load(puzzles_path)
    n = len(puzzles)
    limit = considered(n, ac.max_puzzles)
    L, H = net.config.n_layers, net.config.n_heads
    bs = int(cfg.model.batch_size)
    need_corruption = which == "corrupted"
    require_top = bool(ac.require_pv0_top)
    if edge_on:
        layer, head, edge_attrs = edge_head(cfg, net, patching_path)
        log.info("ablations: single-edge head L%dH%d (%s)", layer, head, edge_attrs["chosen_by"])
    lists, heads_source = piece_head_lists(cfg, net, puzzles, puzzles_path, out)
    piece_on = any(lists.values())
    log.info("ablations: piece-movement heads %s (%s)", lists, heads_source)
    if not piece_on:
        log.info("ablations: no piece-movement heads (ablations.piece_heads.heads empty%s); "
                 "that part is skipped", "" if heads_source == "none" else
                 ", and none passes the finder's threshold")

    def create_layout(f: h5py.File) -> None:
        write_common(f, net, puzzles, {**net_attrs, "puzzles": which,
                                       "require_pv0_top": require_top})
        g = f.require_group("heads")
        g.attrs["hook"] = "blocks.{layer}.attn.hook_z"
        for m in methods:
            float_dataset(g, f"{m}/effect", (n, L, H), ("puzzle", "layer", "head"),
                          **effect_attrs(method=m))
        if "resample" in methods:
            donors = np.full(n, -1, np.int64)
            donors[:limit] = iv.resample_donors(limit, int(ac.seed))
            label_axes(g.create_dataset("resample_donor", data=donors), "puzzle",
                       meaning="row of the puzzle whose clean head outputs are used (any "
                               "of the considered rows; -1 past max_puzzles)")
        if edge_on:
            g = f.require_group("edge")
            g.attrs.update({"layer": layer, "head": head, **edge_attrs,
                            "hook": f"blocks.{layer}.attn.hook_pattern",
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
            if ac.edge.full_sweep:
                float_dataset(g, "sweep", (n, 64, 64), ("puzzle", "query", "key"),
                              renormalized=bool(ac.edge.sweep_renormalize),
                              numbering=TOKEN_NUMBERING,
                              **effect_attrs(meaning="zero one pattern entry"))
        if piece_on:
            g = f.require_group("piece_heads")
            g.attrs.update({"heads": str(lists), "heads_source": heads_source,
                            "min_pv_length": int(ac.piece_heads.min_pv_length),
                            "seed": int(ac.seed),
                            "piece_rule": piece_rule, "random_key": random_key})
            label_axes(write_strings(g, "variant_names", iv.PIECE_VARIANTS), "variant")
            float_dataset(g, "effect", (n, len(iv.PIECE_VARIANTS)), ("puzzle", "variant"),
                          variants=list(iv.PIECE_VARIANTS), **effect_attrs())
            label_axes(g.create_dataset("piece", shape=(n,), dtype=STR), "puzzle",
                       meaning="piece playing PV[2] (knight/bishop/rook; read by "
                               f"piece_rule={piece_rule}); '' = not in the subset")
            label_axes(g.create_dataset("random_key", shape=(n,), dtype="i8",
                                        fillvalue=-1), "puzzle", numbering=TOKEN_NUMBERING,
                       meaning=f"key token of the random_square control (random_key="
                               f"{random_key}); -1 = none")

    layout = in_memory()
    create_layout(layout)
    out_file = ChunkedOutput(path, schema=SCHEMA, config=config, resume=not cfg.force)
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
    for key, s, e in chunks(out_file, limit, int(ac.chunk_size), "ablations"):
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
            if edge_on:
                r = iv.edge_ablation(prep, layer, head, full_sweep=bool(ac.edge.full_sweep),
                                     sweep_renormalize=bool(ac.edge.sweep_renormalize))
                block.put("edge/effect", rows, r.effects)
                block.put("edge/weight", rows, r.weight)
                block.put("edge/rank_in_row", rows, r.rank_in_row)
                block.put("edge/is_head_max", rows, r.is_head_max)
                if r.sweep is not None:
                    block.put("edge/sweep", rows, r.sweep)
            if piece_on:
                r = iv.piece_head_ablation(prep, lists, seed=int(ac.seed),
                                           min_pv_length=int(ac.piece_heads.min_pv_length),
                                           piece_rule=piece_rule, random_key=random_key)
                block.put("piece_heads/effect", rows, r.effects)
                block.put("piece_heads/piece", rows, np.array(r.piece, dtype=object))
                block.put("piece_heads/random_key", rows, r.random_key)
        out_file.commit(key, block.arrays, {"start": s})
    layout.close()

    def finish(f: h5py.File) -> None:
        create_layout(f)
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
        if edge_on:
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
    if ac.figures:
        for fig in figures.ablation_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    return path
