"""Puzzles vs ordinary positions: the report's comparison of a puzzles run folder with its
control folder (``report.control_dir``, a folder built with ``puzzles.positions=ordinary``).

:func:`comparison` reads the same measures from both folders' files, as the stages wrote them
(means with their 2-sigma error bars and their n; nothing is recomputed): residual patching by
square category and layer (the paper's four categories), the top head-patching effects,
the single-edge ablation's variants (transformers) and the look-ahead probes' test accuracy
by layer; :func:`comparison_figure` draws them, two series per measure. A measure missing in
either folder says so. :func:`check_control` refuses a control made with another network than
the puzzles folder's strong net, or one that is not an ordinary-position set.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from leela_interp.errors import ConfigError
from leela_interp.outputs.figures import EFFECT_LABEL, CATEGORY_LABELS, n_range, no_data, \
    save_figure
from leela_interp.outputs.tables import effect_cell, format_mean, one_table
from leela_interp.outputs.results import is_complete, read_strings

HEADING = "## Puzzles vs ordinary positions"
#: The residual-patching categories compared (the paper's, in its order).
CATEGORIES = ("first_target", "follow_up_targets", "corrupted", "other")
#: The probe compared: the paper's (bilinear, the 3rd move's target), of the net under study.
PROBE = ("model", "bilinear", "target")
#: The comparison figure, in the puzzles folder's ``figures/`` (with ``.svg`` and ``.pdf``).
FIGURE = "control.png"
SERIES = ("puzzles", "ordinary")
_COLOURS = {"puzzles": "tab:blue", "ordinary": "tab:orange"}


def positions(run_dir: str | Path) -> str:
    """What a run folder's ``puzzles.h5`` holds: its ``positions`` attribute (``puzzles`` or
    ``ordinary``; ``puzzles`` for a file written before the attribute existed).

    Raises:
        ConfigError: ``run_dir`` has no complete ``puzzles.h5``.
    """
    path = Path(run_dir) / "puzzles.h5"
    if not is_complete(path):
        raise ConfigError(f"{path} is missing or not complete: build it first (leela-interp "
                          f"stage=puzzles out_dir={Path(run_dir)})")
    with h5py.File(path, "r") as f:
        return str(f.attrs.get("positions", "puzzles"))


def _strong(run_dir: Path) -> str:
    with h5py.File(run_dir / "puzzles.h5", "r") as f:
        return str(f.attrs.get("strong_sha256", ""))


def check_control(run_dir: str | Path, control_dir: str | Path) -> None:
    """Check that ``control_dir`` is an ordinary-position control of the puzzles folder
    ``run_dir``.

    Raises:
        ConfigError: Either folder lacks a complete ``puzzles.h5``; ``run_dir`` is not a
            puzzles set or ``control_dir`` not an ordinary one; or their strong nets differ
            (``strong_sha256``).
    """
    run_dir, control_dir = Path(run_dir), Path(control_dir)
    if positions(run_dir) != "puzzles":
        raise ConfigError(f"report.control_dir compares a puzzles folder with its control, but "
                          f"{run_dir}/puzzles.h5 holds positions={positions(run_dir)!r}: run the "
                          f"report in the puzzles folder")
    kind = positions(control_dir)
    if kind != "ordinary":
        raise ConfigError(f"report.control_dir={str(control_dir)!r}: its puzzles.h5 holds "
                          f"positions={kind!r}; a control is built with "
                          f"puzzles.positions=ordinary")
    mine, theirs = _strong(run_dir), _strong(control_dir)
    if mine != theirs:
        raise ConfigError(f"report.control_dir={str(control_dir)!r} was built with another "
                          f"network (strong_sha256 {theirs[:12]!r}) than {run_dir} "
                          f"({mine[:12]!r}): build the control with the same model.path")


def _open(run_dir: Path, name: str) -> h5py.File | None:
    path = run_dir / name
    return h5py.File(path, "r") if is_complete(path) else None


def residual(f: h5py.File) -> dict[str, dict[str, np.ndarray]]:
    """Per residual site: ``mean``, ``err`` (2 sigma) and ``n``, ``[layer, category]`` over
    :data:`CATEGORIES` (NaN / 0 where the file lacks one), from the ``all`` subset."""
    cats = read_strings(f["category_names"]) if "category_names" in f else []
    out = {}
    for site in f.get("residual", {}):
        base = f"residual/{site}/summary/all/category_max"
        if f"{base}_mean" not in f:
            continue
        columns = {key: f[f"{base}_{suffix}"][()] for key, suffix in
                   (("mean", "mean"), ("err", "err2sigma"), ("n", "n"))}
        layers = columns["mean"].shape[0]
        picked = {key: np.full((layers, len(CATEGORIES)), 0 if key == "n" else np.nan)
                  for key in columns}
        for j, cat in enumerate(CATEGORIES):
            if cat in cats:
                for key in columns:
                    picked[key][:, j] = columns[key][:, cats.index(cat)]
        out[site] = picked
    return out


def heads(f: h5py.File) -> dict[str, np.ndarray] | None:
    """Head patching's ``mean``, ``err`` and ``n`` ``[layer, head]``; None without it."""
    base = "heads/summary/all/effect"
    if f"{base}_mean" not in f:
        return None
    return {"mean": f[f"{base}_mean"][()], "err": f[f"{base}_err2sigma"][()],
            "n": f[f"{base}_n"][()]}


def edge(f: h5py.File) -> dict | None:
    """The single-edge ablation: ``variants``, ``mean``, ``err``, ``n`` and its ``head``
    (``LxHy``); None without it."""
    if "edge/summary/all/effect_mean" not in f:
        return None
    g = f["edge"]
    return {"variants": read_strings(g["variant_names"]), "mean": g["summary/all/effect_mean"][()],
            "err": g["summary/all/effect_err2sigma"][()], "n": g["summary/all/effect_n"][()],
            "head": f"L{g.attrs.get('layer')}H{g.attrs.get('head')}"}


def probe(f: h5py.File) -> dict | None:
    """Test accuracy of :data:`PROBE` on the ``all`` split: ``layers``, ``mean``, ``err``
    (2 sigma, the file's formula), ``n_test`` (test positions per seed, a range) and
    ``baselines`` (name -> (mean, err) of each no-activation baseline for that target); None
    when the file lacks that net, probe, target or split."""
    names = {axis: read_strings(f[axis]) for axis in ("net", "probe", "target", "split")}
    net, which, target = PROBE
    if net not in names["net"] or which not in names["probe"] or \
            target not in names["target"] or "all" not in names["split"]:
        return None
    index = (names["net"].index(net), names["split"].index("all"), names["probe"].index(which),
             names["target"].index(target))
    baselines = {}
    if "baseline_mean" in f:
        for k, name in enumerate(read_strings(f["baseline"])):
            baselines[name] = (float(f["baseline_mean"][index[1], k, index[3]]),
                               float(f["baseline_err"][index[1], k, index[3]]))
    return {"layers": [int(v) for v in f["layer"][()]], "mean": f["accuracy_mean"][index],
            "err": f["accuracy_err"][index],
            "n_test": n_range(f["n_test"][index[1], index[3]]), "baselines": baselines}


def _measures(run_dir: Path) -> dict:
    """Every measure of one folder (None where its file or dataset is missing) and its n."""
    out: dict = {"residual": {}, "heads": None, "edge": None, "probe": None}
    with h5py.File(run_dir / "puzzles.h5", "r") as f:
        out["positions"] = int(f["puzzles/id"].shape[0])
    if (f := _open(run_dir, "patching.h5")) is not None:
        with f:
            out["residual"], out["heads"] = residual(f), heads(f)
            if "analysed" in f:
                out["analysed"] = int(f["analysed"][()].sum())
    if (f := _open(run_dir, "ablations.h5")) is not None:
        with f:
            out["edge"] = edge(f)
    if (f := _open(run_dir, "probes.h5")) is not None:
        with f:
            out["probe"] = probe(f)
    return out


def _missing(name: str, a, b) -> list[str]:
    which = [s for s, m in zip(SERIES, (a, b)) if m is None]
    where = "either folder" if len(which) == 2 else f"the {which[0]} folder" if which else ""
    return [f"\n{name}: not in {where} (that stage did not run or the network has none)."] \
        if which else []


def comparison(run_dir: str | Path, control_dir: str | Path) -> list:
    """The report's section: markdown lines and tables comparing ``run_dir`` (puzzles) with
    ``control_dir`` (ordinary positions), and the figure :func:`comparison_figure` writes.

    Raises:
        ConfigError: :func:`check_control` refuses the pair.
    """
    run_dir, control_dir = Path(run_dir), Path(control_dir)
    check_control(run_dir, control_dir)
    a, b = _measures(run_dir), _measures(control_dir)
    out: list = [HEADING, "",
                 f"This folder's puzzles against the ordinary positions of `{control_dir}` "
                 "(`puzzles.positions=ordinary`: each row's game position with the strong net's "
                 "own move in place of the blunder, and the net's greedy line; docs/puzzles.md), "
                 "the same measures read from both folders' files: mean ± 2σ and each n.", ""]
    out += one_table(["", "puzzles", "ordinary"],
                  [["positions in puzzles.h5", a["positions"], b["positions"]],
                   ["analysed by patching", a.get("analysed", "n/a"), b.get("analysed", "n/a")]])
    for site in [s for s in a["residual"] if s in b["residual"]]:
        ra, rb = a["residual"][site], b["residual"][site]
        layers = min(len(ra["mean"]), len(rb["mean"]))
        out += ["", f"Residual patching at `{site}`: max log-odds reduction per square category "
                "(`follow_up_targets` is the paper's 3rd-move target), by layer:", ""]
        header = ["layer"] + [f"{c} ({s})" for c in CATEGORIES for s in SERIES]
        rows = [[layer] + [_at(r, layer, j) for j in range(len(CATEGORIES)) for r in (ra, rb)]
                for layer in range(layers)]
        out += one_table(header, rows)
        t = CATEGORIES.index("follow_up_targets")
        if np.isfinite(ra["mean"][:layers, t]).any():
            best = int(np.nanargmax(ra["mean"][:layers, t]))
            o = CATEGORIES.index("other")
            out.append(f"\nAt the puzzles' best follow-up layer ({best}): follow-up targets "
                       f"{_at(ra, best, t)} vs other squares {_at(ra, best, o)} on puzzles; "
                       f"{_at(rb, best, t)} vs {_at(rb, best, o)} on ordinary positions.")
    if not (set(a["residual"]) & set(b["residual"])):
        out += _missing("Residual patching", a["residual"] or None, b["residual"] or None)
    if a["heads"] is not None and b["heads"] is not None:
        ha, hb = a["heads"], b["heads"]
        width = ha["mean"].shape[1]
        top = []
        for h in (ha, hb):
            flat = np.where(np.isfinite(h["mean"]), h["mean"], -np.inf).ravel()
            top += [int(i) for i in np.argsort(-flat, kind="stable")[:5] if np.isfinite(flat[i])]
        rows = [[f"L{i // width}H{i % width}"] + [effect_cell(h["mean"].flat[i], h["err"].flat[i],
                                                        int(h["n"].flat[i])) for h in (ha, hb)]
                for i in dict.fromkeys(top)]
        out += ["", "Head patching: the top 5 heads of each folder, their effect in both:", ""]
        out += one_table(["head", "puzzles", "ordinary"], rows)
    else:
        out += _missing("Head patching", a["heads"], b["heads"])
    if a["edge"] is not None and b["edge"] is not None:
        ea, eb = a["edge"], b["edge"]
        out += ["", f"Single-edge ablation (query = 1st-move target, key = 3rd-move target), head "
                f"{ea['head']} on puzzles, {eb['head']} on ordinary positions:", ""]
        rows = [[v] + [effect_cell(e["mean"][e["variants"].index(v)],
                                   e["err"][e["variants"].index(v)],
                                   int(e["n"][e["variants"].index(v)])) for e in (ea, eb)]
                for v in ea["variants"] if v in eb["variants"]]
        out += one_table(["variant", "puzzles", "ordinary"], rows)
        if ea["head"] != eb["head"]:
            layer, head = ea["head"][1:].split("H")
            out.append(f"\nThe folders' top heads differ: to ablate the same edge head in the "
                       f"control, rerun its ablations with `ablations.edge.layer={layer} "
                       f"ablations.edge.head={head}`.")
    else:
        out += _missing("Single-edge ablation", a["edge"], b["edge"])
    if a["probe"] is not None and b["probe"] is not None:
        pa, pb = a["probe"], b["probe"]
        out += ["", f"Look-ahead probe ({PROBE[1]}, target `{PROBE[2]}`, split `all`, the net "
                f"under study): test accuracy by layer; test positions per seed "
                f"{pa['n_test']} (puzzles) and {pb['n_test']} (ordinary):", ""]
        rows = [[layer] + [_fmt_acc(p, layer) for p in (pa, pb)] for layer in pa["layers"]]
        rows += [[f"baseline `{name}` (no activations)"] + [
            "n/a" if name not in p["baselines"] else format_mean(*p["baselines"][name])
            for p in (pa, pb)] for name in pa["baselines"]]
        out += one_table(["layer", "puzzles", "ordinary"], rows)
    else:
        out += _missing("Probes", a["probe"], b["probe"])
    path = comparison_figure(a, b, run_dir / "figures" / FIGURE)
    out += ["", f"![puzzles vs ordinary positions](figures/{path.name})", ""]
    return out


def _at(r: dict, layer: int, j: int) -> str:
    """The cell of :func:`residual`'s ``r`` at ``layer`` and category ``j``."""
    return effect_cell(r["mean"][layer, j], r["err"][layer, j], int(r["n"][layer, j]))


def _fmt_acc(p: dict, layer: int) -> str:
    if layer not in p["layers"]:
        return "n/a"
    i = p["layers"].index(layer)
    return format_mean(p["mean"][i], p["err"][i])


def comparison_figure(a: dict, b: dict, path: Path) -> Path:
    """Write the comparison figure (``path`` as PNG, SVG and PDF): a panel per residual
    category (puzzles and ordinary by layer, 2-sigma bars), the probe's accuracy by layer, the
    heads of the head-patching table and the single-edge variants (two bars each); a panel
    without data in either folder says so. ``a``, ``b``: :func:`_measures` of the folders."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 7.5), layout="constrained")
    axes = fig.subplots(2, 4)
    site = next((s for s in a["residual"] if s in b["residual"]), None)
    for j, cat in enumerate(CATEGORIES):
        ax = axes[0, j]
        ax.set_title(f"residual {site or ''}: {CATEGORY_LABELS.get(cat, cat)}", fontsize=8)
        if site is None:
            no_data(ax)
            continue
        for k, (name, m) in enumerate(zip(SERIES, (a, b))):
            r = m["residual"][site]
            x = np.arange(len(r["mean"])) + (k - 0.5) * 0.1
            ax.errorbar(x, r["mean"][:, j], yerr=r["err"][:, j], marker="o", capsize=3,
                        color=_COLOURS[name], label=f"{name} (n={n_range(r['n'][:, j])})")
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
        if j == 0:
            ax.set_ylabel(EFFECT_LABEL, fontsize=8)
    ax = axes[1, 0]
    ax.set_title(f"probe {PROBE[1]} / {PROBE[2]} (split all)", fontsize=8)
    if a["probe"] is None or b["probe"] is None:
        no_data(ax, "no data: no probes.h5 in one folder")
    else:
        for k, (name, m) in enumerate(zip(SERIES, (a, b))):
            p = m["probe"]
            ax.errorbar(np.asarray(p["layers"]) + (k - 0.5) * 0.1, p["mean"], yerr=p["err"],
                        marker="o", capsize=3, color=_COLOURS[name],
                        label=f"{name} (test n={p['n_test']})")
            if "condition" in p["baselines"]:
                ax.axhline(p["baselines"]["condition"][0], color=_COLOURS[name], ls="--",
                           lw=1, label=f"{name}: baseline condition (no activations)")
        ax.set_xlabel("layer")
        ax.set_ylabel("test accuracy")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    _bars(axes[1, 1], "head patching (the puzzles' top 5 heads)",
          *_head_bars(a["heads"], b["heads"]))
    heads = " / ".join(e["head"] for e in (a["edge"], b["edge"]) if e is not None)
    _bars(axes[1, 2], f"single-edge ablation ({heads})", *_edge_bars(a["edge"], b["edge"]))
    axes[1, 3].axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


def _head_bars(ha, hb):
    if ha is None or hb is None:
        return [], []
    width = ha["mean"].shape[1]
    flat = np.where(np.isfinite(ha["mean"]), ha["mean"], -np.inf).ravel()
    top = [int(i) for i in np.argsort(-flat, kind="stable")[:5] if np.isfinite(flat[i])]
    return [f"L{i // width}H{i % width}" for i in top], \
        [(h["mean"].ravel()[top], h["err"].ravel()[top]) for h in (ha, hb)]


def _edge_bars(ea, eb):
    if ea is None or eb is None:
        return [], []
    names = [v for v in ea["variants"] if v in eb["variants"]]
    return names, [(np.array([e["mean"][e["variants"].index(v)] for v in names]),
                    np.array([e["err"][e["variants"].index(v)] for v in names])) for e in (ea, eb)]


def _bars(ax, title: str, labels: list[str], series: list) -> None:
    ax.set_title(title, fontsize=8)
    if not labels:
        no_data(ax, "no data: not in one folder (a CNN has no heads)")
        return
    x = np.arange(len(labels))
    for k, (name, (mean, err)) in enumerate(zip(SERIES, series)):
        ax.bar(x + (k - 0.5) * 0.38, mean, 0.38, yerr=err, capsize=3, color=_COLOURS[name],
               label=name)
    ax.set_xticks(x, labels, fontsize=7, rotation=30)
    ax.set_ylabel(EFFECT_LABEL, fontsize=8)
    ax.legend(fontsize=7)
