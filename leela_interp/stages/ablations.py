"""``stage=ablations``: head ablations (zero / mean / resample), single-edge ablation of one
(layer, head), and piece-movement-head ablations, on the clean boards.

Reads ``<out_dir>/puzzles.h5``, writes ``<out_dir>/ablations.h5`` and PNG figures under
``<out_dir>/figures/`` (layout and conventions: ``docs/interventions.md``). A network without
attention heads (a CNN) gets a complete file that says so and no figures. Resumable by chunks;
skipped when complete for the same network, puzzle set and ``ablations`` config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from leela_interp import interventions as iv
from leela_interp.errors import ConfigError
from leela_interp.puzzle_set import PuzzleSet
from leela_interp.results import STR, label_axes, open_partial, write_strings
from leela_interp.stages.common import run_dir, up_to_date
from leela_interp.stages.patching import (chunks, effect_attrs, float_dataset, load_model,
                                          puzzles_input, stage_config, subset_masks,
                                          write_common, write_summary)

log = logging.getLogger(__name__)

OUTPUT = "ablations.h5"
SCHEMA = "leela_interp.ablations/1"


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


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/ablations.h5`` (or skip it when up to date) and its figures."""
    from leela_interp import figures

    ac = cfg.ablations
    methods = _methods(ac.method)
    puzzles_path = puzzles_input(cfg)
    out = run_dir(cfg)
    path = out / OUTPUT
    config = stage_config(cfg, "ablations", puzzles_path)
    if up_to_date(path, config, bool(cfg.force)):
        if ac.figures:
            figures.ablation_figures(path, out / "figures")
        return path
    net = load_model(cfg)
    if net.config.body != "transformer" or net.config.n_heads == 0:
        note = (f"not run: {cfg.model.path} has no attention heads ({net.config.body} body); "
                f"head, edge and piece-movement-head ablations need a transformer")
        log.warning("ablations: %s", note)
        with open_partial(path, schema=SCHEMA, config=config, resume=False) as f:
            f.attrs.update({"note": note, "network_sha256": net.sha256,
                            "body": net.config.body, "metric": iv.METRIC, "sign": iv.SIGN})
        return path
    puzzles = PuzzleSet.load(puzzles_path)
    n = len(puzzles) if ac.max_puzzles is None else min(len(puzzles), int(ac.max_puzzles))
    L, H = net.config.n_layers, net.config.n_heads
    bs = int(cfg.model.batch_size)
    edge_on = bool(ac.edge.enabled)
    if edge_on:
        layer, head = iv.resolve_head(net, int(ac.edge.layer), int(ac.edge.head),
                                      clamp=bool(ac.edge.clamp))
    lists = iv.check_head_lists(net, _head_lists(ac))
    piece_on = any(lists.values())
    if not piece_on:
        log.info("ablations: no piece-movement head lists configured "
                 "(ablations.piece_heads.heads); that part is skipped")

    with open_partial(path, schema=SCHEMA, config=config, resume=not cfg.force) as f:
        if "done" not in f:
            write_common(f, net, puzzles, n)
            g = f.require_group("heads")
            g.attrs["hook"] = "blocks.{layer}.attn.hook_z"
            for m in methods:
                float_dataset(g, f"{m}/effect", (n, L, H), ("puzzle", "layer", "head"),
                              **effect_attrs(method=m))
            if "resample" in methods:
                label_axes(g.create_dataset("resample_donor",
                                            data=iv.resample_donors(n, int(ac.seed))), "puzzle",
                           meaning="index of the puzzle whose clean head outputs are used")
            if edge_on:
                g = f.require_group("edge")
                g.attrs.update({"layer": layer, "head": head,
                                "requested_layer": int(ac.edge.layer),
                                "requested_head": int(ac.edge.head),
                                "hook": f"blocks.{layer}.attn.hook_pattern",
                                "query": "1st-move target (PV[0].to_square) token",
                                "key": "3rd-move target (PV[2].to_square) token"})
                write_strings(g, "variant_names", iv.EDGE_VARIANTS)
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
                                  **effect_attrs(meaning="zero one pattern entry"))
            if piece_on:
                g = f.require_group("piece_heads")
                g.attrs.update({"heads": str(lists), "min_pv_length":
                                int(ac.piece_heads.min_pv_length), "seed": int(ac.seed)})
                write_strings(g, "variant_names", iv.PIECE_VARIANTS)
                float_dataset(g, "effect", (n, len(iv.PIECE_VARIANTS)), ("puzzle", "variant"),
                              variants=list(iv.PIECE_VARIANTS), **effect_attrs())
                label_axes(g.create_dataset("piece", shape=(n,), dtype=STR), "puzzle",
                           meaning="piece playing PV[2] (knight/bishop/rook); '' = not in "
                                   "the subset")
                label_axes(g.create_dataset("random_key", shape=(n,), dtype="i8",
                                            fillvalue=-1), "puzzle",
                           meaning="key token of the random_square control")

        mean_z = None
        if "mean" in methods:
            if "heads/mean_z" not in f:
                acc = iv.MeanHeadOutputs()
                step = min(bs, 64)  # every head's output of 64 boards at a time
                for s in tqdm(range(0, n, step), desc="ablations: mean head outputs",
                              unit="chunk", disable=None):
                    acc.add(iv.head_outputs(net, [puzzles.clean_board(i)
                                                  for i in range(s, min(s + step, n))],
                                            batch_size=step))
                label_axes(f.create_dataset("heads/mean_z", data=acc.mean.float().numpy()),
                           "layer", "head", "square", "d_head",
                           meaning=f"mean hook_z over the {n} clean boards")
            mean_z = torch.from_numpy(f["heads/mean_z"][()])
        donors = f["heads/resample_donor"][()] if "resample" in methods else None
        for s, e in chunks(f, n, int(ac.chunk_size), "ablations"):
            prep = iv.prepare(net, [iv.Puzzle.from_set(puzzles, i) for i in range(s, e)],
                              batch_size=bs, clean_hooks=["blocks.*.hook_resid_pre"])
            f["clean_log_odds"][s:e] = prep.clean_log_odds
            f["clean_top_is_pv0"][s:e] = prep.clean_top_is_pv0
            for m in methods:
                donor_z = None
                if m == "resample":
                    if n < 2:
                        continue
                    donor_z = iv.head_outputs(net, [puzzles.clean_board(int(j))
                                                    for j in donors[s:e]], batch_size=bs)
                f[f"heads/{m}/effect"][s:e] = iv.head_ablation(prep, m, mean_z=mean_z,
                                                               donor_z=donor_z)
            if edge_on:
                r = iv.edge_ablation(prep, layer, head, full_sweep=bool(ac.edge.full_sweep),
                                     sweep_renormalize=bool(ac.edge.sweep_renormalize))
                f["edge/effect"][s:e] = r.effects
                f["edge/weight"][s:e] = r.weight
                f["edge/rank_in_row"][s:e] = r.rank_in_row
                f["edge/is_head_max"][s:e] = r.is_head_max
                if r.sweep is not None:
                    f["edge/sweep"][s:e] = r.sweep
            if piece_on:
                r = iv.piece_head_ablation(prep, lists, seed=int(ac.seed),
                                           min_pv_length=int(ac.piece_heads.min_pv_length))
                f["piece_heads/effect"][s:e] = r.effects
                f["piece_heads/piece"][s:e] = np.array(r.piece, dtype=object)
                f["piece_heads/random_key"][s:e] = r.random_key
            f["done"][s:e] = True
            f.flush()
        subsets = subset_masks(f)
        everyone = np.ones(n, bool)
        for m in methods:
            write_summary(f[f"heads/{m}"], "effect", f[f"heads/{m}/effect"][()], everyone,
                          subsets, ("layer", "head"), **effect_attrs(method=m))
        if edge_on:
            write_summary(f["edge"], "effect", f["edge/effect"][()], everyone, subsets,
                          ("variant",), variants=list(iv.EDGE_VARIANTS), **effect_attrs())
        if piece_on:
            write_summary(f["piece_heads"], "effect", f["piece_heads/effect"][()], everyone,
                          subsets, ("variant",), variants=list(iv.PIECE_VARIANTS),
                          **effect_attrs())
    log.info("wrote %s", path)
    if ac.figures:
        for fig in figures.ablation_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    return path
