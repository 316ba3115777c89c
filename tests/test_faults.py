"""Fault injection (issue 14): a stage killed at any write point, or at any instant, then run
again with the same command, ends with exactly the output of an uninterrupted run; two runs on
one folder leave one complete output and a clear error.

Kills hit a forked child at every :func:`leela_interp.outputs.results.write_point` of the stage (and
after delays spread over its run time); the rerun is the same ``run_stages(cfg)``. A few
kills use the real ``leela-interp`` command in a subprocess (``tests/faults.py``).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import faults
from leela_interp.cli import CONFIG_PATH
from leela_interp.errors import RunFolderInUseError
from leela_interp.experiments.patching import PAIRS_KEY
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.outputs.results import FAULT_ENV, is_complete
from leela_interp.stages import run_stages
from leela_interp.stages.common import LOCK, lock_run_dir
from test_activations import make_puzzle_set
from test_interventions import PIECE_HEADS, TRANSFORMER, write_fixture
from test_probes import _write_puzzles
from tiny_run import ROWS, compose_config, write_inputs

#: Per-run measurements in probes.h5: differ between any two runs.
RUN_SPECIFIC = ("peak_rss_mb",)


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Path:
    return write_random_net(tmp_path_factory.mktemp("net") / "net.pb.gz", seed=3, channels=8,
                            blocks=3, se_channels=2)


def config(out: Path, net: Path, stage: str, *extra: str):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("config", overrides=[
            f"stage={stage}", f"out_dir={out}", f"model.path={net}", "threads=1",
            "activations.batch_size=3", "model.batch_size=8", "probes.seeds=[0]",
            "probes.splits=[all]", "probes.layers=[0,2]", "probes.probes=[bilinear]",
            "probes.bilinear.epochs=1", "probes.baselines=[majority]", "probes.threads=1",
            "probes.targets=[{name:target,ply:2,square:to,condition:{ply:0,square:to}}]", *extra])


def copy_inputs(template: Path, to: Path) -> Path:
    shutil.copytree(template, to, ignore=shutil.ignore_patterns(LOCK))
    return to


@pytest.fixture(scope="module")
def activations_inputs(tmp_path_factory) -> Path:
    """A run folder holding puzzles.h5: ten puzzles, eight with a corrupted board."""
    folder = tmp_path_factory.mktemp("activations_inputs")
    with h5py.File(folder / "puzzles.h5", "w") as f:
        make_puzzle_set().write(f.require_group("puzzles"))
    return folder


@pytest.fixture(scope="module")
def probes_inputs(tmp_path_factory, net) -> Path:
    """A run folder holding puzzles.h5 (20 real puzzles) and their activations.h5."""
    folder = tmp_path_factory.mktemp("probes_inputs")
    _write_puzzles(folder / "puzzles.h5")
    run_stages(config(folder, net, "activations", "activations.boards=clean"))
    return folder


def kill_everywhere(tmp_path: Path, inputs: Path, cfg_of, outputs, *, same_bytes=(),
                    delays=(0.2, 0.5, 0.8), raises: bool = False) -> list[str]:
    """Kill the stage at each of its write points, and after each fraction ``delays`` of its
    uninterrupted run time (with ``raises``, also raise an exception at each write point);
    rerun; compare with the uninterrupted run's outputs. Every run uses the same folder
    (``tmp_path/run``), so paths recorded in the files agree too."""
    run, ref = tmp_path / "run", tmp_path / "reference"
    start = time.perf_counter()
    run_stages(cfg_of(copy_inputs(inputs, run)))
    duration = time.perf_counter() - start
    run.rename(ref)
    labels = faults.write_points(lambda: run_stages(cfg_of(copy_inputs(inputs, run))),
                                 tmp_path / "points.log")
    faults.assert_same_files(ref, run, outputs, same_bytes=same_bytes, ignore_attrs=RUN_SPECIFIC)
    kills = [{"fault": f"kill:{k}"} for k in range(1, len(labels) + 1)]
    kills += [{"kill_after_s": duration * d} for d in delays]
    kills += [{"fault": f"raise:{k}"} for k in range(1, len(labels) + 1) if raises]
    for kill in kills:
        shutil.rmtree(run)
        cfg = cfg_of(copy_inputs(inputs, run))
        code = faults.in_child(lambda: run_stages(cfg), **kill)
        expected = 1 if kill.get("fault", "").startswith("raise") else -9
        assert code == expected or "kill_after_s" in kill, (kill, code)
        for name in outputs:  # a file under its final name is always complete
            assert not (run / name).exists() or is_complete(run / name), (kill, name)
        run_stages(cfg)  # the same command
        faults.assert_same_files(ref, run, outputs, same_bytes=same_bytes,
                                 ignore_attrs=RUN_SPECIFIC)
    return labels


def test_activations_killed_at_every_write_point_equals_uninterrupted(tmp_path, net,
                                                                      activations_inputs):
    labels = kill_everywhere(tmp_path, activations_inputs,
                             lambda out: config(out, net, "activations"), ["activations.h5"],
                             same_bytes=["activations.h5"])
    # layout, then per batch of 3 rows: flush, journal written, journal renamed; then finish
    assert labels[0] == "activations.h5.partial: layout written"
    assert sum("flushed" in label for label in labels) == 4
    assert labels[-3:] == ["activations.h5: written", "activations.h5: renamed",
                           "activations.h5.partial.journal: removed"]


def test_compressed_activations_killed_at_every_write_point(tmp_path, net, activations_inputs):
    """lzf: chunks are allocated as written; same datasets (HDF5 may place them elsewhere)."""
    kill_everywhere(tmp_path, activations_inputs,
                    lambda out: config(out, net, "activations", "activations.compression=lzf"),
                    ["activations.h5"], delays=())


def test_exception_at_every_write_point_then_rerun(tmp_path, net, activations_inputs):
    """An exception (not a kill) at each point: cleanup runs, the rerun still completes."""
    run, ref = tmp_path / "run", tmp_path / "reference"
    cfg = config(run, net, "activations")
    run_stages(config(copy_inputs(activations_inputs, run), net, "activations"))
    run.rename(ref)
    for k in range(1, 18):
        shutil.rmtree(run, ignore_errors=True)
        copy_inputs(activations_inputs, run)
        assert faults.in_child(lambda: run_stages(cfg), fault=f"raise:{k}") == 1
        run_stages(cfg)
        faults.assert_same_files(ref, run, ["activations.h5"], same_bytes=["activations.h5"])


def test_probes_killed_at_every_write_point_equals_uninterrupted(tmp_path, net, probes_inputs):
    outputs = ["probes.h5", "random_twin_activations.h5"]
    labels = kill_everywhere(tmp_path, probes_inputs, lambda out: config(out, net, "probes"),
                             outputs, same_bytes=["random_twin_activations.h5"],
                             delays=(0.5,))
    twin = [label for label in labels if label.startswith("random_twin")]
    own = [label for label in labels if label.startswith("probes.h5")]
    assert len(twin) == 3 + 3 * 3 + 3  # layout and journal, 3 batches of 8, finish
    # manifest, 2 nets x 2 layers committed, the file written and renamed, the chunks removed
    assert own == ["probes.h5.partial.d/manifest.json: written",
                   "probes.h5.partial.d/manifest.json: renamed",
                   *[f"probes.h5 chunk {k}: {step}" for k in range(4)
                     for step in ("written", "renamed")],
                   "probes.h5: written", "probes.h5: renamed", "probes.h5: chunks removed"]


@pytest.fixture(scope="module")
def transformer(tmp_path_factory) -> Path:
    return write_random_net(tmp_path_factory.mktemp("transformer") / "t.pb.gz", seed=3,
                            **TRANSFORMER)


@pytest.fixture(scope="module")
def interventions_inputs(tmp_path_factory, transformer) -> Path:
    """A run folder holding puzzles.h5 (six real puzzles with corrupted boards) and the
    patching.h5 that picks the ablations' single-edge head."""
    folder = tmp_path_factory.mktemp("interventions_inputs")
    write_fixture(folder / "puzzles.h5")
    run_stages(config(folder, transformer, "patching", *INTERVENTIONS))
    return folder


#: Two puzzles a chunk (three chunks), every puzzle with a corruption analysed, no figures
#: (written atomically, not a life-cycle step).
SMALL = ("patching.chunk_size=2", "ablations.chunk_size=2", "patching.figures=false",
         "ablations.figures=false", "patching.require_pv0_top=false",
         "ablations.require_pv0_top=false", "ablations.piece_heads.min_pv_length=3")
#: Every ablation method, piece heads given (the finder does not run).
INTERVENTIONS = (*SMALL, *(f"ablations.piece_heads.heads.{piece}={json.dumps(heads)}".replace(
    " ", "") for piece, heads in PIECE_HEADS.items()))
#: No piece heads given: the finder writes piece_heads.h5 first (at this lift it picks three
#: heads of the fixture net: knight (2, 3), (2, 1), bishop (0, 3)), which ablations then uses.
FINDER = (*SMALL, "ablations.piece_heads.find.min_lift=1.2")


def chunked_labels(name: str, keys) -> list[str]:
    """The write points of a :class:`ChunkedOutput` committing chunks ``keys``, then finishing."""
    return [f"{name}.partial.d/manifest.json: written", f"{name}.partial.d/manifest.json: renamed",
            *[f"{name} chunk {k}: {step}" for k in keys for step in ("written", "renamed")],
            f"{name}: written", f"{name}: renamed", f"{name}: chunks removed"]


def test_patching_killed_at_every_write_point_equals_uninterrupted(tmp_path, transformer,
                                                                   interventions_inputs):
    """Defect 1: a kill after a chunk was written (the old in-place file then broke its
    variable-length skip_reason) resumes, and the rerun writes the same bytes."""
    folder = tmp_path / "inputs"
    shutil.copytree(interventions_inputs, folder,
                    ignore=shutil.ignore_patterns("patching.h5", LOCK))
    labels = kill_everywhere(tmp_path, folder,
                             lambda out: config(out, transformer, "patching", *INTERVENTIONS),
                             ["patching.h5"], same_bytes=["patching.h5"], delays=(0.5,))
    assert labels == chunked_labels("patching.h5", range(3))


def test_head_pairs_killed_or_failing_at_every_write_point(tmp_path, transformer,
                                                           interventions_inputs):
    """Joint head-pair patching (patching.head_pairs.top_n=3: three pairs), killed or failing
    at each write point of the patching stage, then the same command: patching.h5 has the
    uninterrupted run's bytes, heads/pairs included."""
    folder = tmp_path / "inputs"
    shutil.copytree(interventions_inputs, folder,
                    ignore=shutil.ignore_patterns("patching.h5", LOCK))
    labels = kill_everywhere(
        tmp_path, folder, lambda out: config(out, transformer, "patching", *INTERVENTIONS,
                                             "patching.head_pairs.top_n=3"),
        ["patching.h5"], same_bytes=["patching.h5"], delays=(0.5,), raises=True)
    # the pairs of the six analysed puzzles are their own chunks, two puzzles each
    assert labels == chunked_labels("patching.h5", [0, 1, 2, *(PAIRS_KEY + k for k in range(3))])
    with h5py.File(tmp_path / "reference" / "patching.h5") as f:
        analysed, joint = f["analysed"][()], f["heads/pairs/joint_effect"][()]
    assert joint.shape == (6, 3) and analysed.any() and np.isfinite(joint[analysed]).all()


def test_ablations_killed_at_every_write_point_equals_uninterrupted(tmp_path, transformer,
                                                                    interventions_inputs):
    labels = kill_everywhere(tmp_path, interventions_inputs,
                             lambda out: config(out, transformer, "ablations", *INTERVENTIONS),
                             ["ablations.h5"], same_bytes=["ablations.h5"], delays=(0.5,))
    # the mean head outputs are their own chunk, committed before the rows
    assert labels == chunked_labels("ablations.h5", [99_999_999, 0, 1, 2])


def test_piece_head_finder_killed_or_failing_at_every_write_point(tmp_path, transformer,
                                                                  interventions_inputs):
    """piece_heads.h5 (the finder's heads, written by the ablations stage before
    ablations.h5), killed or failing at each write point of the stage, then the same command:
    both files have the uninterrupted run's bytes."""
    labels = kill_everywhere(tmp_path, interventions_inputs,
                             lambda out: config(out, transformer, "ablations", *FINDER),
                             ["piece_heads.h5", "ablations.h5"],
                             same_bytes=["piece_heads.h5", "ablations.h5"], delays=(0.5,),
                             raises=True)
    assert labels == (chunked_labels("piece_heads.h5", []) +
                      chunked_labels("ablations.h5", [99_999_999, 0, 1, 2]))
    with h5py.File(tmp_path / "reference" / "ablations.h5") as f:
        assert f["piece_heads"].attrs["heads_source"].startswith("found: piece_heads.h5")


def test_puzzles_killed_at_every_write_point_equals_uninterrupted(tmp_path):
    """Defect 5 too: a kill just after the last chunk (or anywhere in finishing) resumes; the
    resumed puzzles.h5 has the uninterrupted run's bytes, so later stages' hashes match."""
    inputs = write_inputs(tmp_path, ROWS, 6)
    (tmp_path / "empty").mkdir()
    labels = kill_everywhere(
        tmp_path, tmp_path / "empty",
        lambda out: compose_config(inputs, out, "stage=puzzles", "puzzles.chunk_size=3"),
        ["puzzles.h5"], same_bytes=["puzzles.h5"], delays=(0.5,))
    assert labels == chunked_labels("puzzles.h5", range(2))


def cli_args(out: Path, net: Path, stage: str) -> list[str]:
    return [f"stage={stage}", f"out_dir={out}", f"model.path={net}", "threads=1",
            "activations.batch_size=3"]


def cli_reference(tmp_path: Path, net: Path, inputs: Path) -> tuple[Path, Path]:
    """An uninterrupted ``leela-interp stage=activations`` in ``tmp_path/run``, moved to
    ``tmp_path/reference``; then ``run`` holds the inputs again. Same folder, same command: the
    files' ``command`` attributes agree."""
    run, ref = tmp_path / "run", tmp_path / "reference"
    done = faults.cli(cli_args(copy_inputs(inputs, run), net, "activations"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run.rename(ref)
    return ref, copy_inputs(inputs, run)


def test_cli_killed_then_the_same_command_equals_uninterrupted(tmp_path, net, activations_inputs):
    """The real ``leela-interp``, SIGKILLed mid-run: point 8, the 2nd batch's journal written to
    its temporary name but not yet renamed (the rerun resumes after the 1st batch)."""
    ref, run = cli_reference(tmp_path, net, activations_inputs)
    killed = faults.cli(cli_args(run, net, "activations"), cwd=tmp_path,
                        env={FAULT_ENV: "kill:8"})
    assert killed.returncode == -9, killed.stderr
    assert (run / "activations.h5.partial").exists() and not (run / "activations.h5").exists()
    again = faults.cli(cli_args(run, net, "activations"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout + again.stderr
    faults.assert_same_files(ref, run, ["activations.h5"], same_bytes=["activations.h5"])


def wait_for_lock(folder: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((folder / LOCK).read_text()).get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"PID {pid} never took the lock of {folder}")


def test_two_runs_on_one_folder_one_completes_the_other_stops_clearly(tmp_path, net,
                                                                      activations_inputs):
    ref, run = cli_reference(tmp_path, net, activations_inputs)
    first = faults.start_cli(cli_args(run, net, "activations"), cwd=tmp_path)
    try:
        wait_for_lock(run, first.pid)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock taken
        before = sorted(p.name for p in run.iterdir())
        second = faults.cli(cli_args(run, net, "activations"), cwd=tmp_path)
        assert second.returncode == 1
        assert f"leela_interp.errors.RunFolderInUseError: out_dir '{run}' is in use by PID " \
               f"{first.pid} (command " in second.stderr
        assert sorted(p.name for p in run.iterdir()) == before  # it touched nothing
        # reading stages do not need the lock
        look = faults.cli(["stage=inspect", f"++path={run / 'puzzles.h5'}"], cwd=tmp_path)
        assert look.returncode == 0 and "puzzles/fen" in look.stdout, look.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    faults.assert_same_files(ref, run, ["activations.h5"], same_bytes=["activations.h5"])


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, net, activations_inputs):
    ref, run = cli_reference(tmp_path, net, activations_inputs)
    first = faults.start_cli(cli_args(run, net, "activations"), cwd=tmp_path)
    wait_for_lock(run, first.pid)
    first.kill()
    first.communicate()
    second = faults.cli(cli_args(run, net, "activations"), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"taking over the lock left by PID {first.pid}" in second.stdout + second.stderr
    faults.assert_same_files(ref, run, ["activations.h5"], same_bytes=["activations.h5"])
    assert (run / LOCK).read_text() == ""  # released cleanly


def test_lock_is_per_folder_and_released(tmp_path):
    with lock_run_dir(tmp_path / "a"):
        with lock_run_dir(tmp_path / "b"):
            pass
        code = faults.in_child(lambda: lock_run_dir(tmp_path / "a").__enter__())
        assert code == 1  # RunFolderInUseError in the other process
    assert faults.in_child(lambda: lock_run_dir(tmp_path / "a").__enter__()) == 0
    with pytest.raises(RunFolderInUseError, match="in use by PID"):
        with lock_run_dir(tmp_path / "a"), lock_run_dir(tmp_path / "a"):
            pass
