"""Two puzzle shards merged equal the unsharded run's output."""

import logging

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


# --------------------------------------------------------------------------- sharded stages


def _stage_config(out, net, *extra):
    from hydra import compose, initialize_config_dir

    from leela_interp.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("config", overrides=[f"out_dir={out}", f"model.path={net}", "threads=1",
                                            *extra])


@pytest.fixture(scope="module")
def shard_inputs(tmp_path_factory):
    """A folder holding puzzles.h5 (ten puzzles, two without a corrupted board) and a tiny
    random transformer."""
    from test_activations import make_puzzle_set

    from leela_interp.network.lc0.random_net import write_random_net

    folder = tmp_path_factory.mktemp("shard_inputs")
    with h5py.File(folder / "puzzles.h5", "w") as f:
        make_puzzle_set().write(f.require_group("puzzles"))
    net = write_random_net(folder / "net.pb.gz", body="transformer", policy="attention")
    return folder, net


def _activations(out, inputs, net, *extra):
    from leela_interp.stages import run_stages

    # batch 1: every forward pass sees one board, as in the unsharded run (float32 results
    # can depend on what else is in the batch)
    cfg = _stage_config(out, net, "stage=activations", f"inputs_dir={inputs}",
                        "activations.batch_size=1",
                        "activations.hooks=[blocks.*.hook_resid_post,"
                        "blocks.0.attn.hook_pattern]", *extra)
    run_stages(cfg)
    return cfg


def test_activation_shards_merged_equal_the_unsharded_run(shard_inputs, tmp_path):
    from leela_interp.experiments.activations import check_cache
    from leela_interp.identity import sha256_file
    from leela_interp.outputs.results import diff_files
    from leela_interp.stages import run_stages
    from leela_interp.stages.activations import stage_config

    inputs, net = shard_inputs
    whole_cfg = _activations(tmp_path / "whole", inputs, net)
    folders = [tmp_path / f"s{k}" for k in range(3)]
    for k, folder in enumerate(folders):  # 10 rows split 3 ways: 4, 3, 3
        _activations(folder, inputs, net, f"activations.shard={k}", "activations.num_shards=3")
        assert (folder / f"activations.shard-{k}-of-3.h5").exists()
        assert not (folder / "activations.h5").exists()
    merged = tmp_path / "merged"
    cfg = _stage_config(merged, net, "stage=merge", "merge.stage=activations",
                        f"inputs_dir={inputs}", "activations.batch_size=4",
                        f"merge.inputs=[{','.join(map(str, reversed(folders)))}]")
    run_stages(cfg)
    whole = tmp_path / "whole" / "activations.h5"
    assert diff_files(whole, merged / "activations.h5", ignore_attrs=("command",)) == []
    # the merged file is up to date for an unsharded run's config there
    assert check_cache(merged / "activations.h5", network_sha256=sha256_file(net),
                       puzzles_sha256=sha256_file(inputs / "puzzles.h5"),
                       config=stage_config(whole_cfg))


def test_bad_activation_merges_are_refused(shard_inputs, tmp_path, monkeypatch):
    from leela_interp.stages import run_stages

    inputs, net = shard_inputs
    for k, n in ((0, 2), (1, 2), (0, 3)):
        _activations(tmp_path / f"s{k}of{n}", inputs, net, f"activations.shard={k}",
                     f"activations.num_shards={n}")
    _activations(tmp_path / "s1of2clean", inputs, net, "activations.shard=1",
                 "activations.num_shards=2", "activations.boards=clean")

    def merge(*folders):
        run_stages(_stage_config(tmp_path / "merged", net, "stage=merge",
                                 "merge.stage=activations", f"inputs_dir={inputs}",
                                 f"merge.inputs=[{','.join(f's{f}' for f in folders)}]"))

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"mix shards of runs split \[2, 3\] ways"):
        merge("0of2", "1of2", "0of3")
    with pytest.raises(ConfigError, match=r"shards \[1\] of 2 of activations.h5 are missing"):
        merge("0of2")
    with pytest.raises(ConfigError, match="shard 0 of 2 of activations.h5 is in merge.inputs "
                                          "twice"):
        merge("0of2", "1of2", "0of2")
    with pytest.raises(ConfigError, match="made with another config"):
        merge("0of2", "1of2clean")
    with pytest.raises(ConfigError, match="no shard of activations.h5"):
        run_stages(_stage_config(tmp_path / "merged", net, "stage=merge",
                                 "merge.stage=activations", f"merge.inputs=[{inputs}]"))
    with pytest.raises(ConfigError, match=r"activations.shard=2 with activations.num_shards=2"):
        _activations(tmp_path / "bad", inputs, net, "activations.shard=2",
                     "activations.num_shards=2")


def test_patching_shards_merged_equal_the_unsharded_run(shard_inputs, tmp_path, caplog):
    """Three shards of patching (8 of the 10 puzzles considered, chunks of 3) merged: the rows
    become the unsharded run's chunks, and the merge finishes the file as that run does (the
    summaries over every puzzle, head-pair joint patching of its top heads, the funnel)."""
    from leela_interp.outputs.results import diff_files
    from leela_interp.stages import run_stages

    inputs, net = shard_inputs
    common = [f"inputs_dir={inputs}", "model.batch_size=1", "patching.require_pv0_top=false",
              "patching.max_puzzles=8", "patching.chunk_size=3", "patching.head_pairs.top_n=2",
              "patching.figures=false"]
    run_stages(_stage_config(tmp_path / "whole", net, "stage=patching", *common))
    folders = [tmp_path / f"s{k}" for k in range(3)]
    for k, folder in enumerate(folders):
        run_stages(_stage_config(folder, net, "stage=patching", *common,
                                 f"patching.shard={k}", "patching.num_shards=3"))
        assert (folder / f"patching.shard-{k}-of-3.h5").exists()
        assert not (folder / "patching.h5").exists()
    merged = tmp_path / "merged"
    with caplog.at_level(logging.INFO):
        run_stages(_stage_config(merged, net, "stage=merge", "merge.stage=patching", *common,
                                 f"merge.inputs=[{','.join(map(str, folders))}]"))
    assert "patching: resuming, 0 of 3 chunks left" in caplog.text  # no row patched again
    whole = tmp_path / "whole" / "patching.h5"
    with h5py.File(whole, "r") as f:
        assert f["analysed"][()].sum() >= 4 and "heads/pairs/joint_effect" in f
    assert diff_files(whole, merged / "patching.h5", ignore_attrs=("command",)) == []
    assert sorted(p.name for p in merged.iterdir() if "patching" in p.name) == ["patching.h5"]
    with pytest.raises(ConfigError, match=r"another config than this merge's: patching.chunk_si"
                                          r"ze: 3 != 4"):
        run_stages(_stage_config(tmp_path / "merged2", net, "stage=merge",
                                 "merge.stage=patching", *common, "patching.chunk_size=4",
                                 f"merge.inputs=[{','.join(map(str, folders))}]"))


def _ablation_common(inputs, edge=("ablations.edge.layer=0", "ablations.edge.head=1")):
    return [f"inputs_dir={inputs}", "model.batch_size=1", "ablations.require_pv0_top=false",
            "ablations.max_puzzles=8", "ablations.chunk_size=3", *edge,
            "ablations.piece_heads.heads.knight=[[0,0]]",
            "ablations.piece_heads.heads.rook=[[0,1]]", "ablations.piece_heads.min_pv_length=3",
            "ablations.figures=false"]


def _ablation_shards(tmp_path, net, n, *settings):
    from leela_interp.stages import run_stages

    folders = [tmp_path / f"a{k}of{n}" for k in range(n)]
    for k, folder in enumerate(folders):
        run_stages(_stage_config(folder, net, "stage=ablations", *settings,
                                 f"ablations.shard={k}", f"ablations.num_shards={n}"))
    return folders


def test_ablation_shards_merged_equal_the_unsharded_run(shard_inputs, tmp_path, caplog):
    """Three shards of ablations (8 of the 10 puzzles considered, chunks of 3) merged: every
    dataset equals the unsharded run's, the mean head outputs and resample donors (over every
    considered puzzle), the piece heads' seeded random squares and the single-edge head (the
    top head of the patching.h5 every shard reads through inputs_dir) included."""
    from leela_interp.outputs.results import diff_files
    from leela_interp.stages import run_stages

    shared, net = shard_inputs
    inputs = tmp_path / "inputs"  # puzzles.h5 and a patching.h5, as after the patching merge
    inputs.mkdir()
    (inputs / "puzzles.h5").symlink_to(shared / "puzzles.h5")
    run_stages(_stage_config(inputs, net, "stage=patching", "patching.require_pv0_top=false",
                             "patching.figures=false"))
    common = _ablation_common(inputs, edge=())
    run_stages(_stage_config(tmp_path / "whole", net, "stage=ablations", *common))
    folders = _ablation_shards(tmp_path, net, 3, *common)
    for k, folder in enumerate(folders):
        assert (folder / f"ablations.shard-{k}-of-3.h5").exists()
        assert not (folder / "ablations.h5").exists()
    merged = tmp_path / "merged"
    with caplog.at_level(logging.INFO):
        run_stages(_stage_config(merged, net, "stage=merge", "merge.stage=ablations", *common,
                                 f"merge.inputs=[{','.join(map(str, folders))}]"))
    assert "ablations: resuming, 0 of 3 chunks left" in caplog.text  # no row ablated again
    whole = tmp_path / "whole" / "ablations.h5"
    with h5py.File(whole, "r") as f:
        assert f["analysed"][()].sum() >= 4 and f["edge"].attrs["choice"] == "patching"
        assert {"heads/mean_z", "heads/resample/effect", "edge/effect",
                "piece_heads/effect"} <= set(_names(f))
        # the random-square control is seeded by the puzzle's row: some row that has one is
        # not its shard's row 0 (the seed would differ if a shard used its own numbering)
        assert any(i >= 3 or i % 3 for i in np.flatnonzero(f["piece_heads/random_key"][()] >= 0))
    # edge@source_file names the run folder's own patching.h5 (its sha256 is compared)
    assert diff_files(whole, merged / "ablations.h5",
                      ignore_attrs=("command", "source_file")) == []
    assert sorted(p.name for p in merged.iterdir() if "ablations" in p.name) == ["ablations.h5"]


def _names(f):
    out = []
    f.visit(out.append)
    return out


def test_bad_ablation_merges_are_refused(shard_inputs, tmp_path):
    from leela_interp.stages import run_stages

    inputs, net = shard_inputs
    common = [*_ablation_common(inputs), "ablations.method=[zero]",
              "ablations.edge.enabled=false"]
    folders = _ablation_shards(tmp_path, net, 2, *common)

    def merge(*extra):
        run_stages(_stage_config(tmp_path / "merged", net, "stage=merge",
                                 "merge.stage=ablations", *common, *extra,
                                 f"merge.inputs=[{','.join(map(str, folders))}]"))

    with pytest.raises(ConfigError, match=r"another config than this merge's: ablations.chunk_"
                                          r"size: 3 != 4"):
        merge("ablations.chunk_size=4")
    with pytest.raises(ConfigError, match="leave ablations.shard and ablations.num_shards out"):
        merge("ablations.num_shards=2")
    with pytest.raises(ConfigError, match=r"ablations.shard=2 with ablations.num_shards=2"):
        run_stages(_stage_config(tmp_path / "bad", net, "stage=ablations", *common,
                                 "ablations.shard=2", "ablations.num_shards=2"))
    assert not (tmp_path / "merged" / "ablations.h5").exists()
