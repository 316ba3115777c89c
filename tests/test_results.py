"""HDF5 result-file life cycle (ChunkedOutput, RowsFile, open_partial, fault points), the
puzzle-set file, and file comparison."""

import functools
import json
import logging
import subprocess
import sys
import textwrap
import threading

import chess
import h5py
import numpy as np
import pytest

from leela_interp.errors import ConfigError, RunFolderInUseError
from leela_interp.outputs.chunked import ChunkedOutput
from leela_interp.outputs.results import (FAULT_ENV, FAULT_LOG_ENV, InjectedFault, chunks_dir,
                                          config_hash, diff_files, has_partial, is_complete,
                                          journal_path, label_axes, partial_path, read_strings,
                                          remove_leftovers, write_point, write_strings)
from leela_interp.outputs.rows import RowsFile, RowsWriter, open_partial
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


# --------------------------------------------------------------------------- ChunkedOutput


def _chunked(path, config=None, **kw):
    return ChunkedOutput(path, schema="t/1", config=config or {"a": 1}, **kw)


def _assemble(out):
    def write(f):
        f.create_dataset("x", data=out.concat("x"))
        write_strings(f, "name", list(out.concat("name")))
        f.attrs["total"] = sum(chunk.meta.get("n", 0) for chunk in out.chunks())
    return out.finish(write)


def test_chunked_output_resumes_verified_chunks_and_finishes_atomically(tmp_path):
    path = tmp_path / "x.h5"
    out = _chunked(path)
    for key in (2, 0):
        out.commit(key, {"x": np.full(2, key, float), "name": [f"ü{key}", "b"]}, {"n": key})
    assert not path.exists() and chunks_dir(path).is_dir() and has_partial(path)
    again = _chunked(path)  # a new process: the committed chunks are there
    assert again.keys == [0, 2] and again.read(2).meta == {"n": 2}
    again.commit(1, {"x": np.full(2, 1.0), "name": ["c", "d"]}, {"n": 1})
    again.commit(9, {"g/mean": np.eye(2)})  # a chunk of other arrays, nested names
    assert again.read(9).arrays["g/mean"].tolist() == [[1, 0], [0, 1]]
    _assemble(again)
    assert not chunks_dir(path).exists() and is_complete(path)
    with h5py.File(path) as f:
        assert f["x"][()].tolist() == [0, 0, 1, 1, 2, 2] and f.attrs["total"] == 3
        assert read_strings(f["name"]) == ["ü0", "b", "c", "d", "ü2", "b"]
    # an uninterrupted run, chunks committed in another order: the same bytes
    other = _chunked(tmp_path / "y.h5")
    other.commit(9, {"g/mean": np.eye(2)})
    for key in (0, 1, 2):
        other.commit(key, {"x": np.full(2, float(key)),
                           "name": [["ü0", "b"], ["c", "d"], ["ü2", "b"]][key]}, {"n": key})
    _assemble(other)
    assert (tmp_path / "y.h5").read_bytes() == path.read_bytes()


def test_damaged_chunks_are_deleted_and_redone(tmp_path, caplog):
    path = tmp_path / "x.h5"
    out = _chunked(path)
    for key in range(4):
        out.commit(key, {"x": np.arange(1000.0) + key, "name": ["a"]}, {"n": key})
    folder = chunks_dir(path)
    data = (folder / "00000001.h5").read_bytes()
    (folder / "00000001.h5").write_bytes(data[: len(data) // 2])  # cut short
    with h5py.File(folder / "00000002.h5", "r+") as f:  # readable, but not what was committed
        f["x"][0] = -1
    (folder / ".00000003.h5.tmp").write_bytes(b"half a chunk")  # killed mid-write
    with caplog.at_level(logging.WARNING):
        again = _chunked(path)
    assert again.keys == [0, 3]
    assert "damaged chunk 00000001.h5" in caplog.text and "damaged chunk 00000002.h5" in caplog.text
    assert "checksum" in caplog.text and not (folder / ".00000003.h5.tmp").exists()


@pytest.mark.parametrize("how", ["config", "force", "manifest"])
def test_chunks_of_another_config_or_force_or_without_manifest_start_afresh(tmp_path, caplog,
                                                                            how):
    path = tmp_path / "x.h5"
    _chunked(path).commit(0, {"x": np.zeros(1)})
    if how == "manifest":
        (chunks_dir(path) / "manifest.json").write_text("{trunc")
    with caplog.at_level(logging.INFO):
        out = _chunked(path, {"a": 2} if how == "config" else None, resume=how != "force")
    assert out.keys == [] and "starting afresh" in caplog.text


def test_leftovers_of_a_run_killed_after_finishing_are_removed(tmp_path):
    path = tmp_path / "x.h5"
    out = _chunked(path)
    out.commit(0, {"x": np.zeros(1), "name": ["a"]}, {"n": 0})
    _assemble(out)
    folder = chunks_dir(path)
    folder.mkdir()  # as if the kill came between the rename and the folder's removal
    (folder / "manifest.json").write_text(json.dumps({"config_hash": config_hash({"a": 1})}))
    other = chunks_dir(tmp_path / "y.h5")
    (tmp_path / "x.h5.tmp").write_bytes(b"")
    remove_leftovers(path)
    assert not folder.exists() and not (tmp_path / "x.h5.tmp").exists()
    folder.mkdir()  # partial work of another config stays for its own resume
    (folder / "manifest.json").write_text(json.dumps({"config_hash": "other"}))
    remove_leftovers(path)
    assert folder.exists() and not other.exists()


# --------------------------------------------------------------------------- RowsFile


def _rows(path, resume=True, rows=12):
    def create(part):
        g = part.file.create_group("g")
        part.create_dataset(g, "a", shape=(rows, 3), dtype="f4", chunks=(2, 3))
        part.create_dataset(g, "b", shape=(rows,), dtype="i8", chunks=(4,))
        write_strings(part.file, "ids", [str(i) for i in range(rows)])
    return RowsFile(path, schema="t/1", config={"a": 1}, rows=rows, create=create, resume=resume)


def _fill(part, stop_at=None):
    for start in range(part.rows_done, part.rows, 3):
        stop = min(start + 3, part.rows)
        part.file["g/a"][start:stop] = np.arange(start * 3, stop * 3).reshape(-1, 3)
        part.file["g/b"][start:stop] = np.arange(start, stop)
        part.commit(stop)
        if stop == stop_at:
            return


def test_rows_file_resumes_committed_rows_and_finishes(tmp_path):
    path = tmp_path / "x.h5"
    with _rows(path) as part:
        _fill(part, stop_at=6)
    assert json.loads(journal_path(path).read_text())["batches"][-1][:2] == [3, 6]
    with _rows(path) as part:
        assert part.rows_done == 6
        _fill(part)
        part.finish()
    assert is_complete(path) and not partial_path(path).exists()
    assert not journal_path(path).exists()
    with h5py.File(path) as f:
        assert f["g/a"][()].ravel().tolist() == list(range(36)) and f.attrs["rows_done"] == 12
    with _rows(tmp_path / "y.h5") as part:  # uninterrupted: the same bytes
        _fill(part)
        part.finish()
    assert (tmp_path / "y.h5").read_bytes() == path.read_bytes()


def test_rows_that_fail_verification_are_redone_from_the_last_good_batch(tmp_path, caplog):
    path = tmp_path / "x.h5"
    with _rows(path) as part:
        _fill(part, stop_at=9)
    with h5py.File(partial_path(path), "r+") as f:  # rows 3-5 never reached the disk
        f["g/b"][4] = 0
    with caplog.at_level(logging.WARNING), _rows(path) as part:
        assert part.rows_done == 3
    assert "rows 3-5 fail verification" in caplog.text
    assert len(json.loads(journal_path(path).read_text())["batches"]) == 1


@pytest.mark.parametrize("damage, message", [
    ("garbage", "cannot be opened"), ("journal", "no readable journal"),
    ("layout", "layout differs"), ("config", "another config")])
def test_damaged_or_foreign_partial_rows_start_afresh(tmp_path, caplog, damage, message):
    path = tmp_path / "x.h5"
    with _rows(path) as part:
        _fill(part, stop_at=6)
    journal = json.loads(journal_path(path).read_text())
    if damage == "garbage":
        with open(partial_path(path), "r+b") as f:
            f.write(b"\0" * 512)
    elif damage == "journal":
        journal_path(path).unlink()
    else:
        journal["layout" if damage == "layout" else "config_hash"] = "x"
        journal_path(path).write_text(json.dumps(journal))
    with caplog.at_level(logging.INFO), _rows(path) as part:
        assert part.rows_done == 0
        _fill(part)
        part.finish()
    assert message in caplog.text and is_complete(path)


def test_rows_writer_bounds_the_ranges_in_flight_and_drains_on_exit(tmp_path):
    """depth=1: a second range waits while the first is being written; leaving the block by an
    exception still writes and commits every range handed over, then stops the thread."""
    gate, committed = threading.Event(), []

    def fill(part, start, stop):
        assert gate.wait(10)
        part.file["g/a"][start:stop] = np.arange(start * 3, stop * 3).reshape(-1, 3)
        part.file["g/b"][start:stop] = np.arange(start, stop)

    with _rows(tmp_path / "x.h5") as part:
        with pytest.raises(KeyError, match="the caller's"):
            with RowsWriter(part, depth=1, on_commit=committed.append) as writer:
                writer.submit(3, functools.partial(fill, part, 0, 3))
                second = threading.Thread(target=writer.submit,
                                          args=(6, functools.partial(fill, part, 3, 6)))
                second.start()
                second.join(0.5)
                assert second.is_alive()  # waits for the first range
                gate.set()
                second.join(10)
                assert not second.is_alive()
                raise KeyError("the caller's error")
        assert part.rows_done == 6 and committed == [3, 6]
        assert not [t for t in threading.enumerate() if t.name.startswith("RowsWriter")]
        with RowsWriter(part, thread=False) as writer:  # in turn: committed on return
            writer.submit(9, functools.partial(fill, part, 6, 9))
            assert part.rows_done == 9


def test_open_partial_does_not_discard_a_file_another_process_has_open(tmp_path):
    path = tmp_path / "x.h5"
    with open_partial(path, schema="t/1", config={"a": 1}):
        pass
    path.rename(partial_path(path))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, h5py
        f = h5py.File({str(partial_path(path))!r}, "a")
        print("open", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(RunFolderInUseError, match="open in another process"):
            with open_partial(path, schema="t/1", config={"a": 2}):
                pass
        assert partial_path(path).exists()
    finally:
        holder.communicate("")


def test_write_points_raise_or_fail_clearly(monkeypatch, tmp_path):
    log_file = tmp_path / "points"
    monkeypatch.setenv(FAULT_LOG_ENV, str(log_file))
    monkeypatch.setenv(FAULT_ENV, "raise:2")
    write_point("one")
    with pytest.raises(InjectedFault, match="'two'"):
        write_point("two")
    write_point("three")
    assert log_file.read_text().split() == ["one", "two", "three"]
    monkeypatch.setenv(FAULT_ENV, "explode:1")
    with pytest.raises(ValueError, match="kill:N or raise:N"):
        write_point("x")


def test_diff_files_names_each_difference(tmp_path):
    for name, value, unit, label in (("a", 1.0, "m", "puzzle"), ("b", 2.0, "s", "layer")):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            label_axes(f.create_dataset("x", data=[np.nan, value]), label, units=unit)
            f.attrs["n"] = 1
    assert diff_files(tmp_path / "a.h5", tmp_path / "a.h5") == []
    diffs = diff_files(tmp_path / "a.h5", tmp_path / "b.h5")
    assert [d.split(":")[0] for d in diffs] == ["x", "x#dims", "x@units"]
    assert diff_files(tmp_path / "a.h5", tmp_path / "b.h5", ignore_attrs=["units"])[1:] == \
        ["x#dims: ['puzzle'] != ['layer']"]


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
