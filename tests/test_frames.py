"""``leela_interp.outputs.frames.to_frame`` on a real tiny run: every finite value of every table's
datasets is one row, in order, with its axis values, and the puzzles' metadata joined by row."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

pd = pytest.importorskip("pandas", reason="pandas (the 'frames' extra) is not installed")

from leela_interp.errors import ConfigError  # noqa: E402
from leela_interp.outputs.frames import to_frame  # noqa: E402
from leela_interp.outputs.results import read_strings  # noqa: E402


def _check(df: pd.DataFrame, f: h5py.File, name: str, value: str) -> None:
    """``df``'s rows of dataset ``name`` against the dataset itself."""
    sub = df[df["dataset"] == name] if "dataset" in df else df
    arr = f[name][()]
    finite = np.isfinite(arr)
    np.testing.assert_array_equal(sub[value].to_numpy(), arr[finite])
    for axis, idx in enumerate(np.nonzero(finite)):
        ds = f[name]
        label = ds.dims[axis].label
        if len(ds.dims[axis]):  # a dimension scale names the coordinates
            coords = np.asarray(ds.dims[axis][0][()])
            coords = np.array([c.decode() if isinstance(c, bytes) else c for c in coords])
            np.testing.assert_array_equal(sub[label].to_numpy(), coords[idx])
        elif label + "s" in ds.attrs:
            np.testing.assert_array_equal(sub[label].to_numpy(),
                                          np.asarray(ds.attrs[label + "s"])[idx])
        elif label == "category":
            np.testing.assert_array_equal(sub[label].to_numpy(),
                                          np.asarray(ds.attrs["categories"])[idx])
        else:
            np.testing.assert_array_equal(sub[label].to_numpy(), idx)


@pytest.mark.parametrize("file", ["patching.h5", "ablations.h5"])
def test_effect_tables_with_puzzle_metadata(tiny_run, file):
    df = to_frame(tiny_run / file)
    with h5py.File(tiny_run / file) as f, h5py.File(tiny_run / "puzzles.h5") as p:
        names = []
        f.visititems(lambda n, o: names.append(n) if n.endswith("/effect") or n == "effect"
                     else None)
        assert sorted(df["dataset"].unique()) == sorted(names) and len(names) >= 2
        for name in names:
            _check(df, f, name, "effect")
        ids = np.array(read_strings(f["puzzle_id"]))
        fens = np.array(read_strings(p["puzzles/fen"]))
        rows = df["puzzle"].to_numpy()
        np.testing.assert_array_equal(df["puzzle_id"].to_numpy(), ids[rows])
        np.testing.assert_array_equal(df["fen"].to_numpy(), fens[rows])
        np.testing.assert_array_equal(df["analysed"].to_numpy(), f["analysed"][()][rows])
        assert df["analysed"].all()  # NaN effects of rows not analysed are dropped
    full = to_frame(tiny_run / file, "heads/" + ("effect" if file == "patching.h5" else
                                                 "zero/effect"), dropna=False)
    assert {"layer", "head", "effect", "puzzle_id"} <= set(full.columns)
    assert full["effect"].isna().any() and (~full["analysed"]).any()


def test_probe_table_uses_the_dimension_scales(tiny_run):
    df = to_frame(tiny_run / "probes.h5")
    with h5py.File(tiny_run / "probes.h5") as f:
        _check(df, f, "accuracy", "accuracy")
        assert {"net", "split", "probe", "target", "layer", "seed"} <= set(df.columns)
        assert "puzzle_id" not in df  # no puzzle axis: nothing to join
        assert set(df["net"]) <= set(read_strings(f["net"]))


def test_bad_dataset_names_are_clear_errors(tiny_run):
    with pytest.raises(ConfigError, match="no dataset 'heads/nope'.*heads/effect"):
        to_frame(tiny_run / "patching.h5", "heads/nope")
    with pytest.raises(ConfigError, match="no default dataset"):
        to_frame(tiny_run / "puzzles.h5")
