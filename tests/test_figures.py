"""Figures: integer layer ticks, and "no data" instead of an empty panel."""

import h5py
import numpy as np
import pytest
from matplotlib.figure import Figure

from leela_interp import figures
from leela_interp.stages import probes as probes_stage
from test_report import write_probes


@pytest.fixture
def saved(monkeypatch):
    """The figures handed to ``savefig`` (the files are written too)."""
    out = []
    real = Figure.savefig

    def keep(fig, *args, **kwargs):
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


def test_probe_panels_have_integer_layer_ticks_and_say_no_data(tmp_path, saved):
    write_probes(tmp_path / "probes.h5")
    with h5py.File(tmp_path / "probes.h5", "a") as f:
        f["accuracy_mean"][0, 1, 0, 1] = np.nan  # no `move` label in different_targets
    png = probes_stage.plot(tmp_path / "probes.h5", tmp_path / "figures" / "probes.png")
    assert png.exists()
    fig = saved[-1]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4
    for ax in panels:
        assert list(ax.get_xticks()) == [0, 1]
    empty = [ax.get_title() for ax in panels if ax.texts]
    assert empty == ["move | different_targets"]
    assert "no data" in panels[-1].texts[0].get_text()
