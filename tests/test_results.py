"""HDF5 result-file life cycle and the puzzle-set file."""

import chess
import h5py
import numpy as np
import pytest

from leela_interp.errors import ConfigError
from leela_interp.outputs.results import (is_complete, label_axes, open_partial, partial_path,
                                          read_strings, write_strings)
from leela_interp.puzzles.puzzle_set import PuzzleSet


def test_partial_file_becomes_complete_only_on_success(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with open_partial(path, schema="t/1", config={"a": 1}) as f:
            f["data"] = np.arange(3)
            raise RuntimeError("killed")
    assert not path.exists() and partial_path(path).exists()
    with open_partial(path, schema="t/1", config={"a": 1}) as f:
        assert "data" in f  # resumed: earlier work is still there
    assert is_complete(path) and not partial_path(path).exists()
    assert is_complete(path, expected_hash=None)


def test_partial_file_of_another_config_is_discarded(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with open_partial(path, schema="t/1", config={"a": 1}) as f:
            f["data"] = np.arange(3)
            raise RuntimeError("killed")
    with open_partial(path, schema="t/1", config={"a": 2}) as f:
        assert "data" not in f


def test_strings_and_axes(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        write_strings(f, "names", ["e4", "Nf3", "ü"])
        d = f.create_dataset("x", data=np.zeros((2, 3)))
        label_axes(d, "puzzle", "layer", sign="positive = reduction")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert read_strings(f["names"]) == ["e4", "Nf3", "ü"]
        assert [dim.label for dim in f["x"].dims] == ["puzzle", "layer"]
        assert f["x"].attrs["sign"] == "positive = reduction"


@pytest.mark.parametrize("history", ["none", "setup"])
def test_puzzle_set_round_trip(tmp_path, history):
    fen = "5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27"
    after_setup = chess.Board(fen)
    after_setup.push_uci("d3d6")
    after_setup.remove_piece_at(chess.F3)  # the corruption: remove the f3 knight
    ps = PuzzleSet(ids=["a1", "b2"],
                   fens=["r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24", fen],
                   moves=[["f2g3", "e6e7", "b2b1", "b3c1"], ["d3d6", "f8d8", "d6d8", "f6d8"]],
                   corrupted_fens=["", after_setup.fen()],
                   different_targets=np.array([True, False]), history=history)
    with h5py.File(tmp_path / "puzzles.h5", "w") as f:
        ps.write(f.require_group("puzzles"))
    back = PuzzleSet.load(tmp_path / "puzzles.h5")
    assert back.history == history
    assert back.ids == ps.ids and back.moves == ps.moves and back.pv(0) == ["e6e7", "b2b1", "b3c1"]
    board = back.clean_board(0)
    assert board.turn  # white to move after the setup move
    if history == "setup":
        assert [m.uci() for m in board.move_stack] == ["f2g3"]
    else:
        assert board.move_stack == []
    clean, corrupted = back.pair(1)
    assert corrupted.move_stack == clean.move_stack
    assert corrupted.board_fen() == after_setup.board_fen()
    assert {sq for sq in chess.SQUARES if clean.piece_at(sq) != corrupted.piece_at(sq)} == {
        chess.F3}
    with pytest.raises(ValueError, match="no corrupted board"):
        back.corrupted_board(0)
    with pytest.raises(ConfigError, match="run the puzzles stage first"):
        PuzzleSet.load(tmp_path / "missing.h5")


def test_result_files_record_the_command_and_git_commit(tmp_path, monkeypatch):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from leela_interp.outputs import results

    monkeypatch.setattr(sys, "argv", ["leela-interp", "stage=patching", "out_dir=runs/a b"])
    with open_partial(tmp_path / "x.h5", schema="t/1", config={"a": 1}):
        pass
    with h5py.File(tmp_path / "x.h5") as f:
        assert f.attrs["command"] == "leela-interp stage=patching 'out_dir=runs/a b'"
        commit = f.attrs["git_commit"]
    repo = Path(results.__file__).resolve().parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        assert commit == "unknown"
        return
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert commit in (head, head + "-dirty")
