"""The puzzles stage's filters on crafted probabilities, against a funnel counted by hand.

:func:`build_puzzles` runs as users run it, on a CSV of real Lichess puzzles, with two table
networks in place of the strong and weak nets: each knows, for every position of every puzzle,
the probability it gives the PV move there (the rest spread evenly over the other legal moves),
so every filter decision below is set by hand. The oracle is a table too (which solver moves are
unique). What runs is the stage's own code: the network passes, the legal-move softmax, the
filters, the funnel counts and the output file.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import chess
import h5py
import numpy as np
import pytest
import torch

from leela_interp.board.policy import NUM_MOVES, legal_moves_and_indices, policy_index
from leela_interp.errors import ConfigError
from leela_interp.puzzles import filters as puzzle_filters
from leela_interp.puzzles import pipeline as puzzle_pipeline
from leela_interp.puzzles.config import FilterConfig, NetSpec, PipelineConfig
from leela_interp.puzzles.lichess import COLUMNS
from leela_interp.puzzles.oracle import OracleConfig, PuzzleVerdict
from leela_interp.puzzles.pipeline import build_puzzles
from leela_interp.puzzles.puzzle import Puzzle
from leela_interp.puzzles.puzzle_set import PuzzleSet

# (id, FEN, Moves): real Lichess puzzles (CC0, from ../shared/data/puzzles/lichess_sample.csv);
# the PV is Moves[1:], its even plies the solver's.
ROWS = [
    ("short", "3r4/R7/2p5/p1P2p2/1p4k1/nP6/P2KNP2/8 w - - 3 41", "d2e3 a3c2"),  # PV 1
    ("two", "2kr3r/pp3p2/4p2p/1N1p2p1/3Q4/1P1P4/2q2PPP/5RK1 b - - 1 20",
     "b7b6 d4a1 a7a5"),  # PV 2
    ("easy", "8/4R1k1/p5pp/3B4/5q2/8/5P1P/6K1 b - - 5 40", "g7f6 e7f7 f6e5 f7f4"),
    ("hard_edge", "4r1k1/2R3pp/2p4q/1p1p4/3P4/P7/1PP2R2/1K1N4 b - - 3 32",
     "e8e1 c7c8 e1e8 c8e8"),
    ("wrong_first", "r2q4/pp1n1kbp/3P2b1/6N1/6Q1/P3P3/6P1/4K2R b K - 1 21",
     "f7g8 g4c4 g8h8 h1h7 g6h7 g5f7"),
    ("wrong_later", "8/8/5k1p/6p1/1R4PP/1p2KP2/8/1r6 w - - 0 43",
     "h4h5 b3b2 b4b6 f6e5 f3f4 g5f4"),
    ("not_forcing", "8/3k4/1K1P4/2P3r1/R7/5b2/8/8 b - - 0 68",
     "g5g8 a4a7 d7e6 a7e7 e6d5 d6d7"),
    ("forcing_edge", "1r3k2/5p1p/2p1pp2/P2n4/2r1N3/P4PK1/2R2P1P/2R5 b - - 9 29",
     "c4a4 e4c5 a4a5 c5d7 f8g7 d7b8"),
    ("not_unique", "rn3rk1/4pp1p/3p2pB/2q4P/3bP1b1/Pp2Q3/1P2B3/1K1R2NR w - - 0 20",
     "e3d4 c5c2 b1a1 a8a3 b2a3 c2a2"),
    ("kept", "r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24",
     "f2g3 e6e7 b2b1 b3c1 b1c1 h6c1"),
    ("kept_short", "5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27",
     "d3d6 f8d8 d6d8 f6d8"),
]
# P(PV[ply]) by hand: {id: {ply: p}} per net; plies not listed get DEFAULT.
WEAK = {
    "easy": {0: 0.9, 1: 0.9},              # hard fails: 0.9 >= 0.3
    "hard_edge": {0: 0.31},                # hard fails: 0.31 >= 0.3
    "wrong_first": {0: 0.1, 1: 0.9},
    "wrong_later": {0: 0.1, 1: 0.9},
    "not_forcing": {0: 0.1, 1: 0.5},       # forcing fails: 0.5 <= 0.7
    "forcing_edge": {0: 0.1, 1: 0.69},     # forcing fails: 0.69 <= 0.7
    "not_unique": {0: 0.1},
    "kept": {0: 0.1, 1: 0.95},
    "kept_short": {0: 0.29, 1: 0.71},
}
STRONG = {
    "wrong_first": {0: 0.2, 2: 0.9, 4: 0.9},               # correct fails at ply 0
    "wrong_later": {0: 0.9, 1: 0.01, 2: 0.9, 4: 0.2},      # correct fails at ply 4
    "not_forcing": {0: 0.9, 2: 0.9, 4: 0.9},
    "forcing_edge": {0: 0.9, 2: 0.9, 4: 0.9},
    "not_unique": {0: 0.9, 2: 0.9, 4: 0.9},
    "kept": {0: 0.9, 1: 0.01, 2: 0.8, 3: 0.01, 4: 0.61},   # opponent plies do not count
    "kept_short": {0: 0.61, 1: 0.01, 2: 0.61},
}
DEFAULT = 0.5
# A position with one legal move (hard_edge, not_unique at ply 1; wrong_first at ply 3) has
# P = 1 under any net; the tables leave those plies out.
# Solver plies the oracle calls unique; every other ply is not.
UNIQUE = {"not_unique": {0}, "kept": {0, 2, 4}, "kept_short": {0, 2}}
FILTERS = FilterConfig(min_pv_length=3, hard_max_weak_prob=0.3, correct_min_strong_prob=0.6,
                       forcing_min_weak_prob=0.7, unique=True)
# Counted by hand from the tables: 11 read; "short" and "two" have PVs under 3 plies; "easy"
# and "hard_edge" fail hard; "wrong_first" and "wrong_later" fail correct; "not_forcing" and
# "forcing_edge" fail forcing; "not_unique" fails unique (ply 2 is not unique).
FUNNEL = {"read": 11, "pv_length": 9, "hard": 7, "correct": 5, "forcing": 3, "unique": 2,
          "corruption": 0, "kept": 2}


def _key(board: chess.Board) -> tuple[str, bool]:
    return board.board_fen(), board.turn


def _board_from_planes(planes: torch.Tensor) -> tuple[str, bool]:
    """The position of history slot 0 of input-format-1 planes ``[112, 8, 8]``."""
    black = bool(planes[108].all())
    board = chess.Board(None)
    for plane in range(12):
        for token in planes[plane].flatten().nonzero().flatten().tolist():
            ours = plane < 6
            color = (not black) if ours else black
            board.set_piece_at(token ^ (56 if black else 0),
                               chess.Piece(plane % 6 + 1, color))
    return board.board_fen(), not black


class TableNet:
    """A network that puts probability ``p`` on one move of each position it knows and spreads
    ``1 - p`` evenly over the other legal moves (input format 1, no WDL head)."""

    def __init__(self, probs: dict[tuple[str, bool], tuple[chess.Board, chess.Move, float]]):
        self.config = SimpleNamespace(input_format=1)
        self.logits = {}
        for key, (board, move, p) in probs.items():
            _, indices = legal_moves_and_indices(board)
            row = torch.full((NUM_MOVES,), -30.0)
            if len(indices) > 1:
                row[torch.from_numpy(indices)] = math.log((1 - p) / (len(indices) - 1))
            row[policy_index(board, move)] = math.log(p)
            self.logits[key] = row

    def __call__(self, planes: torch.Tensor):
        rows = [self.logits[_board_from_planes(p)] for p in planes]
        return SimpleNamespace(policy_logits=torch.stack(rows), value=torch.zeros(len(rows), 1),
                               wdl=None, mlh=None)


def hand_prob(table: dict[str, dict[int, float]], pid: str, ply: int) -> float:
    """P(PV[ply]) of puzzle ``pid`` under a table: its entry, 1 for a forced move, else
    :data:`DEFAULT`."""
    puzzle = Puzzle(pid, *[(f, m.split()) for i, f, m in ROWS if i == pid][0])
    if puzzle.boards()[ply].legal_moves.count() == 1:
        assert ply not in table.get(pid, {}), f"{pid} ply {ply} is forced: P = 1"
        return 1.0
    return table.get(pid, {}).get(ply, DEFAULT)


def table_net(table: dict[str, dict[int, float]]) -> TableNet:
    probs = {}
    for pid, fen, moves in ROWS:
        puzzle = Puzzle(pid, fen, moves.split())
        for ply, (board, move) in enumerate(zip(puzzle.boards(), puzzle.pv_moves)):
            assert _key(board) not in probs, "positions must differ between puzzles"
            probs[_key(board)] = (board, move, hand_prob(table, pid, ply))
    return TableNet(probs)


class TableOracle:
    """Stands in for :class:`~leela_interp.puzzles.oracle.Oracle`: the verdicts of
    :data:`UNIQUE`."""

    engine_name = "table oracle"
    checked: list[str] = []

    def __init__(self, config, cache_path=None) -> None:
        pass

    def check_puzzles(self, puzzles):
        verdicts = []
        for p in puzzles:
            TableOracle.checked.append(p.id)
            n = len(p.pv)
            unique = tuple(ply in UNIQUE.get(p.id, ()) for ply in range(n))
            verdicts.append(PuzzleVerdict(p.id, (0,) * n, tuple(p.pv), (200,) * n, unique,
                                          unique))
        return verdicts

    def close(self) -> None:
        pass


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """Build puzzles.h5 with the table nets (and oracle) for a filter config."""
    source = tmp_path / "puzzles.csv"
    lines = [",".join(COLUMNS)] + [f"{pid},{fen},{moves},,,,,,," for pid, fen, moves in ROWS]
    source.write_text("\n".join(lines) + "\n")
    nets = {"strong.pb.gz": table_net(STRONG), "weak.pb.gz": table_net(WEAK)}
    for name in nets:
        (tmp_path / name).write_text(name)  # hashed as the nets' identity
    monkeypatch.setattr(puzzle_pipeline, "load_net",
                        lambda spec, **options: nets[spec.path.rsplit("/", 1)[-1]])
    monkeypatch.setattr(puzzle_filters, "Oracle", TableOracle)
    monkeypatch.setattr(puzzle_pipeline, "find_stockfish", lambda path: path)
    TableOracle.checked = []

    def build(filters: FilterConfig, oracle: bool = True):
        cfg = PipelineConfig(source=str(source), strong=NetSpec(str(tmp_path / "strong.pb.gz")),
                             weak=NetSpec(str(tmp_path / "weak.pb.gz")), filters=filters,
                             oracle_enabled=oracle, oracle=OracleConfig(num_engines=1),
                             corruptions_enabled=False, chunk_size=4, batch_size=5,
                             device="cpu")
        summary = build_puzzles(cfg, tmp_path / "out" / "puzzles.h5", force=True)
        with h5py.File(summary.path, "r") as f:
            funnel = {k: int(v) for k, v in f["counts/filters"].attrs.items()}
            g = f["puzzles"]
            stored = {name: g[name][()] for name in ("strong_pv_prob", "weak_pv_prob", "unique")}
        return summary, funnel, PuzzleSet.load(summary.path).ids, stored

    return build


def test_every_filter_gives_the_hand_counted_funnel(run):
    summary, funnel, ids, stored = run(FILTERS)
    assert funnel == FUNNEL
    assert summary.funnel == FUNNEL and summary.rows == 2
    assert ids == ["kept", "kept_short"]
    # The oracle saw exactly the puzzles that passed every network filter.
    assert TableOracle.checked == ["not_unique", "kept", "kept_short"]
    # The stored probabilities are the tables' (every ply of the kept puzzles, both nets).
    for row, pid in enumerate(ids):
        n = len(dict((r[0], r[2]) for r in ROWS)[pid].split()) - 1
        for name, table in (("strong_pv_prob", STRONG), ("weak_pv_prob", WEAK)):
            want = [hand_prob(table, pid, ply) for ply in range(n)]
            np.testing.assert_allclose(stored[name][row, :n], want, rtol=1e-5, err_msg=name)
        assert stored["unique"][row]


def test_thresholds_of_none_turn_filters_off(run):
    off = FilterConfig(min_pv_length=3, hard_max_weak_prob=None, correct_min_strong_prob=None,
                       forcing_min_weak_prob=None, unique=False)
    summary, funnel, ids, _ = run(off, oracle=False)
    assert funnel == {"read": 11, "pv_length": 9, "hard": 9, "correct": 9, "forcing": 9,
                      "unique": 9, "corruption": 0, "kept": 9}
    assert ids == [r[0] for r in ROWS if r[0] not in ("short", "two")]
    assert TableOracle.checked == []


@pytest.mark.parametrize("name, value, fails", [
    # Each filter alone, at the paper's strictness: which puzzles it drops (by hand).
    ("hard_max_weak_prob", 0.3, {"easy", "hard_edge"}),
    ("correct_min_strong_prob", 0.6, {"easy", "hard_edge", "wrong_first", "wrong_later"}),
    ("forcing_min_weak_prob", 0.7, {"not_forcing", "forcing_edge"}),
    ("min_pv_length", 5, {"short", "two", "easy", "hard_edge", "kept_short"}),
])
def test_each_filter_alone(run, name, value, fails):
    """``easy`` and ``hard_edge`` fail ``correct`` too: their strong probabilities are the
    default 0.5 < 0.6. The forcing filter reads ply 1 of the weak net, not ply 0 (``easy``'s
    ply 0 is 0.9 and it passes)."""
    settings = dict(min_pv_length=3, hard_max_weak_prob=None, correct_min_strong_prob=None,
                    forcing_min_weak_prob=None, unique=False)
    settings[name] = value
    if name != "min_pv_length":
        fails = fails | {"short", "two"}
    _, funnel, ids, _ = run(FilterConfig(**settings), oracle=False)
    assert set(ids) == {r[0] for r in ROWS} - fails
    assert funnel["kept"] == len(ROWS) - len(fails)


@pytest.mark.parametrize("plies, fails", [
    # PV >= 5 plies with distinct solver targets: "kept" has 5 plies but its 3rd and 5th moves
    # both go to c1 (e6e7 b2b1 b3c1 b1c1 h6c1); no PV here has 7 plies.
    (5, {"short", "two", "easy", "hard_edge", "kept_short", "kept"}),
    (7, {r[0] for r in ROWS}),
])
def test_distinct_targets_joins_the_pv_length_step(run, plies, fails):
    settings = dict(min_pv_length=plies, hard_max_weak_prob=None, correct_min_strong_prob=None,
                    forcing_min_weak_prob=None, unique=False, distinct_targets=True)
    _, funnel, ids, _ = run(FilterConfig(**settings), oracle=False)
    assert set(ids) == {r[0] for r in ROWS} - fails
    assert funnel["pv_length"] == funnel["kept"] == len(ROWS) - len(fails)
    with pytest.raises(ConfigError, match="distinct_targets"):
        FilterConfig(distinct_targets="yes")
