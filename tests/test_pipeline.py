"""The pipeline as users run it: every stage in order, reruns that do no work, force=STAGE."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf.errors import InterpolationResolutionError

from tiny_run import compose_config, write_inputs

from leela_interp import cli
from leela_interp.board.encoding import CHESS_NUMBERING, TOKEN_NUMBERING
from leela_interp.cli import CONFIG_PATH
from leela_interp.identity import sha256_file
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.stages import PIPELINE, run_stages

CONF = Path(CONFIG_PATH)
CHECKOUT = Path(__file__).resolve().parents[1]
# Real Lichess rows (CC0), repeated under new ids.
ROWS = [
    "r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24,f2g3 e6e7 b2b1 b3c1 b1c1 h6c1",
    "5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27,d3d6 f8d8 d6d8 f6d8",
    "8/4R3/1p2P3/p4r2/P6p/1P3Pk1/4K3/8 w - - 1 64,e7f7 f5e5 e2f1 e5e6",
    "r2qr1k1/b1p2ppp/pp4n1/P1P1p3/4P1n1/B2P2Pb/3NBP1P/RN1QR1K1 b - - 1 16,b6c5 e2g4 h3g4 d1g4",
]
OUTPUTS = {"puzzles": "puzzles.h5", "activations": "activations.h5",
           "patching": "patching.h5", "ablations": "ablations.h5", "probes": "probes.h5",
           "report": "report.md"}


def make_inputs(root: Path) -> tuple[Path, Path, Path, Path]:
    """``(root, puzzle CSV, strong net, weak net)`` written into ``root`` (see ``config``)."""
    return (root, *write_inputs(root, ROWS, 24))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("pipeline"))


def config(setup, out_dir, *extra):
    return compose_config(setup[1:], out_dir, *extra)


def assert_one_square_numbering(out: Path) -> list[str]:
    """Every square-valued dataset of the stage files says how its squares are numbered: a
    square / query / key axis or token values (``random_key``, the probes' ``target`` axis) carry
    ``numbering = TOKEN_NUMBERING``; python-chess squares (``*_chess``) ``CHESS_NUMBERING``."""
    checked = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        leaf = name.rsplit("/", 1)[-1]
        numbering = obj.attrs.get("numbering")
        if leaf.endswith("_chess"):
            assert numbering == CHESS_NUMBERING, (path.name, name)
        elif {d.label for d in obj.dims} & {"square", "query", "key"} or \
                leaf == "random_key" or (path.name == "probes.h5" and name == "target"):
            assert numbering == TOKEN_NUMBERING, (path.name, name)
            checked.append(f"{path.name}:{name}")
        else:
            assert numbering in (None, TOKEN_NUMBERING, CHESS_NUMBERING), (path.name, name)

    for file in ("activations.h5", "patching.h5", "ablations.h5", "probes.h5"):
        path = out / file
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    assert any(c.startswith("activations.h5:clean/") for c in checked)
    assert {"patching.h5:square_category", "patching.h5:residual/resid_post/effect",
            "probes.h5:target"} <= set(checked)
    return checked


def mtimes(out: Path) -> dict[str, float]:
    return {stage: (out / name).stat().st_mtime_ns for stage, name in OUTPUTS.items()}


def test_full_pipeline_then_rerun_does_no_work_then_force_one_stage(setup, tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    run_stages(config(setup, out))
    first = time.perf_counter() - start
    before = mtimes(out)
    assert set(before) == set(OUTPUTS) and list(OUTPUTS)[:-1] == PIPELINE[:-1]
    assert_one_square_numbering(out)
    for name in ("activations.h5", "patching.h5", "ablations.h5", "probes.h5"):
        with h5py.File(out / name, "r") as f:  # the net under study filtered these puzzles
            assert f.attrs["puzzles_net"] == "same", name

    start = time.perf_counter()
    run_stages(config(setup, out))
    rerun = time.perf_counter() - start
    after = mtimes(out)
    # Nothing but the report (a summary, always rewritten) is touched, and it is fast.
    assert {k: v for k, v in after.items() if k != "report"} == \
        {k: v for k, v in before.items() if k != "report"}
    assert rerun < first / 3, (first, rerun)

    run_stages(config(setup, out, "force=patching"))
    forced = mtimes(out)
    for stage in ("puzzles", "activations"):
        assert forced[stage] == after[stage], stage
    for stage in ("patching", "ablations", "probes", "report"):
        assert forced[stage] > after[stage], stage


def test_a_net_that_did_not_filter_the_puzzles_is_warned_about_and_recorded(setup, tmp_path,
                                                                           caplog):
    root, csv, strong, weak = setup
    run_stages(config(setup, tmp_path / "first", "stage=puzzles"))
    other = write_random_net(root / "other.pb.gz", body="transformer", policy="attention",
                             d_model=32, layers=2, heads=4, d_ff=32, seed=7)
    out = tmp_path / "other"
    out.mkdir()
    shutil.copy(tmp_path / "first" / "puzzles.h5", out / "puzzles.h5")
    with caplog.at_level(logging.WARNING, logger="leela_interp"):
        run_stages(config(setup, out, "stage=[activations,patching,ablations,probes,report]",
                          f"model.path={other}", "ablations.method=[zero,mean]",
                          "ablations.max_puzzles=2", "ablations.edge.full_sweep=true",
                          "ablations.piece_heads.min_pv_length=3",
                          "ablations.piece_heads.heads.knight=[[0,1]]",
                          "ablations.piece_heads.heads.bishop=[[1,2]]",
                          "ablations.piece_heads.heads.rook=[[1,3]]"))
    warned = [r for r in caplog.records if "is not the strong net that filtered" in r.message]
    assert len(warned) == 4  # activations, patching, ablations, probes
    for name in ("activations.h5", "patching.h5", "ablations.h5", "probes.h5"):
        with h5py.File(out / name, "r") as f:
            assert f.attrs["puzzles_net"] == "different", name
            assert f.attrs["puzzles_strong_sha256"] == sha256_file(strong), name
    checked = assert_one_square_numbering(out)
    assert {"ablations.h5:edge/sweep", "ablations.h5:heads/mean_z",
            "ablations.h5:piece_heads/random_key"} <= set(checked)
    assert (out / "report.md").read_text().count("**Warning:** the network under study") == 4


def test_missing_input_names_the_stage_to_run(setup, tmp_path):
    from leela_interp.errors import ConfigError

    cfg = config(setup, tmp_path / "empty", "stage=probes")
    with pytest.raises(ConfigError, match="stage=activations|stage=puzzles"):
        run_stages(cfg)


def test_unknown_stage_and_bad_force(setup, tmp_path):
    from leela_interp.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        run_stages(config(setup, tmp_path, "stage=nope"))
    with pytest.raises(ConfigError, match="force='nope'"):
        run_stages(config(setup, tmp_path, "force=nope"))


def test_defaults_run_the_pipeline_on_the_shipped_nets_and_puzzles():
    """`leela-interp` with no overrides: every stage, on files the project ships in data/."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
        paper = compose("config", overrides=["puzzles=paper"])
    assert cfg.stage == "all"
    for path in (cfg.model.path, cfg.puzzles.source, cfg.puzzles.weak_model.path):
        assert Path(path).is_file() and Path(path).is_relative_to(CHECKOUT / "data"), path
    # puzzles=paper restores the paper's thresholds and asks for a source
    assert paper.puzzles.filters.hard_max_weak_prob == 0.05
    assert paper.puzzles.filters.correct_min_strong_prob == 0.5
    assert paper.puzzles.filters.forcing_min_weak_prob == 0.7
    assert cfg.puzzles.filters.hard_max_weak_prob > 0.05
    with pytest.raises(Exception, match="source"):
        str(paper.puzzles.source)


def test_data_defaults_follow_data_dir_or_name_the_key_to_pass(tmp_path, monkeypatch):
    """The defaults in data/ come from ``data_dir`` when set; with neither it nor a checkout
    data/ (an installed wheel) reading one stops with a ConfigError (OmegaConf wraps what a
    resolver raises) naming the key to pass."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"data_dir={tmp_path}"])
        bare = compose("config", overrides=["model.path=given.pb.gz"])
    assert cfg.model.path == str(tmp_path / "nets" / "strong-bt-64x4.pb.gz")
    assert cfg.puzzles.weak_model.path == str(tmp_path / "nets" / "weak-bt-32x2.pb.gz")
    monkeypatch.setattr(cli, "CHECKOUT_DATA", None)
    assert bare.model.path == "given.pb.gz"
    message = (r"ConfigError.*puzzles\.source defaults to data/puzzles/mined\.csv.*"
               r"pass puzzles\.source=FILE, or data_dir=FOLDER")
    with pytest.raises(InterpolationResolutionError, match=message):
        str(bare.puzzles.source)


def leela_interp(cwd: Path, *args: str) -> None:
    """Run the ``leela-interp`` command (this checkout's package) in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    subprocess.run([sys.executable, "-m", "leela_interp.cli", *args], cwd=cwd, env=env,
                   check=True, capture_output=True, timeout=300)


def test_hydra_writes_its_files_into_the_run_folder(tmp_path):
    """.hydra/ (and Hydra's log) land in out_dir, single runs and each job of a multirun; no
    ./outputs or ./multirun in the directory the command runs in, which stays the directory
    relative paths are resolved from (hydra.job.chdir=false)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["out_dir=runs/x"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "runs/x" and cfg.hydra.job.chdir is False

    leela_interp(tmp_path, "stage=report", "out_dir=runs/one")
    one = tmp_path / "runs" / "one"
    assert (one / ".hydra" / "config.yaml").is_file() and (one / "report.md").is_file()
    assert "out_dir=runs/one" in (one / ".hydra" / "overrides.yaml").read_text()

    # each job's own out_dir (named here by its threads, not by Hydra's job number)
    leela_interp(tmp_path, "-m", "stage=report", "out_dir=runs/sweep/threads${threads}",
                 "threads=1,2")
    sweep = tmp_path / "runs" / "sweep"
    for threads in (1, 2):
        job = sweep / f"threads{threads}"
        assert (job / "report.md").is_file()
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        assert f"threads={threads}" in overrides, overrides
    assert (sweep / "multirun.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "sweep"]


UNUSABLE_OUT_DIRS = {
    "not creatable": lambda tmp: "/proc/leela-interp-test",
    "a file": lambda tmp: str(tmp / "file"),
    "under a file": lambda tmp: str(tmp / "file" / "run"),
    "read-only folder": lambda tmp: str(tmp / "read-only" / "run"),
    "sweep root not creatable": lambda tmp: "/proc/leela-interp-test/${hydra:job.num}",
}


@pytest.mark.parametrize("kind", UNUSABLE_OUT_DIRS)
def test_an_unusable_out_dir_is_a_config_error_before_hydra_starts(tmp_path, kind):
    """leela-interp with an out_dir that cannot be a run folder stops with exit 1 and one
    line, a ConfigError naming out_dir and the value, before Hydra makes any folder (Hydra's
    own mkdir would end in a raw OSError); in a multirun, every value of a sweep over out_dir
    is checked. Hydra's flags that run nothing still work with such a value."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "read-only").mkdir(mode=0o555)
    if kind == "read-only folder" and os.access(tmp_path / "read-only", os.W_OK):
        pytest.skip("this user (root) can write in a read-only folder")
    out_dir = UNUSABLE_OUT_DIRS[kind](tmp_path)
    args = [f"out_dir={out_dir}"]
    if kind == "a file":  # a multirun sweep over out_dir: its bad value is found too
        args = ["-m", f"out_dir={tmp_path / 'good'},{out_dir}"]
    elif "sweep" in kind:
        args = ["-m", f"out_dir={out_dir}", "threads=1,2"]
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    command = [sys.executable, "-m", "leela_interp.cli"]
    proc = subprocess.run([*command, *args, "stage=report"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"leela_interp.errors.ConfigError: out_dir={out_dir!r} cannot be used as a run folder ("
    ) and lines[0].endswith("); give a folder you can write"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "read-only"]  # nothing made
    shown = subprocess.run([*command, "--cfg", "job", f"out_dir={out_dir}"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and f"out_dir: {out_dir}" in shown.stdout, shown.stderr


def test_inputs_dir_shares_the_earlier_stages_outputs(setup, tmp_path):
    """A sweep job reads puzzles.h5, activations.h5 and patching.h5 (the ablations stage's
    default edge head) from inputs_dir through symlinks in its own out_dir."""
    from leela_interp.stages.common import run_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("puzzles.h5", "activations.h5", "patching.h5", "probes.h5"):
        (shared / name).write_text(name)
    out = run_dir(config(setup, tmp_path / "job", f"inputs_dir={shared}"))
    linked = sorted(p.name for p in out.iterdir() if p.is_symlink())
    assert linked == ["activations.h5", "patching.h5", "puzzles.h5"]
    assert (out / "patching.h5").read_text() == "patching.h5"


def test_a_black_to_move_corruption_square_lands_in_patchings_corrupted_category(setup, tmp_path):
    """puzzles.h5's corruption_squares index patching.h5's square axis directly (one token
    numbering), for white and for black to move."""
    run_stages(config(setup, tmp_path, "stage=[puzzles,patching]", "patching.heads=false",
                      "patching.require_pv0_top=false"))
    with h5py.File(tmp_path / "puzzles.h5", "r") as f:
        squares = f["puzzles/corruption_squares"][()]
        chess_squares = f["puzzles/corruption_squares_chess"][()]
        white = f["puzzles/white_to_move"][()]
        has = f["puzzles/has_corruption"][()]
        targets = f["puzzles/pv_targets"][()]
    with h5py.File(tmp_path / "patching.h5", "r") as f:
        category = f["square_category"][()]
        corrupted = list(f["category_names"].asstr()[()]).index("corrupted")
    checked = {True: 0, False: 0}
    for i in np.flatnonzero(has):
        for token, square in zip(squares[i], chess_squares[i]):
            if token < 0 or token in (targets[i, 0], targets[i, 2]):
                continue  # first / third targets take priority over "corrupted"
            assert category[i, token] == corrupted, (i, token)
            if not white[i]:
                assert token == square ^ 56  # black's tokens are the ranks flipped
            checked[bool(white[i])] += 1
    assert checked[True] and checked[False], checked


def test_a_run_that_keeps_no_puzzle_ends_cleanly_saying_why(tmp_path, caplog):
    """Defect 7: zero kept puzzles used to crash ablations and probes; now every analysis stage
    is skipped with the reason and the report says there is nothing to analyse."""
    inputs = write_inputs(tmp_path, ROWS, 4)
    out = tmp_path / "run"
    run_stages(compose_config(inputs, out, "puzzles.filters.hard_max_weak_prob=0.0"))
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".h5", ".md")) == \
        ["puzzles.h5", "report.md"]
    skipped = [r.getMessage() for r in caplog.records if "nothing to analyse" in r.getMessage()]
    assert [m.split(":")[0] for m in skipped] == ["activations", "patching", "ablations",
                                                 "probes"]
    why = "kept 0 puzzles (no puzzle passed the 'hard' step of the funnel; 4 rows read)"
    assert why in skipped[0]
    assert f"**Nothing to analyse.** {out / 'puzzles.h5'} {why}" in (out / "report.md").read_text()
