"""The report stage summarises whatever stage outputs a run folder holds.

A hand-made folder pins the formatting; the report of a real run (``tiny_run``) is parsed back
and every table and headline compared with the HDF5 values it shows.
"""

import html
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from leela_interp.outputs.report import (CSP, Table, data_uri, gallery_puzzles, html_page,
                                         write_report)
from leela_interp.outputs.results import label_axes, read_strings, write_strings
from leela_interp.outputs.rows import open_partial

COLUMNS = ["first_target", "third_target", "later_targets", "corrupted", "other",
           "follow_up_targets"]


def write_patching(path):
    with open_partial(path, schema="leela_interp.patching/1", config={"patching": 1}) as f:
        f.attrs["metric"] = "log-odds of PV[0]"
        f.attrs["sign"] = "positive = reduction"
        write_strings(f, "category_names", COLUMNS)
        base = "residual/resid_post/summary/all"
        mean = np.array([[0.1, 0.5, 0.7, 0.9, 0.2, 0.7], [0.3, 1.9, 0.2, 0.1, 0.55, 2.1]])
        label_axes(f.create_dataset(f"{base}/category_max_mean", data=mean), "layer", "category")
        f.create_dataset(f"{base}/category_max_err2sigma", data=np.full_like(mean, 0.04))
        n = np.full(mean.shape, 7)
        n[:, COLUMNS.index("later_targets")] = 1  # one puzzle has a PV[3:]
        f.create_dataset(f"{base}/category_max_n", data=n)
        g = f.create_group("funnel")
        write_strings(g, "step", ["puzzles", "pv0_is_top"])
        write_strings(g, "rule", ["rows of puzzles.h5", "PV[0] is the top move"])
        g.create_dataset("count", data=[9, 7])


def write_probes(path):
    """Two splits, two targets, 2 layers; test sets of 2 and 3 puzzles."""
    with open_partial(path, schema="leela_interp.probes/1", config={"probes": 2}) as f:
        for name, values in (("net", ["model"]), ("split", ["all", "different_targets"]),
                             ("probe", ["bilinear"]), ("target", ["target", "move"]),
                             ("baseline", ["majority"])):
            write_strings(f, name, values)
        f["layer"] = np.array([0, 1])
        f["accuracy_mean"] = np.arange(8, dtype=float).reshape(1, 2, 1, 2, 2) / 10
        f["accuracy_err"] = np.full((1, 2, 1, 2, 2), 0.01)
        f["accuracy_err"].attrs["formula"] = "2*sqrt(...)"
        f["n_test"] = np.array([[[2, 2], [2, 2]], [[3, 3], [3, 3]]])  # split, target, seed
        f["baseline_mean"] = np.full((2, 1, 2), 0.2)
        f["baseline_err"] = np.full((2, 1, 2), 0.1)


def test_report_lists_missing_stages_and_summarises_present_ones(tmp_path):
    write_patching(tmp_path / "patching.h5")
    write_probes(tmp_path / "probes.h5")
    (tmp_path / "figures").mkdir()
    for name in ("patching_resid_post.png", "probes.png"):
        (tmp_path / "figures" / name).write_bytes(b"png")
    text = write_report(tmp_path).read_text()
    assert "## puzzles.h5" in text and "Not run" in text
    assert "positive = reduction" in text
    # the paper's 3rd-move target (follow-up targets) leads, PV[2]'s own target beside it
    assert "`all`: largest follow-up-target effect (the paper's 3rd-move target) at layer 1: " \
           "2.100 ± 0.040 vs other squares 0.550 ± 0.040; PV[2]'s target alone 1.900 ± 0.040 " \
           "(n = 7 puzzles)." in text
    header = next(line for line in text.splitlines() if line.startswith("| layer | first"))
    assert header == "| layer | first_target | follow_up_targets | corrupted | other | " \
                     "third_target | later_targets |"
    # every category has its own n; a mean of one puzzle says so instead of showing no bar
    assert "| n | 7 | 7 | 7 | 7 | 7 | 1 |" in text
    assert "0.700 (n=1, no error bar)" in text
    assert "| pv0_is_top | PV[0] is the top move | 7 |" in text
    # every probe split, each test-set size, and the figure under figures/
    for split, n in (("all", 2), ("different_targets", 3)):
        for target in ("target", "move"):
            assert f"Target `{target}`, split `{split}` (test puzzles per seed: {n}):" in text
        assert f"No-activation baselines, split `{split}`:" in text
    assert "| 1 | 0.700 ± 0.010 |" in text  # move, different_targets, layer 1
    assert "![probes](figures/probes.png)" in text
    assert "![patching_resid_post](figures/patching_resid_post.png)" in text
    # provenance of every file: schema, version, commit, command line, config
    provenance = text[text.index("## Provenance"):]
    for name, schema, config in (("patching.h5", "leela_interp.patching/1", '"patching": 1'),
                                 ("probes.h5", "leela_interp.probes/1", '"probes": 2')):
        part = provenance[provenance.index(f"### `{name}`"):]
        assert f"- schema: `{schema}`" in part and config in part
        for key in ("leela_interp_version", "git_commit", "command"):
            assert f"- {key}: `" in part and f"- {key}: `not recorded`" not in part
    with h5py.File(tmp_path / "patching.h5") as f:
        assert f.attrs["complete"]


def md_tables(text: str) -> list[list[list[str]]]:
    """The tables of a markdown text: rows of cells (separator rows dropped)."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def html_tables(text: str) -> list[list[list[str]]]:
    tables = []
    for table in re.findall(r"<table>(.*?)</table>", text, re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
        tables.append([[html.unescape(re.sub(r"</?(code|strong)>", "`", c).replace("``", ""))
                        for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", r, re.S)] for r in rows])
    return tables


def test_report_html_has_the_same_tables_and_figures_inline_and_no_script(tmp_path):
    write_patching(tmp_path / "patching.h5")
    write_probes(tmp_path / "probes.h5")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "probes.png").write_bytes(b"\x89PNG fake bytes")
    md = write_report(tmp_path).read_text()
    page = (tmp_path / "report.html").read_text()
    tables = md_tables(md)
    assert len(tables) >= 8 and html_tables(page) == tables
    assert ("<p><code>all</code>: largest follow-up-target effect (the paper's 3rd-move target) "
            "at layer 1: 2.100 ± 0.040 vs other squares") in page
    assert data_uri(b"\x89PNG fake bytes", "image/png") in page
    assert f'content="{CSP}"' in page and "default-src 'none'" in CSP
    assert "<script" not in page
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []  # nothing loaded from outside
    assert page.index('<h2 id="gallery">') < page.index('<h2 id="provenance">')
    assert "No puzzles in this folder" in page  # no puzzles.h5: an empty gallery says so


def test_html_page_renders_headings_lists_code_and_panels():
    from leela_interp.outputs.views import Panel

    page = html_page(["# Title `x`", "## Title x", "", "- a **b**", "- c", "text <b>", "",
                      "```json", '{"k": "<v>"}', "```", Table(["h"], [["1"]]),
                      Panel("card", "A card", svg="<svg/>"), Panel("x", "Missing", note="why")],
                     title="t")
    assert '<h1 id="title-x">Title <code>x</code></h1>' in page
    assert '<h2 id="title-x-2">Title x</h2>' in page  # every id is unique
    assert "<ul><li>a <strong>b</strong></li><li>c</li></ul><p>text &lt;b&gt;</p>" in \
        page.replace("\n", "")
    assert '<pre><code>{"k": "&lt;v&gt;"}</code></pre>' in page
    assert "<table><thead><tr><th>h</th></tr></thead><tbody><tr><td>1</td></tr>" in page
    assert f'<img src="{data_uri("<svg/>", "image/svg+xml")}" alt="card">' in page
    assert '<p class="note">Missing: why</p>' in page


def write_gallery_inputs(run):
    """Five puzzles: 0-3 analysed (3 overlaps), 4 not; follow-up effects 0.5, 2.0, NaN, 9.0."""
    ids = ["a", "b", "c", "d", "e"]
    with open_partial(run / "puzzles.h5", schema="leela_interp.puzzles/2", config={}) as f:
        write_strings(f.require_group("puzzles"), "id", ids)
    with open_partial(run / "patching.h5", schema="leela_interp.patching/1", config={}) as f:
        write_strings(f, "category_names", COLUMNS)
        f["analysed"] = np.array([True, True, True, True, False])
        f["overlap"] = np.array([False, False, False, True, False])
        cm = np.full((5, 2, len(COLUMNS)), np.nan, np.float32)
        cm[0, :, 5], cm[1, :, 5], cm[3, :, 5], cm[4, :, 5] = [0.5, 0.1], [0.2, 2.0], 9.0, 8.0
        f["residual/resid_post/category_max"] = cm


def test_gallery_shows_the_largest_follow_up_effects_then_random_analysed_puzzles(tmp_path):
    write_gallery_inputs(tmp_path)
    top = gallery_puzzles(tmp_path, 2, seed=0)
    # overlapping (d) and unanalysed (e) puzzles are not in the category means
    assert top[:2] == [("b", "largest follow-up-target effect: 2.000 at layer 1 (resid_post)"),
                       ("a", "largest follow-up-target effect: 0.500 at layer 0 (resid_post)")]
    assert [r for _, r in top[2:]] == ["random (seed 0)"] * 2
    assert {p for p, _ in top[2:]} == {"c", "d"}  # the analysed puzzles not shown already
    assert gallery_puzzles(tmp_path, 0) == []
    draws = {tuple(p for p, _ in gallery_puzzles(tmp_path, 1, seed=s)[1:]) for s in range(20)}
    assert draws == {("a",), ("c",), ("d",)}  # k=1: b is the top one; any other analysed
    with pytest.raises(ValueError, match="gallery size k must be >= 0, got -1"):
        gallery_puzzles(tmp_path, -1)


# --------------------------------------------------------------------------- a real run's report


@pytest.fixture(scope="module")
def report(tiny_run) -> dict[str, str]:
    """``report.md`` of the tiny run, rewritten here, split into its ``## `` sections."""
    text = write_report(tiny_run).read_text()
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def table(section: str, caption: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first markdown table after the line starting ``caption``."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(caption))
    first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert set(rows[1]) == {"---"}, rows[1]
    return rows[0], rows[2:]


def parse(cell: str) -> tuple[float, float]:
    """``"m ± e"``, ``"m"``, ``"m (n=1, no error bar)"`` or ``"n/a"`` -> (mean, err), NaN where
    absent."""
    if cell == "n/a":
        return math.nan, math.nan
    m = re.fullmatch(r"(-?\d+\.\d{3})(?: ± (\d+\.\d{3}))?(?: \(n=\d+, no error bar\))?", cell)
    assert m, cell
    return float(m[1]), float(m[2]) if m[2] else math.nan


def shows(cell: str, mean: float, err: float) -> bool:
    """The cell shows ``mean`` and ``err`` to its 3 decimals (``n/a`` for a NaN mean)."""
    got = parse(cell)
    for value, shown in zip((mean, err), got):
        if math.isfinite(value) != math.isfinite(shown):
            return False
        if math.isfinite(value) and abs(value - shown) > 5e-4 + 1e-9:
            return False
    return True


def n_range(n: np.ndarray) -> str:
    lo, hi = int(np.min(n)), int(np.max(n))
    return str(lo) if lo == hi else f"{lo}–{hi}"


def assert_funnel(section: str, f: h5py.File) -> None:
    _, rows = table(section, "Selection funnel")
    assert rows == [[s, r, str(c)] for s, r, c in zip(read_strings(f["funnel/step"]),
                                                      read_strings(f["funnel/rule"]),
                                                      f["funnel/count"][()])]
    assert any(int(r[2]) for r in rows)


def assert_top_heads(section: str, caption: str, g: h5py.Group, name: str = "effect") -> None:
    """The top-5 table after ``caption (n = ...)`` lists the 5 largest means of ``g``'s summary
    over all puzzles, in order, with their error bars."""
    mean = g[f"summary/all/{name}_mean"][()]
    err = g[f"summary/all/{name}_err2sigma"][()]
    n = g[f"summary/all/{name}_n"][()]
    line = next(x for x in section.splitlines() if x.startswith(caption))
    assert f"(n = {n_range(n)} puzzles):" in line, line
    order = sorted(np.ndindex(mean.shape), key=lambda lh: -mean[lh])[:5]
    _, rows = table(section, caption)
    assert [r[0] for r in rows] == [f"L{layer}H{head}" for layer, head in order]
    for row, lh in zip(rows, order):
        assert shows(row[1], mean[lh], err[lh]), (caption, row, mean[lh], err[lh])


def assert_variants(section: str, caption: str, g: h5py.Group) -> None:
    mean, err = g["summary/all/effect_mean"][()], g["summary/all/effect_err2sigma"][()]
    n = g["summary/all/effect_n"][()]
    _, rows = table(section, caption)
    assert [r[0] for r in rows] == read_strings(g["variant_names"])
    for i, row in enumerate(rows):
        assert shows(row[1], mean[i], err[i]) and row[2] == str(n[i]), (caption, row)


def test_real_report_starts_with_the_default_title_and_the_run_folder(tiny_run, report):
    assert (tiny_run / "report.md").read_text().startswith(
        f"# leela-interp report: `{tiny_run}`\n")  # as in the README's example


def test_real_report_gallery_uses_the_configs_defaults(tiny_run, report):
    """``write_report(run)`` with no gallery arguments draws the gallery ``stage=report`` draws
    with conf's defaults (``report.gallery.k`` random puzzles, ``report.gallery.seed``)."""
    from omegaconf import OmegaConf

    import leela_interp

    conf = Path(leela_interp.__file__).parent / "conf" / "config.yaml"
    gallery = OmegaConf.load(conf).report.gallery
    page = (tiny_run / "report.html").read_text()
    assert page.count(f"random (seed {gallery.seed})") == gallery.k > 0


def test_real_report_puzzle_funnel_is_puzzles_h5s(tiny_run, report):
    section = report["Puzzles (`puzzles.h5`)"]
    with h5py.File(tiny_run / "puzzles.h5", "r") as f:
        funnel = [[k, str(int(v))] for k, v in f["counts/filters"].attrs.items()]
        dt = f["puzzles/different_targets"][()]
    assert table(section, "Puzzles passing each filter")[1] == funnel
    assert f"Kept: {len(dt)} puzzles, {int(dt.sum())} with `different_targets`." in section


def test_real_report_patching_tables_are_patching_h5s(tiny_run, report):
    section = report["Activation patching (`patching.h5`)"]
    with h5py.File(tiny_run / "patching.h5", "r") as f:
        assert_funnel(section, f)
        cats = read_strings(f["category_names"])
        base = "residual/resid_post/summary"
        header, rows = table(section, "Residual patching at `resid_post`")
        assert header[0] == "layer" and sorted(header[1:]) == sorted(cats)
        mean = f[f"{base}/all/category_max_mean"][()]
        err = f[f"{base}/all/category_max_err2sigma"][()]
        n = f[f"{base}/all/category_max_n"][()]
        assert [r[0] for r in rows] == [str(layer) for layer in range(len(mean))] + ["n"]
        for name, column in zip(header[1:], list(zip(*rows))[1:]):
            c = cats.index(name)
            for layer, cell in enumerate(column[:-1]):
                assert shows(cell, mean[layer, c], err[layer, c]), (name, layer, cell)
            assert column[-1] == n_range(n[:, c]), name
        assert len(set(n[0])) > 1  # the categories' n differ (no later_targets on some PVs)
        # each split's headline: the layer of the largest follow-up-target mean, its n
        lead, other, third = (cats.index(c) for c in ("follow_up_targets", "other",
                                                      "third_target"))
        for subset in ("all", "different_targets", "same_targets"):
            mean = f[f"{base}/{subset}/category_max_mean"][()]
            err = f[f"{base}/{subset}/category_max_err2sigma"][()]
            n = f[f"{base}/{subset}/category_max_n"][()]
            m = re.search(rf"^`{subset}`: largest follow-up-target effect \(the paper's "
                          rf"3rd-move target\) at layer (\d+): (.+) vs other squares (.+); "
                          rf"PV\[2\]'s target alone (.+) \(n = (\d+) puzzles\)\.$",
                          section, flags=re.M)
            assert m, subset
            best = int(np.nanargmax(mean[:, lead]))
            assert int(m[1]) == best and int(m[5]) == n[best, lead], (subset, m[0])
            for cell, c in zip(m.groups()[1:4], (lead, other, third)):
                assert shows(cell, mean[best, c], err[best, c]), (subset, cell)
        assert_top_heads(section, "Head patching", f["heads"])


def test_real_report_ablation_tables_are_ablations_h5s(tiny_run, report):
    section = report["Ablations (`ablations.h5`)"]
    with h5py.File(tiny_run / "ablations.h5", "r") as f:
        assert_funnel(section, f)
        methods = [m for m in f["heads"] if isinstance(f["heads"][m], h5py.Group)]
        assert methods
        for method in methods:
            assert_top_heads(section, f"Head ablation `{method}`", f[f"heads/{method}"])
        e = f["edge"]
        caption = f"Single-edge ablation, layer {e.attrs['layer']} head {e.attrs['head']} "
        assert f"{caption}(query = 1st-move target, key = 3rd-move target); head chosen by: " \
               f"{e.attrs['chosen_by']}:" in section
        assert_variants(section, caption, e)
        assert_variants(section, "Piece-movement heads", f["piece_heads"])


def test_real_report_probe_cells_are_probes_h5s(tiny_run, report):
    section = report["Probes (`probes.h5`)"]
    with h5py.File(tiny_run / "probes.h5", "r") as f:
        nets, splits = read_strings(f["net"]), read_strings(f["split"])
        probes, targets = read_strings(f["probe"]), read_strings(f["target"])
        baselines = read_strings(f["baseline"])
        layers = f["layer"][()].tolist()
        mean, err, n_test = f["accuracy_mean"][()], f["accuracy_err"][()], f["n_test"][()]
        b_mean, b_err = f["baseline_mean"][()], f["baseline_err"][()]
    assert splits == ["all", "different_targets", "same_targets"]
    assert (mean > 0.1).sum() > 10 and (b_mean > 0.1).any()  # the cells are not all 0
    for s, split in enumerate(splits):
        for t, target in enumerate(targets):
            header, rows = table(section, f"Target `{target}`, split `{split}` (test puzzles "
                                          f"per seed: {n_range(n_test[s, t])}):")
            assert header == ["layer"] + [f"{p} ({net})" for net in nets for p in probes]
            assert [r[0] for r in rows] == [str(layer) for layer in layers]
            for li, row in enumerate(rows):
                cells = iter(row[1:])
                for ni in range(len(nets)):
                    for pi in range(len(probes)):
                        value = (mean[ni, s, pi, t, li], err[ni, s, pi, t, li])
                        assert shows(next(cells), *value), (split, target, li, ni, pi)
        header, rows = table(section, f"No-activation baselines, split `{split}`:")
        assert header == ["baseline", *targets] and [r[0] for r in rows] == baselines
        for b, row in enumerate(rows):
            for t, cell in enumerate(row[1:]):
                assert shows(cell, b_mean[s, b, t], b_err[s, b, t]), (split, row[0], t)


def test_outputs_made_from_another_puzzles_h5_are_flagged_and_probes_refuses(tiny_run,
                                                                            tmp_path):
    """Defect 10: after puzzles.h5 changes, the report names every output made from the old
    one, and the probes stage (whose hash now covers puzzles.h5) refuses a stale cache instead
    of reporting "up to date"."""
    import shutil

    from leela_interp.errors import ConfigError
    from leela_interp.outputs.report import sections
    from leela_interp.stages import probes
    from tiny_run import compose_config

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert not any("stale results" in line for line in sections(run) if isinstance(line, str))
    with h5py.File(run / "puzzles.h5", "r+") as f:  # another puzzles.h5: other bytes
        f.attrs["note"] = "rerun on fewer puzzles"
    warning = [line for line in sections(run) if isinstance(line, str) and "stale" in line]
    assert len(warning) == 1
    for name in ("activations.h5", "patching.h5", "ablations.h5", "probes.h5"):
        assert f"`{name}`" in warning[0]
    inputs = (tiny_run.parent / "puzzles.csv", tiny_run.parent / "strong.pb.gz",
              tiny_run.parent / "weak.pb.gz")
    with pytest.raises(ConfigError, match="made from another puzzles.h5.*rerun the activations"):
        probes.run(compose_config(inputs, run, "stage=probes"))
