"""A summary of a run folder: ``report.md`` and ``report.html`` from the same content.

:func:`write_report` reads whichever stage outputs exist in the run folder (``puzzles.h5``,
``activations.h5``, ``patching.h5``, ``ablations.h5``, ``probes.h5``, ``figures/*.png``) with
plain h5py and writes ``report.md`` next to them. A stage that has not run gets a line saying
so. Every number carries its unit or sign convention, copied from the file's attributes, and
every mean its n. Patching and ablations show their selection funnels, any file computed with
another network than the one that filtered ``puzzles.h5`` gets a warning, and the provenance
lists each file's schema, package version, git commit, command line and config.

The sections are built once, as markdown lines and :class:`Table` objects, and rendered twice:
:func:`markdown` (``report.md``) and :func:`html_page` (``report.html``: one self-contained
file, every figure inline as a ``data:`` URI, no JavaScript, a content security policy that
forbids loading anything from outside). ``report.html`` adds a gallery of example puzzles
(:func:`gallery_puzzles`): the ``k`` with the largest follow-up-target (the paper's 3rd-move
target) effect and ``k`` random others, each with :func:`leela_interp.outputs.views.drilldown`'s
pictures.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import h5py
import numpy as np

from leela_interp.identity import sha256_file
from leela_interp.outputs.figures import n_range
from leela_interp.outputs.results import is_complete, read_strings
from leela_interp.outputs.tables import Table, effect_cell, format_mean, one_table


def _names(dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in dataset[()]]


def _puzzles(path: Path) -> list[str]:
    out = ["## Puzzles (`puzzles.h5`)", ""]
    with h5py.File(path, "r") as f:
        out.append(f"- positions: `{f.attrs.get('positions', 'puzzles')}` (`puzzles` = Lichess "
                   "puzzles, `ordinary` = the ordinary-position control)")
        for key in ("source", "strong_sha256", "weak_sha256"):
            if key in f.attrs:
                out.append(f"- {key}: `{f.attrs[key]}`")
        if "counts/filters" in f:
            funnel = dict(f["counts/filters"].attrs)
            out += ["", "Puzzles passing each filter and every one before it:", ""]
            out += one_table(["step", "puzzles"], [[k, int(v)] for k, v in funnel.items()])
        if "counts/rejected" in f:
            rejected = {k: int(v) for k, v in f["counts/rejected"].attrs.items() if int(v)}
            out += ["", f"Rejected rows by reason: {rejected or 'none'}"]
        if "puzzles/different_targets" in f:
            dt = f["puzzles/different_targets"][()]
            out.append(f"\nKept: {len(dt)} puzzles, {int(dt.sum())} with `different_targets`.")
    return out


#: Column order of the residual-patching table: the paper's categories first (its
#: "3rd-move target" is ``follow_up_targets``), then this package's finer split of it and the
#: deeper look-ahead squares (PV[4]'s and PV[6]'s targets).
PATCHING_ORDER = ("first_target", "follow_up_targets", "corrupted", "other", "third_target",
                  "later_targets", "fifth_target", "seventh_target")


def _net_check(f: h5py.File) -> list[str]:
    if f.attrs.get("puzzles_net") == "different":
        return ["", f"**Warning:** the network under study (sha256 "
                f"`{f.attrs.get('network_sha256', '?')}`) is not the strong net that filtered "
                f"`puzzles.h5` (`{f.attrs.get('puzzles_strong_sha256', '?')}`): the puzzles "
                "were chosen for another network's moves."]
    return []


def recorded_puzzles_sha256(path: Path) -> str | None:
    """The sha256 of the ``puzzles.h5`` a stage file was made from, as it records it (the
    ``puzzles_sha256`` attribute, or its config's); None for ``puzzles.h5`` itself or a file
    that records none."""
    with h5py.File(path, "r") as f:
        if "puzzles_sha256" in f.attrs:
            return str(f.attrs["puzzles_sha256"])
        try:
            config = json.loads(f.attrs.get("config", "{}"))
        except ValueError:
            return None
    return config.get("puzzles_sha256") if isinstance(config, dict) else None


def _stale(run_dir: Path, files: list[Path]) -> list[str]:
    """Warnings for stage files made from another ``puzzles.h5`` than the folder's."""
    current = run_dir / "puzzles.h5"
    if not is_complete(current):
        return []
    sha = sha256_file(current)
    stale = [p.name for p in files if recorded_puzzles_sha256(p) not in (None, sha)]
    if not stale:
        return []
    return [f"**Warning: stale results.** {', '.join(f'`{n}`' for n in stale)} "
            f"{'was' if len(stale) == 1 else 'were'} made from another `puzzles.h5` than the "
            f"one in this folder (sha256 `{sha[:12]}`): {'its' if len(stale) == 1 else 'their'} "
            f"numbers do not belong with the funnel below; rerun "
            f"{'that stage' if len(stale) == 1 else 'those stages'} (`leela-interp "
            f"out_dir={run_dir}` reruns what is out of date).", ""]


def _funnel(f: h5py.File) -> list[str]:
    if "funnel/step" not in f:
        return []
    g = f["funnel"]
    rows = [[s, r, int(c)] for s, r, c in zip(_names(g["step"]), _names(g["rule"]),
                                               g["count"][()])]
    return ["", "Selection funnel (puzzles left after each step):", ""] + \
        one_table(["step", "rule", "puzzles"], rows)


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
            rows = [[layer] + [effect_cell(mean[layer, c], err[layer, c], int(n[layer, c]))
                               for c in order] for layer in range(mean.shape[0])]
            rows.append(["n"] + [n_range(n[:, c]) for c in order])
            out += one_table(["layer", *[cats[c] for c in order]], rows)
            for subset in ("all", "different_targets", "same_targets"):
                out += _headline(f, f"{base}/{subset}", cats, subset)
        if "heads/summary/all/effect_mean" in f:
            out += ["", "Head patching (each head's `hook_z` from the corrupted board), top 5 "
                    f"(n = {n_range(f['heads/summary/all/effect_n'][()])} puzzles):"]
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
            f"layer {best}: {effect_cell(mean[best, t], err[best, t], int(n[best, t]))} vs other "
            f"squares {effect_cell(mean[best, o], err[best, o], int(n[best, o]))}")
    if lead != "third_target" and "third_target" in cats:
        k = cats.index("third_target")
        alone = effect_cell(mean[best, k], err[best, k], int(n[best, k]))
        line += f"; PV[2]'s target alone {alone}"
    return [line + f" (n = {int(n[best, t])} puzzles)."]


def _top_heads(mean: np.ndarray, err: np.ndarray, k: int = 5) -> list[str]:
    flat = np.where(np.isfinite(mean), mean, -np.inf).ravel()
    order = np.argsort(flat)[::-1][:k]
    rows = [[f"L{i // mean.shape[1]}H{i % mean.shape[1]}",
             format_mean(mean.flat[i], err.flat[i])] for i in order if np.isfinite(flat[i])]
    return [""] + one_table(["head", "mean effect"], rows)


def _variants(g: h5py.Group) -> list[str]:
    names = _names(g["variant_names"])
    mean = g["summary/all/effect_mean"][()]
    err = g["summary/all/effect_err2sigma"][()]
    n = g["summary/all/effect_n"][()]
    return [""] + one_table(["variant", "mean effect", "n"],
                         [[v, effect_cell(mean[i], err[i], int(n[i])), int(n[i])]
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
                        f"{n_range(f[f'{base}/effect_n'][()])} puzzles):"]
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
            out += ["", f"Heads: {g.attrs.get('heads', '?')} "
                    f"({g.attrs.get('heads_source', '?')})."]
            out += _variants(g)
    found = path.parent / "piece_heads.h5"
    if is_complete(found):
        out += _found_heads(found)
    return out


def _found_heads(path: Path) -> list[str]:
    """The piece-movement-head finder's lists and each piece type's best head."""
    with h5py.File(path, "r") as f:
        score, control, chance = f["score"][()], f["control"][()], f["chance"][()]
        rows = []
        for p, piece in enumerate(_names(f["piece_names"])):
            heads = f[f"heads/{piece}"][()]
            lift = score[p] / chance[p]
            best = np.unravel_index(np.nanargmax(lift), lift.shape) if np.isfinite(
                lift).any() else None
            rows.append([piece, " ".join(f"L{l}H{h}" for l, h in heads) or "none",
                         f"{chance[p]:.3f}", int(f["n_queries"][p])] + (
                [f"L{best[0]}H{best[1]}", f"{score[p][best]:.3f}", f"{lift[best]:.2f}",
                 f"{control[p][best]:.3f}"] if best else ["n/a"] * 4))
        intro = (f"Piece-movement heads found (`piece_heads.h5`, {f.attrs['n_positions']} "
                 f"positions; a head is selected when its score, the attention mass from the "
                 f"mover's piece onto that piece's move squares, is >= {f.attrs['min_lift']:g} "
                 f"x chance):")
    return ["", intro, ""] + one_table(["piece", "selected", "chance", "queries", "best head",
                                     "score", "score / chance", "control"], rows)


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
                rows = [[layer] + [format_mean(mean[ni, s, pi, t, li], err[ni, s, pi, t, li])
                                   for ni in range(len(nets)) for pi in range(len(probes))]
                        for li, layer in enumerate(layers)]
                out += ["", f"Target `{target}`, split `{split}` (test puzzles per seed: "
                        f"{n_range(n_test[s, t])}):", ""] + one_table(header, rows)
            if "baseline_mean" in f:
                bnames = _names(f["baseline"])
                bm, be = f["baseline_mean"][()], f["baseline_err"][()]
                out += ["", f"No-activation baselines, split `{split}`:", ""]
                out += one_table(["baseline", *targets],
                              [[b] + [format_mean(bm[s, bi, t], be[s, bi, t])
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


PROVENANCE_HEADING = "## Provenance"


def _provenance(files: list[Path]) -> list[str]:
    out = [PROVENANCE_HEADING, "", "Each stage file's version, commit, command line and config:"]
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


def sections(run_dir: str | Path, *, title: str | None = None,
             control_dir: str | Path | None = None) -> list:
    """The report's content: markdown lines (``str``) and :class:`Table` objects; with
    ``control_dir``, the section :func:`leela_interp.outputs.control.comparison` (and its
    figure) after the stages' sections.

    Raises:
        ConfigError: ``control_dir`` is not an ordinary-position control of ``run_dir``
            (:func:`leela_interp.outputs.control.check_control`).
    """
    from leela_interp.outputs import control

    run_dir = Path(run_dir)
    if control_dir is not None:
        control.check_control(run_dir, control_dir)
    lines: list = [f"# {title or 'leela-interp report'}: `{run_dir}`", ""]
    found = []
    for name, section in SECTIONS:
        path = run_dir / name
        if not is_complete(path):
            lines += [f"## {name}", "", "Not run (or not complete) in this folder.", ""]
            continue
        lines += section(path) + [""]
        found.append(path)
    from leela_interp.puzzles.layout import nothing_to_analyse

    why = nothing_to_analyse(run_dir / "puzzles.h5")
    empty = [f"**Nothing to analyse.** {why}: the stages that analyse puzzles were skipped.",
             ""] if why else []
    lines[2:2] = empty + _stale(run_dir, found)
    if control_dir is not None:
        lines += control.comparison(run_dir, control_dir)
    figures = sorted(p for p in (run_dir / "figures").glob("*.png") if p.name != control.FIGURE) \
        if (run_dir / "figures").is_dir() else []
    if figures:
        lines += ["## Figures", "", "Each figure is also in `figures/` as SVG and PDF.", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figures] + [""]
    if found:
        lines += _provenance(found)
    return lines


def markdown(blocks: list) -> str:
    """Markdown text of :func:`sections`' blocks."""
    lines = []
    for block in blocks:
        if isinstance(block, Table):
            lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
        else:
            lines.append(block)
    return "\n".join(lines)


def _inline(text: str) -> str:
    """HTML of one line of the report's markdown: escaped, with `code` and **bold**."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def data_uri(data: bytes | str, mime: str) -> str:
    """``data:`` URI of a file's bytes (or an SVG's text), base64."""
    raw = data.encode() if isinstance(data, str) else data
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
STYLE = """body{font-family:sans-serif;max-width:1250px;margin:1em auto;padding:0 1em;color:#111}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left}th{background:#eee}
code{background:#f3f3f3;padding:0 .2em}pre{background:#f6f6f6;padding:.5em;overflow-x:auto}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#333}.note{color:#666;font-style:italic}"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
"""The content security policy of every HTML page: nothing may load from outside the file
and no script may run."""


def _figure(uri: str, alt: str, caption: str) -> str:
    return (f'<figure><img src="{uri}" alt="{html.escape(alt)}">'
            f"<figcaption>{_inline(caption)}</figcaption></figure>")


def html_page(blocks: list, *, title: str, images: Path | None = None) -> str:
    """One self-contained HTML page of ``blocks``: markdown lines, :class:`Table` objects and
    :class:`leela_interp.outputs.views.Panel` pictures (inline SVG ``data:`` URIs; a panel without a
    picture shows its note). A markdown image line ``![alt](path)`` embeds the file at
    ``images / path`` (PNG or SVG), or says that it is missing."""
    from leela_interp.outputs.views import Panel

    body: list[str] = []
    para: list[str] = []
    items: list[str] = []
    code: list[str] | None = None
    slugs: dict[str, int] = {}  # heading ids, made unique

    def flush() -> None:
        if para:
            body.append(f"<p>{' '.join(_inline(t) for t in para)}</p>")
            para.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
            items.clear()

    lines = []
    for block in blocks:
        lines += block.split("\n") if isinstance(block, str) else [block]
    for line in lines:
        if code is not None:
            if isinstance(line, str) and line.startswith("```"):
                body.append(f"<pre><code>{html.escape(chr(10).join(code), quote=False)}"
                            "</code></pre>")
                code = None
            else:
                code.append(str(line))
            continue
        if isinstance(line, Table):
            flush()
            head = "".join(f"<th>{_inline(h)}</th>" for h in line.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                           for row in line.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(line, Panel):
            flush()
            body.append(_figure(data_uri(line.svg, "image/svg+xml"), line.name, line.caption)
                        if line.svg else
                        f'<p class="note">{_inline(line.caption)}: {_inline(line.note)}</p>')
        elif line.startswith("```"):
            flush()
            code = []
        elif line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")), 4)
            text = line.lstrip("#").strip()
            slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
            slugs[slug] = slugs.get(slug, 0) + 1
            slug += f"-{slugs[slug]}" if slugs[slug] > 1 else ""
            body.append(f'<h{level} id="{slug}">{_inline(text)}</h{level}>')
        elif _IMAGE.match(line):
            flush()
            alt, src = _IMAGE.match(line).groups()
            path = (images or Path(".")) / src
            if path.is_file():
                mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
                body.append(_figure(data_uri(path.read_bytes(), mime), alt, f"`{src}`"))
            else:
                body.append(f'<p class="note">{_inline(src)}: missing</p>')
        elif line.startswith("- "):
            if para:
                flush()
            items.append(line[2:])
        elif not line.strip():
            flush()
        else:
            if items:
                flush()
            para.append(line)
    flush()
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def gallery_puzzles(run_dir: str | Path, k: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``[(puzzle id, why it was chosen)]``: the ``k`` puzzles with the largest follow-up-target
    effect (max over layers of ``category_max`` at ``patching.h5``'s first residual site, over
    the puzzles of the category means: analysed, no overlap), then ``k`` others drawn at random
    (``seed``) from the analysed puzzles, or from all of ``puzzles.h5`` without a
    ``patching.h5``.

    Raises:
        ValueError: ``k < 0``.
    """
    if k < 0:
        raise ValueError(f"gallery size k must be >= 0, got {k!r}")
    run_dir = Path(run_dir)
    if not is_complete(run_dir / "puzzles.h5"):
        return []
    with h5py.File(run_dir / "puzzles.h5", "r") as f:
        ids = read_strings(f["puzzles/id"])
    chosen: list[tuple[str, str]] = []
    pool = np.arange(len(ids))
    path = run_dir / "patching.h5"
    if is_complete(path):
        with h5py.File(path, "r") as f:
            analysed = f["analysed"][()] & ~f["overlap"][()] if "overlap" in f else \
                f["analysed"][()]
            pool = np.flatnonzero(f["analysed"][()])
            sites = list(f.get("residual", {}))
            cats = read_strings(f["category_names"]) if "category_names" in f else []
            lead = next((c for c in ("follow_up_targets", "third_target") if c in cats), None)
            if sites and lead:
                cm = f[f"residual/{sites[0]}/category_max"][:, :, cats.index(lead)]
                finite = analysed & np.isfinite(cm).any(axis=1)
                score = np.where(finite[:, None], np.nan_to_num(cm, nan=-np.inf), -np.inf)
                best = score.max(axis=1)
                for i in np.argsort(-best, kind="stable")[:k]:
                    if np.isfinite(best[i]):
                        layer = int(np.argmax(score[i]))
                        chosen.append((ids[i], f"largest follow-up-target effect: "
                                               f"{best[i]:.3f} at layer {layer} ({sites[0]})"))
    taken = {pid for pid, _ in chosen}
    pool = [i for i in pool if ids[i] not in taken]
    rng = np.random.default_rng(seed)
    for i in rng.permutation(pool)[:k]:
        chosen.append((ids[int(i)], f"random (seed {seed})"))
    return chosen


def gallery(run_dir: str | Path, k: int, *, seed: int = 0, net=None) -> list:
    """The gallery's blocks: a heading per :func:`gallery_puzzles` puzzle, then its
    :func:`~leela_interp.outputs.views.drilldown` panels."""
    from leela_interp.outputs import views

    chosen = gallery_puzzles(run_dir, k, seed=seed)
    out: list = ["## Gallery", "",
                 f"The {k} puzzles with the largest follow-up-target effect (the paper's 3rd-move "
                 f"target) and {k} random analysed ones (`report.gallery.k`, "
                 f"`report.gallery.seed`); `leela-interp stage=show puzzle_id=ID` writes one "
                 "puzzle's pictures as SVG, PNG and PDF.", ""]
    if not chosen:
        return out + ["No puzzles in this folder (no complete `puzzles.h5`).", ""]
    for pid, why in chosen:
        out += [f"### Puzzle `{pid}`: {why}", ""] + views.drilldown(run_dir, pid, net=net) + [""]
    return out


def write_report(run_dir: str | Path, *, title: str | None = None, gallery_k: int = 3,
                 gallery_seed: int = 0, model_path: str | Path | None = None,
                 control_dir: str | Path | None = None) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/report.html`` from the stage outputs found
    there (``report.html`` has the gallery before the provenance); return the markdown's path.

    Args:
        gallery_k: puzzles of each kind in ``report.html``'s gallery (:func:`gallery_puzzles`).
        gallery_seed: seed of the gallery's random puzzles.
        model_path: the network for the gallery's attention rows
            (:func:`leela_interp.outputs.views.network`; None = ``patching.h5``'s recorded one).
        control_dir: an ordinary-position control folder of ``run_dir``
            (``report.control_dir``): adds the section "Puzzles vs ordinary positions"
            (:mod:`leela_interp.outputs.control`); None = none.

    Raises:
        ConfigError: ``control_dir`` is not a control of ``run_dir`` (another network, or not
            ``puzzles.positions=ordinary``).
    """
    from leela_interp.errors import ConfigError
    from leela_interp.outputs import views

    run_dir = Path(run_dir)
    blocks = sections(run_dir, title=title, control_dir=control_dir)
    out = run_dir / "report.md"
    out.write_text(markdown(blocks))
    net = None
    if views.top_head(run_dir) is not None:
        try:
            net = views.network(run_dir, model_path)
        except ConfigError:
            pass  # each attention panel says why
    at = blocks.index(PROVENANCE_HEADING) if PROVENANCE_HEADING in blocks else len(blocks)
    shown = gallery(run_dir, gallery_k, seed=gallery_seed, net=net) if gallery_k else []
    page = html_page(blocks[:at] + shown + blocks[at:],
                     title=f"{title or 'leela-interp report'}: {run_dir}", images=run_dir)
    (run_dir / "report.html").write_text(page)
    return out
