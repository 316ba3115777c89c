"""A markdown summary of a run folder: puzzle counts, key effects with error bars, probe curves.

:func:`write_report` reads whichever stage outputs exist in the run folder (``puzzles.h5``,
``activations.h5``, ``patching.h5``, ``ablations.h5``, ``probes.h5``, ``figures/*.png``) with
plain h5py and writes ``report.md`` next to them. A stage that has not run gets a line saying
so. Every number carries its unit or sign convention, copied from the file's attributes.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from leela_interp.results import is_complete


def _fmt(mean: float, err: float | None = None, digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    if err is None or not np.isfinite(err):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {err:.{digits}f}"


def _names(dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in dataset[()]]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _puzzles(path: Path) -> list[str]:
    out = ["## Puzzles (`puzzles.h5`)", ""]
    with h5py.File(path, "r") as f:
        for key in ("source", "strong_sha256", "weak_sha256"):
            if key in f.attrs:
                out.append(f"- {key}: `{f.attrs[key]}`")
        if "counts/filters" in f:
            funnel = dict(f["counts/filters"].attrs)
            out += ["", "Puzzles passing each filter and every one before it:", ""]
            out += _table(["step", "puzzles"], [[k, int(v)] for k, v in funnel.items()])
        if "counts/rejected" in f:
            rejected = {k: int(v) for k, v in f["counts/rejected"].attrs.items() if int(v)}
            out += ["", f"Rejected rows by reason: {rejected or 'none'}"]
        if "puzzles/different_targets" in f:
            dt = f["puzzles/different_targets"][()]
            out.append(f"\nKept: {len(dt)} puzzles, {int(dt.sum())} with `different_targets`.")
    return out


def _patching(path: Path) -> list[str]:
    out = ["## Activation patching (`patching.h5`)", ""]
    with h5py.File(path, "r") as f:
        out.append(f"Metric: {f.attrs.get('metric', 'log-odds of PV[0]')}; "
                   f"sign: {f.attrs.get('sign', 'positive = reduction')}. "
                   "Mean ± 2σ over puzzles (`ok`, no overlap).")
        for site in f.get("residual", {}):
            base = f"residual/{site}/summary/all"
            if f"{base}/category_max_mean" not in f:
                continue
            mean = f[f"{base}/category_max_mean"][()]
            err = f[f"{base}/category_max_err2sigma"][()]
            n = f[f"{base}/category_max_n"][()]
            cats = _names(f["category_names"])
            out += ["", f"Residual patching at `{site}`: max effect per square category "
                    "(log-odds reduction), by layer:", ""]
            rows = [[layer] + [_fmt(mean[layer, c], err[layer, c]) for c in range(len(cats))]
                    + [int(np.nanmax(n[layer]))] for layer in range(mean.shape[0])]
            out += _table(["layer", *cats, "n"], rows)
            if "third_target" in cats and "other" in cats:
                t, o = cats.index("third_target"), cats.index("other")
                if np.isfinite(mean[:, t]).any():
                    best = int(np.nanargmax(mean[:, t]))
                    out.append(f"\nLargest 3rd-move-target effect at layer {best}: "
                               f"{_fmt(mean[best, t], err[best, t])} vs other squares "
                               f"{_fmt(mean[best, o], err[best, o])}.")
        if "heads/summary/all/effect_mean" in f:
            out += ["", "Head patching (each head's `hook_z` from the corrupted board), top 5:"]
            out += _top_heads(f["heads/summary/all/effect_mean"][()],
                              f["heads/summary/all/effect_err2sigma"][()])
        elif "heads" in f.attrs:
            out.append(f"\nHeads: {f.attrs['heads']}")
    return out


def _top_heads(mean: np.ndarray, err: np.ndarray, k: int = 5) -> list[str]:
    flat = np.where(np.isfinite(mean), mean, -np.inf).ravel()
    order = np.argsort(flat)[::-1][:k]
    rows = [[f"L{i // mean.shape[1]}H{i % mean.shape[1]}",
             _fmt(mean.flat[i], err.flat[i])] for i in order if np.isfinite(flat[i])]
    return [""] + _table(["head", "mean effect"], rows)


def _ablations(path: Path) -> list[str]:
    out = ["## Ablations (`ablations.h5`)", ""]
    with h5py.File(path, "r") as f:
        if "note" in f.attrs:
            return out + [str(f.attrs["note"])]
        out.append(f"Sign: {f.attrs.get('sign', 'positive = reduction')}.")
        for method in f.get("heads", {}):
            base = f"heads/{method}/summary/all"
            if f"{base}/effect_mean" in f:
                out += ["", f"Head ablation `{method}`, top 5 heads:"]
                out += _top_heads(f[f"{base}/effect_mean"][()], f[f"{base}/effect_err2sigma"][()])
        if "edge/summary/all/effect_mean" in f:
            names = _names(f["edge/variant_names"])
            mean = f["edge/summary/all/effect_mean"][()]
            err = f["edge/summary/all/effect_err2sigma"][()]
            e = f["edge"]
            out += ["", f"Single-edge ablation, layer {e.attrs.get('layer')} head "
                    f"{e.attrs.get('head')} (query = 1st-move target, key = 3rd-move target):", ""]
            out += _table(["variant", "mean effect"],
                          [[n, _fmt(mean[i], err[i])] for i, n in enumerate(names)])
    return out


def _probes(path: Path) -> list[str]:
    out = ["## Probes (`probes.h5`)", ""]
    with h5py.File(path, "r") as f:
        nets, splits = _names(f["net"]), _names(f["split"])
        probes, targets = _names(f["probe"]), _names(f["target"])
        layers = [int(v) for v in f["layer"][()]]
        mean, err = f["accuracy_mean"][()], f["accuracy_err"][()]
        out.append("Test accuracy (fraction of test puzzles), mean ± 2σ over seeds; "
                   f"{f['accuracy_err'].attrs.get('formula', '')}")
        s = splits.index("all") if "all" in splits else 0
        for t, target in enumerate(targets):
            header = ["layer"] + [f"{p} ({n})" for n in nets for p in probes]
            rows = []
            for li, layer in enumerate(layers):
                rows.append([layer] + [_fmt(mean[ni, s, pi, t, li], err[ni, s, pi, t, li])
                                       for ni in range(len(nets)) for pi in range(len(probes))])
            out += ["", f"Target `{target}` (split `{splits[s]}`):", ""] + _table(header, rows)
        if "baseline_mean" in f:
            bnames = _names(f["baseline"])
            bm, be = f["baseline_mean"][()], f["baseline_err"][()]
            out += ["", "No-activation baselines:", ""]
            out += _table(["baseline", *targets],
                          [[b] + [_fmt(bm[s, bi, t], be[s, bi, t]) for t in range(len(targets))]
                           for bi, b in enumerate(bnames)])
    return out


def _activations(path: Path) -> list[str]:
    out = ["## Activation cache (`activations.h5`)", ""]
    with h5py.File(path, "r") as f:
        for board in ("clean", "corrupted"):
            if board in f:
                shapes = {k: f[board][k].shape for k in f[board] if k != "valid"}
                out.append(f"- `{board}`: {len(shapes)} hooks, e.g. "
                           + ", ".join(f"`{k}` {list(v)}" for k, v in list(shapes.items())[:3]))
    return out


SECTIONS = [("puzzles.h5", _puzzles), ("activations.h5", _activations),
            ("patching.h5", _patching), ("ablations.h5", _ablations), ("probes.h5", _probes)]


def write_report(run_dir: str | Path, *, title: str | None = None) -> Path:
    """Write ``run_dir/report.md`` from the stage outputs found there; return its path."""
    run_dir = Path(run_dir)
    lines = [f"# {title or 'leela-interp report'}: `{run_dir}`", ""]
    config = None
    for name, section in SECTIONS:
        path = run_dir / name
        if not is_complete(path):
            lines += [f"## {name}", "", "Not run (or not complete) in this folder.", ""]
            continue
        lines += section(path) + [""]
        if config is None:
            with h5py.File(path, "r") as f:
                config = f.attrs.get("config")
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figures] + [""]
    if config:
        lines += ["## Provenance", "", "Config of the first stage file found:", "", "```json",
                  json.dumps(json.loads(config), indent=1, sort_keys=True)[:4000], "```", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
