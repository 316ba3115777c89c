"""A markdown summary of a run folder: puzzle counts, key effects with error bars, probe curves.

:func:`write_report` reads whichever stage outputs exist in the run folder (``puzzles.h5``,
``activations.h5``, ``patching.h5``, ``ablations.h5``, ``probes.h5``, ``figures/*.png``) with
plain h5py and writes ``report.md`` next to them. A stage that has not run gets a line saying
so. Every number carries its unit or sign convention, copied from the file's attributes, and
every mean its n. Patching and ablations show their selection funnels, any file computed with
another network than the one that filtered ``puzzles.h5`` gets a warning, and the provenance
lists each file's schema, package version, git commit, command line and config.
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


#: Column order of the residual-patching table: the paper's categories first (its
#: "3rd-move target" is ``follow_up_targets``), then this package's finer split of it.
PATCHING_ORDER = ("first_target", "follow_up_targets", "corrupted", "other", "third_target",
                  "later_targets")


def _cell(mean: float, err: float, n: int) -> str:
    """``mean ± err``; a mean over fewer than 2 puzzles shows its n instead of a bar."""
    if n < 1 or not np.isfinite(mean):
        return "n/a"
    if n < 2:
        return f"{mean:.3f} (n={n}, no error bar)"
    return _fmt(mean, err)


def _n_range(n: np.ndarray) -> str:
    lo, hi = int(np.min(n)), int(np.max(n))
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _net_check(f: h5py.File) -> list[str]:
    if f.attrs.get("puzzles_net") == "different":
        return ["", f"**Warning:** the network under study (sha256 "
                f"`{f.attrs.get('network_sha256', '?')}`) is not the strong net that filtered "
                f"`puzzles.h5` (`{f.attrs.get('puzzles_strong_sha256', '?')}`): the puzzles "
                "were chosen for another network's moves."]
    return []


def _funnel(f: h5py.File) -> list[str]:
    if "funnel/step" not in f:
        return []
    g = f["funnel"]
    rows = [[s, r, int(c)] for s, r, c in zip(_names(g["step"]), _names(g["rule"]),
                                               g["count"][()])]
    return ["", "Selection funnel (puzzles left after each step):", ""] + \
        _table(["step", "rule", "puzzles"], rows)


def _patching(path: Path) -> list[str]:
    out = ["## Activation patching (`patching.h5`)", ""]
    with h5py.File(path, "r") as f:
        out.append(f"Metric: {f.attrs.get('metric', 'log-odds of PV[0]')}; "
                   f"sign: {f.attrs.get('sign', 'positive = reduction')}. "
                   "Mean ± 2σ over the analysed puzzles without overlap "
                   f"(overlap rule `{f.attrs.get('overlap_rule', '?')}`).")
        out += _net_check(f) + _funnel(f)
        cats = _names(f["category_names"])
        for site in f.get("residual", {}):
            base = f"residual/{site}/summary"
            if f"{base}/all/category_max_mean" not in f:
                continue
            mean = f[f"{base}/all/category_max_mean"][()]
            err = f[f"{base}/all/category_max_err2sigma"][()]
            n = f[f"{base}/all/category_max_n"][()]
            order = [cats.index(c) for c in PATCHING_ORDER if c in cats] + \
                [i for i, c in enumerate(cats) if c not in PATCHING_ORDER]
            out += ["", f"Residual patching at `{site}`: max effect per square category "
                    "(log-odds reduction), by layer. `follow_up_targets` is the paper's "
                    "3rd-move target (the max over the targets of PV[2:]); `third_target` "
                    "(PV[2] only) and `later_targets` (PV[3:]) split it. Each column has its "
                    "own n (last row):", ""]
            rows = [[layer] + [_cell(mean[layer, c], err[layer, c], int(n[layer, c]))
                               for c in order] for layer in range(mean.shape[0])]
            rows.append(["n"] + [_n_range(n[:, c]) for c in order])
            out += _table(["layer", *[cats[c] for c in order]], rows)
            for subset in ("all", "different_targets", "same_targets"):
                out += _headline(f, f"{base}/{subset}", cats, subset)
        if "heads/summary/all/effect_mean" in f:
            out += ["", "Head patching (each head's `hook_z` from the corrupted board), top 5 "
                    f"(n = {_n_range(f['heads/summary/all/effect_n'][()])} puzzles):"]
            out += _top_heads(f["heads/summary/all/effect_mean"][()],
                              f["heads/summary/all/effect_err2sigma"][()])
        elif "heads" in f.attrs:
            out.append(f"\nHeads: {f.attrs['heads']}")
    return out


def _headline(f: h5py.File, base: str, cats: list[str], subset: str) -> list[str]:
    """The layer with the largest follow-up-target effect, against the other squares."""
    if f"{base}/category_max_mean" not in f or "other" not in cats:
        return []
    mean, err = f[f"{base}/category_max_mean"][()], f[f"{base}/category_max_err2sigma"][()]
    n = f[f"{base}/category_max_n"][()]
    lead = "follow_up_targets" if "follow_up_targets" in cats else "third_target"
    t, o = cats.index(lead), cats.index("other")
    if not np.isfinite(mean[:, t]).any():
        return [f"\n`{subset}`: no analysed puzzle without overlap."]
    best = int(np.nanargmax(mean[:, t]))
    line = (f"\n`{subset}`: largest follow-up-target effect (the paper's 3rd-move target) at "
            f"layer {best}: {_cell(mean[best, t], err[best, t], int(n[best, t]))} vs other "
            f"squares {_cell(mean[best, o], err[best, o], int(n[best, o]))}")
    if lead != "third_target" and "third_target" in cats:
        k = cats.index("third_target")
        line += f"; PV[2]'s target alone {_cell(mean[best, k], err[best, k], int(n[best, k]))}"
    return [line + f" (n = {int(n[best, t])} puzzles)."]


def _top_heads(mean: np.ndarray, err: np.ndarray, k: int = 5) -> list[str]:
    flat = np.where(np.isfinite(mean), mean, -np.inf).ravel()
    order = np.argsort(flat)[::-1][:k]
    rows = [[f"L{i // mean.shape[1]}H{i % mean.shape[1]}",
             _fmt(mean.flat[i], err.flat[i])] for i in order if np.isfinite(flat[i])]
    return [""] + _table(["head", "mean effect"], rows)


def _variants(g: h5py.Group) -> list[str]:
    names = _names(g["variant_names"])
    mean = g["summary/all/effect_mean"][()]
    err = g["summary/all/effect_err2sigma"][()]
    n = g["summary/all/effect_n"][()]
    return [""] + _table(["variant", "mean effect", "n"],
                         [[v, _cell(mean[i], err[i], int(n[i])), int(n[i])]
                          for i, v in enumerate(names)])


def _ablations(path: Path) -> list[str]:
    out = ["## Ablations (`ablations.h5`)", ""]
    with h5py.File(path, "r") as f:
        if "note" in f.attrs:
            return out + [str(f.attrs["note"])] + _net_check(f)
        out.append(f"Sign: {f.attrs.get('sign', 'positive = reduction')}. Puzzles: "
                   f"`{f.attrs.get('puzzles', '?')}`.")
        out += _net_check(f) + _funnel(f)
        for method in f.get("heads", {}):
            base = f"heads/{method}/summary/all"
            if f"{base}/effect_mean" in f:
                out += ["", f"Head ablation `{method}`, top 5 heads (n = "
                        f"{_n_range(f[f'{base}/effect_n'][()])} puzzles):"]
                out += _top_heads(f[f"{base}/effect_mean"][()], f[f"{base}/effect_err2sigma"][()])
        if "edge/summary/all/effect_mean" in f:
            e = f["edge"]
            out += ["", f"Single-edge ablation, layer {e.attrs.get('layer')} head "
                    f"{e.attrs.get('head')} (query = 1st-move target, key = 3rd-move target); "
                    f"head chosen by: {e.attrs.get('chosen_by', '?')}:"]
            out += _variants(e)
        if "piece_heads/summary/all/effect_mean" in f:
            g = f["piece_heads"]
            out += ["", "Piece-movement heads (attention into the 3rd-move target ablated in the "
                    f"moving piece's heads; piece rule `{g.attrs.get('piece_rule', '?')}`, "
                    f"random key `{g.attrs.get('random_key', '?')}`):"]
            out += _variants(g)
    return out


def _probes(path: Path) -> list[str]:
    out = ["## Probes (`probes.h5`)", ""]
    with h5py.File(path, "r") as f:
        nets, splits = _names(f["net"]), _names(f["split"])
        probes, targets = _names(f["probe"]), _names(f["target"])
        layers = [int(v) for v in f["layer"][()]]
        mean, err = f["accuracy_mean"][()], f["accuracy_err"][()]
        n_test = f["n_test"][()]  # [split, target, seed]
        out.append("Test accuracy (fraction of test puzzles), mean ± 2σ over seeds; "
                   f"{f['accuracy_err'].attrs.get('formula', '')}")
        out += _net_check(f)
        header = ["layer"] + [f"{p} ({n})" for n in nets for p in probes]
        for s, split in enumerate(splits):
            for t, target in enumerate(targets):
                rows = [[layer] + [_fmt(mean[ni, s, pi, t, li], err[ni, s, pi, t, li])
                                   for ni in range(len(nets)) for pi in range(len(probes))]
                        for li, layer in enumerate(layers)]
                out += ["", f"Target `{target}`, split `{split}` (test puzzles per seed: "
                        f"{_n_range(n_test[s, t])}):", ""] + _table(header, rows)
            if "baseline_mean" in f:
                bnames = _names(f["baseline"])
                bm, be = f["baseline_mean"][()], f["baseline_err"][()]
                out += ["", f"No-activation baselines, split `{split}`:", ""]
                out += _table(["baseline", *targets],
                              [[b] + [_fmt(bm[s, bi, t], be[s, bi, t])
                                      for t in range(len(targets))]
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
        out += _net_check(f)
    return out


SECTIONS = [("puzzles.h5", _puzzles), ("activations.h5", _activations),
            ("patching.h5", _patching), ("ablations.h5", _ablations), ("probes.h5", _probes)]


PROVENANCE = ("schema", "leela_interp_version", "git_commit", "command")
"""Root attributes of each stage file the report's provenance section lists (then ``config``)."""


def _provenance(files: list[Path]) -> list[str]:
    out = ["## Provenance", "", "Each stage file's version, commit, command line and config:"]
    for path in files:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs.get(k) for k in (*PROVENANCE, "config")}
        out += ["", f"### `{path.name}`", ""]
        out += [f"- {k}: `{attrs[k] if attrs[k] is not None else 'not recorded'}`"
                for k in PROVENANCE]
        if attrs["config"]:
            out += ["", "```json", json.dumps(json.loads(attrs["config"]), indent=1,
                                              sort_keys=True), "```"]
    return out + [""]


def write_report(run_dir: str | Path, *, title: str | None = None) -> Path:
    """Write ``run_dir/report.md`` from the stage outputs found there; return its path."""
    run_dir = Path(run_dir)
    lines = [f"# {title or 'leela-interp report'}: `{run_dir}`", ""]
    found = []
    for name, section in SECTIONS:
        path = run_dir / name
        if not is_complete(path):
            lines += [f"## {name}", "", "Not run (or not complete) in this folder.", ""]
            continue
        lines += section(path) + [""]
        found.append(path)
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figures] + [""]
    if found:
        lines += _provenance(found)
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
