"""Two puzzle shards merged equal the unsharded run's output."""

import h5py
import numpy as np
import pytest

from test_puzzle_pipeline import OPEN, PERMISSIVE, config, nets, repeated, write_csv  # noqa: F401

from leela_interp.errors import ConfigError
from leela_interp.puzzles.pipeline import build_puzzles
from leela_interp.puzzles.puzzle_set import PuzzleSet
from leela_interp.puzzles.shards import merge_puzzles


def _contents(path):
    out = {}
    with h5py.File(path, "r") as f:
        for name, ds in f["puzzles"].items():
            out[name] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
        for sub in f["counts"]:
            out[f"counts/{sub}"] = dict(f["counts"][sub].attrs)
        out["counts"] = {k: v for k, v in f["counts"].attrs.items() if k != "other_shard"}
        out["puzzles@attrs"] = dict(f["puzzles"].attrs)
        out["@attrs"] = {k: v for k, v in f.attrs.items() if k in ("history",
                                                                    "token_input_format")}
    return out


def test_two_shards_merged_equal_the_unsharded_run(nets, tmp_path):  # noqa: F811
    source = write_csv(tmp_path / "p.csv", repeated(14))
    common = dict(filters=OPEN, corruptions_enabled=True, thresholds=PERMISSIVE)
    whole = build_puzzles(config(source, nets, **common), tmp_path / "whole" / "puzzles.h5").path
    shards = [build_puzzles(config(source, nets, shard=i, num_shards=2, **common),
                            tmp_path / f"s{i}" / "puzzles.h5").path for i in range(2)]
    merged = merge_puzzles(shards, tmp_path / "merged" / "puzzles.h5")
    a, b = _contents(whole), _contents(merged)
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            assert x == y, key
        elif x.dtype.kind == "f":  # batches hold other puzzles: float32 rounding differs
            np.testing.assert_allclose(x, y, atol=1e-5, equal_nan=True, err_msg=key)
        else:
            assert np.array_equal(x, y), key
    assert len(a["id"]) > 4
    assert PuzzleSet.load(merged).history == "none"
    with pytest.raises(ConfigError, match="repeat"):
        merge_puzzles([shards[0], shards[0]], tmp_path / "bad.h5")
