"""``stage=patching``: activation patching from the corrupted board (residual stream and heads).

Reads ``<out_dir>/puzzles.h5``, writes ``<out_dir>/patching.h5`` and PNG figures under
``<out_dir>/figures/``. The work is :mod:`leela_interp.interventions`; the file layout, sign
convention and square categories are in ``docs/interventions.md``. Resumable by chunks of
puzzles; skipped when complete for the same network, puzzle set and ``patching`` config;
``force=true`` redoes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from leela_interp import interventions as iv
from leela_interp.errors import ConfigError
from leela_interp.lc0.weights import sha256_file
from leela_interp.model import load_network
from leela_interp.puzzle_set import PuzzleSet
from leela_interp.results import STR, label_axes, open_partial, write_strings
from leela_interp.stages.common import run_dir, up_to_date

log = logging.getLogger(__name__)

OUTPUT = "patching.h5"
SCHEMA = "leela_interp.patching/1"
SUBSETS = ("all", "different_targets", "same_targets")
"""Puzzle subsets every summary is computed for (the paper splits on ``different_targets``)."""


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
    device = cfg.model.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_network(cfg.model.path, policy_head=cfg.model.policy_head,
                        value_head=cfg.model.value_head, device=device, dtype=cfg.model.dtype)


def float_dataset(group: h5py.Group, name: str, shape: tuple[int, ...], dims: tuple[str, ...],
                  dtype: str = "f4", **attrs) -> h5py.Dataset:
    """A NaN-filled dataset chunked along its first (puzzle) axis, with named axes and attrs."""
    chunks = (min(shape[0], 64),) + tuple(shape[1:]) if shape and shape[0] else None
    ds = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks,
                              fillvalue=np.nan if dtype.startswith("f") else 0)
    return label_axes(ds, *dims, **attrs)


def effect_attrs(**extra) -> dict:
    return {"metric": iv.METRIC, "sign": iv.SIGN, "units": "log-odds", **extra}


def write_common(f: h5py.File, net, puzzles: PuzzleSet, n: int) -> None:
    """Root attributes and per-puzzle datasets both stages share (written once per file)."""
    f.attrs.update({"network_sha256": net.sha256, "network_path": net.path,
                    "body": net.config.body, "n_layers": net.config.n_layers,
                    "n_heads": net.config.n_heads, "metric": iv.METRIC, "sign": iv.SIGN})
    label_axes(write_strings(f, "puzzle_id", puzzles.ids[:n]), "puzzle")
    label_axes(f.create_dataset("different_targets", data=puzzles.different_targets[:n]),
               "puzzle")
    label_axes(f.create_dataset("done", shape=(n,), dtype=bool), "puzzle",
               meaning="the puzzle's chunk is written (resume skips it)")
    float_dataset(f, "clean_log_odds", (n,), ("puzzle",), dtype="f8",
                  metric=iv.METRIC, units="log-odds")
    label_axes(f.create_dataset("clean_top_is_pv0", shape=(n,), dtype=bool), "puzzle",
               meaning="the network's own top legal move on the clean board is PV[0]")


def chunks(f: h5py.File, n: int, size: int, desc: str):
    """``(start, stop)`` of each chunk not yet done, with a progress bar."""
    done = f["done"][()]
    todo = [(s, min(s + size, n)) for s in range(0, n, size) if not done[s:min(s + size, n)].all()]
    if len(todo) < -(-n // size):
        log.info("%s: resuming, %d of %d chunks left", desc, len(todo), -(-n // size))
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


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/patching.h5`` (or skip it when up to date) and its figures."""
    from leela_interp import figures

    pc = cfg.patching
    sites = list(pc.sites) if OmegaConf.is_list(pc.sites) else [pc.sites]
    for site in sites:
        if site not in iv.RESIDUAL_SITES:
            raise ConfigError(f"patching.sites: unknown site {site!r}; choose from "
                              f"{list(iv.RESIDUAL_SITES)}")
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
    puzzles = PuzzleSet.load(puzzles_path)
    n = len(puzzles) if pc.max_puzzles is None else min(len(puzzles), int(pc.max_puzzles))
    L, H = net.config.n_layers, net.config.n_heads
    C = len(iv.CATEGORIES)
    clean_hooks = [f"blocks.*.hook_{s}" for s in sites] + ["blocks.*.hook_resid_pre"]
    corrupted_hooks = [f"blocks.*.hook_{s}" for s in sites]
    if heads:
        clean_hooks.append("blocks.*.attn.hook_z")
        corrupted_hooks.append("blocks.*.attn.hook_z")

    with open_partial(path, schema=SCHEMA, config=config, resume=not cfg.force) as f:
        if "done" not in f:
            write_common(f, net, puzzles, n)
            f.attrs["heads"] = ("head patching of every (layer, head)'s hook_z" if heads else
                                f"not run: the network has no attention heads "
                                f"({net.config.body} body)" if not has_heads else
                                "not run: patching.heads=false")
            write_strings(f, "category_names", iv.CATEGORIES)
            float_dataset(f, "corrupted_log_odds", (n,), ("puzzle",), dtype="f8",
                          metric=iv.METRIC, units="log-odds")
            float_dataset(f, "corruption_effect", (n,), ("puzzle",),
                          **effect_attrs(meaning="the whole corrupted board instead of the "
                                                 "clean one"))
            label_axes(f.create_dataset("ok", shape=(n,), dtype=bool), "puzzle",
                       meaning="has a usable corrupted board (else every effect is NaN)")
            label_axes(f.create_dataset("skip_reason", shape=(n,), dtype=STR), "puzzle")
            label_axes(f.create_dataset("overlap", shape=(n,), dtype=bool), "puzzle",
                       meaning="corrupted squares include the 1st/3rd target, or the 1st and "
                               "3rd targets coincide: left out of the category means")
            label_axes(f.create_dataset("square_category", shape=(n, 64), dtype="i1"),
                       "puzzle", "square", categories=list(iv.CATEGORIES),
                       meaning="index into category_names; squares are clean-board tokens")
            for site in sites:
                g = f.require_group(f"residual/{site}")
                g.attrs["hook"] = f"blocks.{{layer}}.hook_{site}"
                float_dataset(g, "effect", (n, L, 64), ("puzzle", "layer", "square"),
                              **effect_attrs())
                float_dataset(g, "category_max", (n, L, C), ("puzzle", "layer", "category"),
                              categories=list(iv.CATEGORIES),
                              **effect_attrs(meaning="max effect over the category's squares; "
                                                     "NaN if the category is empty"))
            if heads:
                g = f.require_group("heads")
                g.attrs["hook"] = "blocks.{layer}.attn.hook_z"
                float_dataset(g, "effect", (n, L, H), ("puzzle", "layer", "head"),
                              **effect_attrs())
        for s, e in chunks(f, n, int(pc.chunk_size), "patching"):
            prep = iv.prepare(net, [iv.Puzzle.from_set(puzzles, i) for i in range(s, e)],
                              batch_size=int(cfg.model.batch_size), clean_hooks=clean_hooks,
                              corrupted_hooks=corrupted_hooks)
            f["clean_log_odds"][s:e] = prep.clean_log_odds
            f["corrupted_log_odds"][s:e] = prep.corrupted_log_odds
            f["corruption_effect"][s:e] = prep.clean_log_odds - prep.corrupted_log_odds
            f["clean_top_is_pv0"][s:e] = prep.clean_top_is_pv0
            f["ok"][s:e] = prep.corrupted_ok
            f["skip_reason"][s:e] = np.array(prep.skip_reason, dtype=object)
            f["overlap"][s:e] = prep.overlap
            f["square_category"][s:e] = prep.categories
            for site in sites:
                eff = iv.residual_patching(prep, site=site, skip_identical=pc.skip_identical)
                f[f"residual/{site}/effect"][s:e] = eff
                f[f"residual/{site}/category_max"][s:e] = iv.category_max(eff, prep.categories)
            if heads:
                f["heads/effect"][s:e] = iv.head_patching(prep, skip_identical=pc.skip_identical)
            f["done"][s:e] = True
            f.flush()
        ok = f["ok"][()]
        subsets = subset_masks(f)
        for site in sites:
            g = f[f"residual/{site}"]
            write_summary(g, "category_max", g["category_max"][()], ok & ~f["overlap"][()],
                          subsets, ("layer", "category"), categories=list(iv.CATEGORIES),
                          **effect_attrs(meaning="over puzzles with ok and not overlap"))
        if heads:
            write_summary(f["heads"], "effect", f["heads/effect"][()], ok, subsets,
                          ("layer", "head"), **effect_attrs(meaning="over puzzles with ok"))
        log.info("patching: %d puzzles, %d with a usable corrupted board, %d without overlap",
                 n, int(ok.sum()), int((ok & ~f["overlap"][()]).sum()))
    log.info("wrote %s", path)
    if pc.figures:
        for fig in figures.patching_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    return path
