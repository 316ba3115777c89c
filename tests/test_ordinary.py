"""The ordinary-position control (``puzzles.positions=ordinary``) and the report's comparison of
a puzzles folder with it (``report.control_dir``).

The builder's lines are checked against the net's own argmax, move by move, through another
path than the builder's (the pipeline's per-ply evaluation in the canonical policy frame);
``stage=all`` runs on a control folder of ``tiny_run``'s rows and nets, and the report's
comparison section is read back against both folders' files.
"""

import shutil

import chess
import h5py
import numpy as np
import pytest
from test_report import shows, table
from tiny_run import ROWS, compose_config

from leela_interp.errors import ConfigError
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.outputs import control
from leela_interp.outputs.report import write_report
from leela_interp.outputs.results import read_strings
from leela_interp.puzzles.puzzle import Puzzle
from leela_interp.puzzles.ordinary import ordinary_puzzles
from leela_interp.puzzles.config import NetSpec
from leela_interp.puzzles.evaluation import evaluate_moves, load_net


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A random transformer whose input format has canonical transforms (format 3 and above
    mirror some boards: the builder and the check below then rank moves in different frames)."""
    path = write_random_net(tmp_path_factory.mktemp("net") / "net.pb.gz", body="transformer",
                            policy="attention", d_model=32, layers=2, heads=4, d_ff=32, seed=5,
                            input_format=3)
    net = load_net(NetSpec(str(path)), device="cpu")
    assert net.config.input_format == 3
    return net


def rows(n: int = 6) -> list[Puzzle]:
    out = []
    for i, row in enumerate(ROWS[:n]):
        fen, moves = row.split(",")
        out.append(Puzzle(id=f"r{i}", fen=fen, moves=moves.split(), rating=1500,
                          themes=["fork"]))
    return out


@pytest.mark.parametrize("history", ["none", "setup"])
def test_ordinary_lines_are_the_nets_argmax_move_by_move(net, history):
    sources = rows()
    built = ordinary_puzzles(sources, net, history=history, batch_size=4)
    for source, puzzle in zip(sources, built):
        # the row's game position and id; its own move instead of the game's (the blunder)
        assert (puzzle.id, puzzle.fen) == (source.id, source.fen)
        assert puzzle.moves[0] != source.moves[0]
        # legal from the row's FEN on: a Lichess row of these moves reads back unchanged
        assert Puzzle.from_row(puzzle.to_row()).moves == puzzle.moves
        assert len(puzzle.pv) == len(source.pv)  # plies=None: the row's own PV length
        assert (puzzle.rating, puzzle.themes) == (None, [])
        boards = puzzle.boards(history=history)
        top = evaluate_moves(net, boards, puzzle.pv_moves, batch_size=3).top_move
        assert top == puzzle.pv, (source.id, top, puzzle.pv)
        # the setup move is the best move other than the game's
        first = evaluate_moves(net, [source.initial_board()], [chess.Move.from_uci(
            puzzle.moves[0])])
        if first.top_move[0] != source.moves[0]:
            assert first.top_move[0] == puzzle.moves[0]


def test_a_control_position_is_never_the_puzzle_position(net):
    """Where the net's best move is the game's setup move, the control plays its second best."""
    from leela_interp.puzzles.evaluation import top_moves

    sources = rows(4)
    best = top_moves(net, [r.initial_board() for r in sources], 2)
    same = [Puzzle(id=r.id, fen=r.fen, moves=[b[0].uci()] + r.pv) for r, b in zip(sources, best)]
    built = ordinary_puzzles(same, net)
    assert [p.moves[0] for p in built] == [b[1].uci() for b in best]


def test_ordinary_plies_sets_the_line_length(net):
    built = ordinary_puzzles(rows(3), net, plies=5)
    assert [len(p.pv) for p in built] == [5, 5, 5]
    with pytest.raises(ValueError, match="plies must be an integer >= 1"):
        ordinary_puzzles(rows(1), net, plies=0)


@pytest.fixture(scope="module")
def ordinary_run(tiny_run, tmp_path_factory):
    """``stage=all`` with ``puzzles.positions=ordinary`` on ``tiny_run``'s CSV and nets (its
    relaxed puzzle filters stay in the overrides: the control must turn them off)."""
    from leela_interp.stages import run_stages

    root = tiny_run.parent
    inputs = (root / "puzzles.csv", root / "strong.pb.gz", root / "weak.pb.gz")
    out = tmp_path_factory.mktemp("ordinary") / "run"
    run_stages(compose_config(inputs, out, "puzzles.positions=ordinary",
                              "puzzles.filters.hard_max_weak_prob=0.0001"))
    return out


def test_stage_all_runs_on_an_ordinary_folder(ordinary_run, tiny_run):
    for name in ("puzzles.h5", "activations.h5", "patching.h5", "ablations.h5", "probes.h5",
                 "report.md"):
        assert (ordinary_run / name).is_file(), name
    with h5py.File(ordinary_run / "puzzles.h5", "r") as f, \
            h5py.File(tiny_run / "puzzles.h5", "r") as g:
        assert f.attrs["positions"] == "ordinary" and g.attrs["positions"] == "puzzles"
        funnel = dict(f["counts/filters"].attrs)
        # hard < 0.0001 would drop every puzzle: the control's filters are off
        assert funnel["read"] == funnel["pv_length"] == funnel["hard"] == funnel["forcing"] > 0
        moves = [m.split() for m in read_strings(f["puzzles/moves"])]
        top = f["puzzles/strong_top_move"][()]
        for i, line in enumerate(moves):
            assert [t.decode() for t in top[i, :len(line) - 1]] == line[1:]
        assert f["puzzles/has_corruption"][()].any()
    assert "- positions: `ordinary`" in (ordinary_run / "report.md").read_text()


def section_of(report: str) -> str:
    start = report.index(control.HEADING)
    end = report.find("\n## ", start + 1)
    return report[start:end if end > 0 else None]


def test_report_compares_puzzles_with_the_control_from_both_files(tiny_run, ordinary_run,
                                                                   tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    write_report(run, gallery_k=0, control_dir=ordinary_run)
    section = section_of((run / "report.md").read_text())
    assert (run / "figures" / control.FIGURE).is_file()
    assert f"![puzzles vs ordinary positions](figures/{control.FIGURE})" in section
    header, rows = table(section, "Residual patching at `resid_post`")
    files = {}
    for name, folder in (("puzzles", run), ("ordinary", ordinary_run)):
        with h5py.File(folder / "patching.h5", "r") as f:
            files[name] = control.residual(f)["resid_post"], control.heads(f)
        with h5py.File(folder / "probes.h5", "r") as f:
            files[name] += (control.probe(f),)
    for j, cat in enumerate(control.CATEGORIES):
        for name in control.SERIES:
            r = files[name][0]
            column = header.index(f"{cat} ({name})")
            for layer, row in enumerate(rows):
                assert shows(row[column], r["mean"][layer, j], r["err"][layer, j]), \
                    (cat, name, layer, row[column])
    # the two folders' numbers differ somewhere (the test would pass on one folder twice else)
    assert not np.allclose(np.nan_to_num(files["puzzles"][0]["mean"]),
                           np.nan_to_num(files["ordinary"][0]["mean"]))
    _, rows = table(section, "Head patching")
    width = files["puzzles"][1]["mean"].shape[1]
    for row in rows:
        layer, head = map(int, row[0][1:].split("H"))
        for k, name in enumerate(control.SERIES, start=1):
            h = files[name][1]
            assert shows(row[k], h["mean"][layer, head], h["err"][layer, head]), row
    assert len(rows) >= 5 and width > 0
    _, rows = table(section, "Look-ahead probe")
    layers = [row for row in rows if row[0].isdigit()]
    assert [int(row[0]) for row in layers] == files["puzzles"][2]["layers"]
    for row in layers:
        for k, name in enumerate(control.SERIES, start=1):
            p = files[name][2]
            i = p["layers"].index(int(row[0]))
            assert shows(row[k], p["mean"][i], p["err"][i]), row
    baselines = rows[len(layers):]
    assert len(baselines) == len(files["puzzles"][2]["baselines"]) > 0
    for row, name in zip(baselines, files["puzzles"][2]["baselines"]):
        assert row[0] == f"baseline `{name}` (no activations)"
        for k, series in enumerate(control.SERIES, start=1):
            assert shows(row[k], *files[series][2]["baselines"][name]), row
    html = (run / "report.html").read_text()
    assert "Puzzles vs ordinary positions" in html and html.count("data:image/png") >= 1


def test_report_refuses_a_control_of_another_kind_or_net(tiny_run, ordinary_run, tmp_path):
    with pytest.raises(ConfigError, match="positions='puzzles'; a control is built with"):
        control.check_control(tiny_run, tiny_run)
    with pytest.raises(ConfigError, match="holds positions='ordinary': run the report in"):
        control.check_control(ordinary_run, ordinary_run)
    other = tmp_path / "other"
    shutil.copytree(ordinary_run, other)
    with h5py.File(other / "puzzles.h5", "a") as f:
        f.attrs["strong_sha256"] = "0" * 64
    with pytest.raises(ConfigError, match="was built with another network"):
        write_report(tiny_run, gallery_k=0, control_dir=other)
    with pytest.raises(ConfigError, match="is missing or not complete"):
        control.check_control(tiny_run, tmp_path / "nothing")
