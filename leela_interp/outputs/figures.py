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

Every figure is written three times (:func:`save_figure`): ``NAME.png`` at :data:`DPI` dots
per inch and, beside it, ``NAME.svg`` and ``NAME.pdf`` (vector, for papers). Layer axes have
integer ticks, every series' legend entry gives its n, error bars of different series are
offset along the layer axis so that they do not hide each other, heatmap cells show their mean
and 2-sigma error, and a panel without data says so ("no data") instead of staying empty.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from leela_interp.outputs.results import read_strings  # noqa: E402

EFFECT_LABEL = "effect (log-odds reduction of PV[0];\npositive = intervention reduced it)"
NO_DATA = "no data: no analysed puzzle (see the file's funnel)"
CATEGORY_LABELS = {"first_target": "1st-move target",
                   "follow_up_targets": "follow-up targets PV[2:] (the paper's 3rd-move target)",
                   "third_target": "PV[2]'s target only", "later_targets": "targets of PV[3:]",
                   "corrupted": "corrupted squares", "other": "other squares"}
"""Legend labels of the residual-patching categories (``category_max`` columns)."""
DPI = 200
"""Dots per inch of every PNG figure."""
FORMATS = (".png", ".svg", ".pdf")
"""The files :func:`save_figure` writes for each figure."""


def no_data(ax, text: str = NO_DATA) -> None:
    """Mark an empty panel: ``text`` in its middle instead of empty axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9,
            color="grey")


def n_range(n: np.ndarray) -> str:
    """``"7"`` when every count in ``n`` is 7, else ``"lo–hi"``."""
    lo, hi = int(np.min(n)), int(np.max(n))
    return str(lo) if lo == hi else f"{lo}–{hi}"


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as ``path`` with each suffix of :data:`FORMATS` (PNG at :data:`DPI`);
    returns the PNG's path."""
    path = Path(path)
    for suffix in FORMATS:
        fig.savefig(path.with_suffix(suffix), dpi=DPI)
    return path.with_suffix(".png")


def figure_svg(fig: Figure) -> str:
    """``fig`` as SVG text (for :mod:`leela_interp.outputs.board_figures` and inline HTML)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


def category_by_layer(mean: np.ndarray, err: np.ndarray, categories: list[str], path: Path, *,
                      title: str, n: np.ndarray | None = None) -> Path:
    """Lines of ``mean[layer, category]`` with ``err`` error bars, one per category."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    layers = np.arange(mean.shape[0])
    shown = [c for c in range(len(categories)) if np.isfinite(mean[:, c]).any()]
    for k, c in enumerate(shown):  # offsets keep the error bars apart
        name = categories[c]
        label = CATEGORY_LABELS.get(name, name) + (f" (n={int(np.max(n[..., c]))})"
                                                   if n is not None else "")
        ax.errorbar(layers + 0.07 * (k - (len(shown) - 1) / 2), mean[:, c],
                    yerr=np.nan_to_num(err[:, c]), marker="o", ms=3, capsize=3, label=label)
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
    return save_figure(fig, path)


def head_heatmap_figure(mean: np.ndarray, err: np.ndarray | None = None, *, title: str,
                        label: str = "mean effect (positive = log-odds of PV[0] reduced)"
                        ) -> Figure:
    """Heatmap of ``mean[layer, head]``, symmetric diverging colour scale around 0; with
    ``err``, each cell shows its mean and ``± err`` (cells of NaN means stay blank)."""
    cell = (0.62, 0.42) if err is not None else (0.35, 0.3)
    fig = Figure(figsize=(max(7.0, 1.5 + cell[0] * mean.shape[1]),
                          max(4.0, 1.2 + cell[1] * mean.shape[0])))
    ax = fig.add_subplot()
    finite = mean[np.isfinite(mean)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-vmax or -1, vmax=vmax or 1, aspect="auto",
                   origin="lower")
    if not finite.size:
        no_data(ax)
    elif err is not None:
        for (layer, head), m in np.ndenumerate(mean):
            if np.isfinite(m):
                e = f"\n±{err[layer, head]:.2f}" if np.isfinite(err[layer, head]) else ""
                ax.text(head, layer, f"{m:.2f}{e}", ha="center", va="center", fontsize=6,
                        color="white" if abs(m) > 0.6 * vmax else "black")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(mean.shape[1]))
    ax.set_yticks(np.arange(mean.shape[0]))
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax).set_label(label, fontsize=8)
    fig.tight_layout()
    return fig


def layer_head_heatmap(mean: np.ndarray, path: Path, *, title: str,
                       err: np.ndarray | None = None) -> Path:
    """:func:`head_heatmap_figure` written with :func:`save_figure`."""
    return save_figure(head_heatmap_figure(mean, err, title=title), path)


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
    return save_figure(fig, path)


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
                err=s["effect_err2sigma"][()],
                title=f"{net}: patching each head's output (hook_z) from the corrupted board\n"
                      f"mean ± 2σ over {int(np.max(s['effect_n'][()]))} puzzles"))
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
                    err=s["effect_err2sigma"][()],
                    title=f"{net}: {method}-ablation of each head's output\n"
                          f"mean ± 2σ over {int(np.max(s['effect_n'][()]))} puzzles"))
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
