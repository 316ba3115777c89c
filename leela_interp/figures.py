"""PNG figures of the patching and ablation results (matplotlib, Agg; no display needed).

Each function reads a finished result file and writes PNGs into a folder, returning their
paths. Every effect axis is labelled with the sign convention: positive = the intervention
reduced the log-odds of the clean top move PV[0].

- :func:`patching_figures`: ``patching_{site}.png`` (effect by layer per square category, mean
  with 2-sigma error bars) for each patched residual site, and ``patching_heads.png`` (layer x
  head heatmap of the mean effect) for transformers.
- :func:`ablation_figures`: ``ablations_heads_{method}.png`` heatmaps,
  ``ablations_edge.png`` (percentile curves of the single-edge ablation vs its control) and
  ``ablations_piece_heads.png`` (percentile curves of the piece-movement-head ablation vs its
  two controls).

Layer axes have integer ticks; a panel without data says so ("no data") instead of staying
empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from leela_interp.results import read_strings  # noqa: E402

EFFECT_LABEL = "effect (log-odds reduction of PV[0];\npositive = intervention reduced it)"
NO_DATA = "no data: no analysed puzzle (see the file's funnel)"
CATEGORY_LABELS = {"first_target": "1st-move target",
                   "follow_up_targets": "follow-up targets PV[2:] (the paper's 3rd-move target)",
                   "third_target": "PV[2]'s target only", "later_targets": "targets of PV[3:]",
                   "corrupted": "corrupted squares", "other": "other squares"}
"""Legend labels of the residual-patching categories (``category_max`` columns)."""


def no_data(ax, text: str = NO_DATA) -> None:
    """Mark an empty panel: ``text`` in its middle instead of empty axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9,
            color="grey")


def category_by_layer(mean: np.ndarray, err: np.ndarray, categories: list[str], path: Path, *,
                      title: str, n: np.ndarray | None = None) -> Path:
    """Lines of ``mean[layer, category]`` with ``err`` error bars, one per category."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    layers = np.arange(mean.shape[0])
    for c, name in enumerate(categories):
        if not np.isfinite(mean[:, c]).any():
            continue
        label = CATEGORY_LABELS.get(name, name) + (f" (n={int(np.max(n[..., c]))})"
                                                   if n is not None else "")
        ax.errorbar(layers, mean[:, c], yerr=np.nan_to_num(err[:, c]), marker="o", ms=3,
                    capsize=3, label=label)
    ax.set_xlabel("layer")
    ax.set_xticks(layers)
    ax.set_ylabel(EFFECT_LABEL)
    ax.set_title(title, fontsize=10)
    if np.isfinite(mean).any():
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    else:
        no_data(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def layer_head_heatmap(mean: np.ndarray, path: Path, *, title: str) -> Path:
    """Heatmap of ``mean[layer, head]``, symmetric diverging colour scale around 0."""
    fig = Figure(figsize=(max(7.0, 1.5 + 0.35 * mean.shape[1]),
                          max(4.0, 1.2 + 0.3 * mean.shape[0])))
    ax = fig.add_subplot()
    finite = mean[np.isfinite(mean)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-vmax or -1, vmax=vmax or 1, aspect="auto",
                   origin="lower")
    if not finite.size:
        no_data(ax)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(mean.shape[1]))
    ax.set_yticks(np.arange(mean.shape[0]))
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax).set_label("mean effect (positive = log-odds of PV[0] reduced)",
                                      fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def percentile_curves(series: Mapping[str, np.ndarray], path: Path, *, title: str,
                      zoom: float = 90.0) -> Path:
    """Effect at each percentile (sorted values) for each series; right panel zooms on the
    top ``100 - zoom`` percent (the paper plotted above the 94th percentile)."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for name, values in series.items():
        v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
        if v.size == 0:
            continue
        pct = 100.0 * (np.arange(v.size) + 0.5) / v.size
        for ax in axes:
            ax.plot(pct, v, label=f"{name} (n={v.size})")
    axes[1].set_xlim(zoom, 100)
    empty = not any(np.isfinite(np.asarray(v, dtype=np.float64)).any() for v in series.values())
    top = [np.sort(v[np.isfinite(v)])[int(np.floor(zoom / 100 * np.isfinite(v).sum())):]
           for v in map(np.asarray, series.values())]
    top = np.concatenate([t for t in top if t.size] or [np.zeros(1)])
    pad = 0.05 * (float(top.max() - top.min()) or 1.0)
    axes[1].set_ylim(float(top.min()) - pad, float(top.max()) + pad)
    for ax, sub in zip(axes, ("all puzzles", f"above the {zoom:g}th percentile")):
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("percentile of puzzles")
        ax.set_title(sub, fontsize=9)
        if empty:
            no_data(ax)
    axes[0].set_ylabel(EFFECT_LABEL)
    if not empty:
        axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def patching_figures(h5_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Figures of a finished ``patching.h5``; see the module docstring for the names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with h5py.File(h5_path, "r") as f:
        net = Path(str(f.attrs.get("network_path", ""))).name
        cats = read_strings(f["category_names"])
        for site in f.get("residual", {}):
            s = f[f"residual/{site}/summary/all"]
            written.append(category_by_layer(
                s["category_max_mean"][()], s["category_max_err2sigma"][()], cats,
                out_dir / f"patching_{site}.png", n=s["category_max_n"][()],
                title=f"{net}: patching {site} from the corrupted board\n"
                      f"max effect over each square category, mean ± 2σ"))
        if "heads" in f:
            s = f["heads/summary/all"]
            written.append(layer_head_heatmap(
                s["effect_mean"][()], out_dir / "patching_heads.png",
                title=f"{net}: patching each head's output (hook_z) from the corrupted board\n"
                      f"mean effect over {int(np.max(s['effect_n'][()]))} puzzles"))
    return written


def ablation_figures(h5_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Figures of a finished ``ablations.h5`` (none for a net without heads)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with h5py.File(h5_path, "r") as f:
        if "heads" not in f:
            return written
        net = Path(str(f.attrs.get("network_path", ""))).name
        for method in ("zero", "mean", "resample"):
            if f"heads/{method}/summary/all" in f:
                s = f[f"heads/{method}/summary/all"]
                written.append(layer_head_heatmap(
                    s["effect_mean"][()], out_dir / f"ablations_heads_{method}.png",
                    title=f"{net}: {method}-ablation of each head's output\n"
                          f"mean effect over {int(np.max(s['effect_n'][()]))} puzzles"))
        if "edge" in f:
            g = f["edge"]
            eff = g["effect"][()]
            names = read_strings(g["variant_names"])
            label = {"edge": "zero the edge", "edge_renorm": "zero the edge, renormalise",
                     "others": "control: zero all other entries",
                     "others_renorm": "control: zero all others, renormalise"}
            written.append(percentile_curves(
                {label.get(v, v): eff[:, i] for i, v in enumerate(names)},
                out_dir / "ablations_edge.png",
                title=f"{net}: L{g.attrs['layer']}H{g.attrs['head']} single-edge ablation "
                      "(query = 1st-move target, key = 3rd-move target) vs control"))
        if "piece_heads" in f:
            g = f["piece_heads"]
            eff = g["effect"][()]
            names = read_strings(g["variant_names"])
            label = {"main": "piece's heads, key = 3rd-move target",
                     "other_types": "control: other piece types' heads",
                     "random_square": "control: random key square"}
            written.append(percentile_curves(
                {label.get(v, v): eff[:, i] for i, v in enumerate(names)},
                out_dir / "ablations_piece_heads.png",
                title=f"{net}: piece-movement heads, attention into the 3rd-move target "
                      "ablated (except from its source)"))
    return written
