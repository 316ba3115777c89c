"""The config schema (issue 14, defects 6, 9, 11): every bad value fails before any work with a
message naming the key, the value and what is allowed; a single name where a list belongs is a
one-item list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from leela_interp.cli import CONFIG_PATH
from leela_interp.errors import ConfigError, WeightsFormatError
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.puzzles.oracle import StockfishNotFoundError
from leela_interp.stages import run_stages
from leela_interp.stages.schema import validate


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Path:
    return write_random_net(tmp_path_factory.mktemp("net") / "n.pb.gz", seed=1, channels=8,
                            blocks=1, se_channels=2)


@pytest.mark.parametrize("override, words", [
    ("model.batch_size=-1", ["model.batch_size=-1", ">= 1"]),
    ("model.batch_size=0", ["model.batch_size=0", ">= 1"]),
    ("model.batch_size=abc", ["model.batch_size='abc'", "int"]),
    ("model.dtype=foo", ["model.dtype='foo'", "float32", "bfloat16"]),
    ("threads=abc", ["threads='abc'", "null or int"]),
    ("threads=-1", ["threads=-1", ">= 1 or null"]),
    ("probes.seeds=[]", ["probes.seeds=[]", "at least 1"]),
    ("patching.chunk_size=0", ["patching.chunk_size=0", ">= 1"]),
    ("ablations.chunk_size=0", ["ablations.chunk_size=0", ">= 1"]),
    ("probes.train_fraction=2", ["probes.train_fraction=2.0", "between 0.0 and 1.0"]),
    ("patching.sites=nope", ["patching.sites", "'nope'", "resid_post"]),
    ("patching.overlap_rule=both", ["patching.overlap_rule='both'", "third_only"]),
    ("ablations.puzzles=some", ["ablations.puzzles='some'", "corrupted"]),
    ("ablations.piece_heads.piece_rule=final", ["piece_rule='final'", "moved"]),
    ("ablations.piece_heads.random_key=none", ["random_key='none'", "exclude_third_move"]),
    ("ablations.edge.layer=-1", ["ablations.edge.layer=-1", ">= 0 or null"]),
    ("ablations.method=[zero,nope]", ["ablations.method", "'nope'", "resample"]),
    ("activations.boards=dirty", ["activations.boards='dirty'", "both"]),
    ("puzzles.history=all", ["puzzles.history='all'", "setup"]),
    ("report.gallery.k=-2", ["report.gallery.k=-2", ">= 0"]),
    ("patching.require_pv0_top=maybe", ["patching.require_pv0_top='maybe'", "bool"]),
    ("+modle.path=x", ["'modle'", "not in the schema"]),
])
def test_bad_values_are_refused_naming_key_value_and_choices(override, words):
    with pytest.raises(ConfigError) as err:
        validate(cfg_of(override))
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("key, value, expected", [
    ("puzzles.exclude_themes", "mateIn1", ["mateIn1"]),
    ("puzzles.include_themes", "fork", ["fork"]),
    ("probes.seeds", "3", [3]),
    ("probes.layers", "2", [2]),
    ("patching.sites", "resid_pre", ["resid_pre"]),
    ("ablations.method", "zero", ["zero"]),
    ("activations.hooks", "blocks.0.hook_resid_post", ["blocks.0.hook_resid_post"]),
])
def test_a_single_name_for_a_list_key_is_a_one_item_list(key, value, expected):
    """Defect 6: ``exclude_themes=mateIn1`` was the letters of mateIn1."""
    cfg = validate(cfg_of(f"{key}={value}"))
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(OmegaConf.select(cfg, key)) == expected


def test_the_defaults_and_every_puzzles_preset_pass():
    for preset in ("project", "paper", "strict"):
        validate(cfg_of(f"puzzles={preset}"))


def test_network_files_are_checked_before_any_work(tmp_path, net):
    out = tmp_path / "run"
    for key in ("model.path", "puzzles.weak_model.path"):
        for bad, why in ((tmp_path / "missing.pb.gz", "no such file"), (tmp_path, "a folder")):
            with pytest.raises(WeightsFormatError) as err:
                run_stages(cfg_of("stage=puzzles", f"out_dir={out}", f"model.path={net}",
                                  f"puzzles.source={net}", f"{key}={bad}"))
            assert f"{bad}: cannot read network file ({why}" in str(err.value)
            assert f"pass {key}=FILE" in str(err.value)
    assert not out.exists()  # nothing was done, not even the run folder


def test_a_data_dir_without_the_default_files_says_what_to_pass(tmp_path, monkeypatch):
    """The defaults name files of ``data_dir``; one that lacks them stops before any work,
    naming the file and the key to pass (relative paths: from the folder the run started in)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsFormatError, match=f"{tmp_path}/nets/strong-bt-64x4.pb.gz: cannot "
                       "read network file .no such file.: pass model.path=FILE"):
        run_stages(cfg_of("stage=puzzles", f"out_dir={tmp_path / 'run'}",
                          f"data_dir={tmp_path}"))
    with pytest.raises(WeightsFormatError, match="relative paths are from the folder you run "
                       f"in, {tmp_path}"):
        run_stages(cfg_of("stage=activations", f"out_dir={tmp_path / 'run'}",
                          "model.path=nets/x.pb.gz"))
    assert not (tmp_path / "run").exists()


def test_puzzle_source_device_and_stockfish_are_checked(tmp_path, net):
    base = ("stage=puzzles", f"out_dir={tmp_path / 'run'}", f"model.path={net}",
            f"puzzles.weak_model.path={net}")
    with pytest.raises(ConfigError, match="puzzles.source='.*nope.csv': no such file"):
        run_stages(cfg_of(*base, f"puzzles.source={tmp_path / 'nope.csv'}"))
    with pytest.raises(ConfigError, match="puzzles.source=.*: a folder, not a file"):
        run_stages(cfg_of(*base, f"puzzles.source={tmp_path}"))
    fake = tmp_path / "stockfish"
    fake.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(fake, 0o755)
    with pytest.raises(StockfishNotFoundError, match="did not start as a UCI engine"):
        run_stages(cfg_of(*base, f"puzzles.source={net}", "puzzles.oracle.enabled=true",
                          f"puzzles.oracle.path={fake}"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="model.device='cuda'.* no CUDA device"):
            run_stages(cfg_of(*base, f"puzzles.source={net}", "model.device=cuda"))


def test_inspect_of_a_non_hdf5_file_and_an_unwritable_out_dir(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    with pytest.raises(ConfigError, match="notes.txt': not an HDF5 file"):
        run_stages(cfg_of("stage=inspect", f"++path={text}"))
    with pytest.raises(ConfigError, match="out_dir='/proc/attack' cannot be used"):
        run_stages(cfg_of("stage=report", "out_dir=/proc/attack"))


def test_the_schemas_choices_are_the_modules_own():
    """The schema copies each module's tuple of choices (it imports no torch): they must agree."""
    from leela_interp.experiments import attribution
    from leela_interp.experiments import interventions as iv
    from leela_interp.experiments import piece_heads as ph
    from leela_interp.network import loading
    from leela_interp.puzzles import config, puzzle
    from leela_interp.stages import schema

    assert schema.PATCHING_METHODS == tuple(attribution.METHODS)
    assert schema.RESIDUAL_SITES == tuple(iv.RESIDUAL_SITES)
    assert schema.OVERLAP_RULES == tuple(iv.OVERLAP_RULES)
    assert schema.PIECE_RULES == tuple(ph.PIECE_RULES)
    assert schema.RANDOM_KEY_RULES == tuple(ph.RANDOM_KEY_RULES)
    assert set(schema.DTYPES) == set(loading.DTYPES)
    assert schema.HISTORIES == tuple(puzzle.HISTORIES)
    assert schema.POSITIONS == tuple(config.POSITIONS)
