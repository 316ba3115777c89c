"""Figures for papers: PNG at >= 200 dpi beside SVG and PDF, integer layer ticks, n per series,
error bars offset from each other, heatmap cells with their values, "no data" instead of an empty
panel."""

import h5py
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from leela_interp.outputs import figures
from leela_interp.experiments import probing
from test_report import write_probes


@pytest.fixture
def saved(monkeypatch):
    """The figures handed to ``savefig``, each once (the files are written too)."""
    out = []
    real = Figure.savefig

    def keep(fig, *args, **kwargs):
        if not any(f is fig for f in out):
            out.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return out


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_empty_panels_say_no_data(tmp_path, saved):
    nan = np.full((3, 2), np.nan)
    figures.category_by_layer(nan, nan, ["a", "b"], tmp_path / "c.png", title="t")
    figures.layer_head_heatmap(nan, tmp_path / "h.png", title="t")
    figures.percentile_curves({"x": np.full(4, np.nan)}, tmp_path / "p.png", title="t")
    assert [texts(f).count(figures.NO_DATA) for f in saved] == [1, 1, 2]
    figures.category_by_layer(np.ones((3, 2)), np.zeros((3, 2)), ["a", "b"],
                              tmp_path / "d.png", title="t")
    assert texts(saved[-1]) == []


def test_probe_panels_have_integer_layer_ticks_their_n_and_say_no_data(tmp_path, saved):
    write_probes(tmp_path / "probes.h5")
    with h5py.File(tmp_path / "probes.h5", "a") as f:
        f["accuracy_mean"][0, 1, 0, 1] = np.nan  # no `move` label in different_targets
    png = probing.plot(tmp_path / "probes.h5", tmp_path / "figures" / "probes.png")
    assert png.exists()
    fig = saved[-1]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4
    for ax in panels:
        assert list(ax.get_xticks()) == [0, 1]
    # each panel gives its test-set size per seed (n_test[split, target])
    assert [ax.get_title() for ax in panels] == [
        "target | all (n_test = 2)", "target | different_targets (n_test = 3)",
        "move | all (n_test = 2)", "move | different_targets (n_test = 3)"]
    empty = [ax.get_title() for ax in panels if ax.texts]
    assert empty == ["move | different_targets (n_test = 3)"]
    assert "no data" in panels[-1].texts[0].get_text()


def test_every_figure_is_a_png_of_at_least_200_dpi_beside_its_svg_and_pdf(tmp_path):
    png = figures.category_by_layer(np.ones((3, 2)), np.zeros((3, 2)), ["a", "b"],
                                    tmp_path / "c.png", title="t")
    assert png == tmp_path / "c.png"
    with Image.open(png) as im:
        dpi = im.info["dpi"]
        assert min(dpi) >= 199.5  # PNG stores pixels per metre: 200 dpi reads back 199.9994
        assert im.size == (round(7 * 200), round(4.2 * 200))
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")


def test_series_are_offset_along_the_layer_axis_and_give_their_n(tmp_path, saved):
    mean = np.array([[1.0, 1.0, np.nan], [2.0, 2.0, np.nan], [3.0, 3.0, np.nan]])
    n = np.array([[5, 4, 0]] * 3)
    figures.category_by_layer(mean, np.full((3, 3), 0.5), ["first_target", "other", "corrupted"],
                              tmp_path / "c.png", title="t", n=n)
    ax = saved[-1].axes[0]
    xs = [bars.lines[0].get_xdata() for bars in ax.containers]  # one errorbar per series
    assert len(xs) == 2  # the all-NaN category is not drawn
    assert np.all(np.asarray(xs[0]) < np.asarray(xs[1]))  # same layers, bars side by side
    assert np.allclose(np.mean(xs, axis=0), [0, 1, 2])  # centred on the integer layer ticks
    assert list(ax.get_xticks()) == [0, 1, 2]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["1st-move target (n=5)", "other squares (n=4)"]


def test_head_heatmap_cells_show_mean_and_error(tmp_path, saved):
    mean = np.array([[0.5, -0.25], [np.nan, 1.0]])
    err = np.array([[0.1, 0.2], [0.3, np.nan]])
    figures.layer_head_heatmap(mean, tmp_path / "h.png", title="t", err=err)
    cells = sorted(texts(saved[-1]))
    assert cells == ["-0.25\n±0.20", "0.50\n±0.10", "1.00"]  # NaN mean: blank; NaN error: none
