"""Tests of leela_interp.puzzles.oracle against the real Stockfish binary (the ``stockfish`` fixture
of conftest.py: the conf's ``puzzles.oracle.path`` or PATH; skipped with the reason when absent)."""

from __future__ import annotations

import os
import signal
import threading
import time

import chess
import pytest

from leela_interp.errors import ConfigError
from leela_interp.puzzles.oracle import (MATE_CP, MATE_THRESHOLD_CP, Analysis, Oracle, OracleConfig,
                                         PuzzleVerdict, StockfishNotFoundError, )
from leela_interp.puzzles.puzzle import Puzzle

DEPTH = 8  # low, to keep the tests fast; results are still deterministic

# White to move: Rd8 is mate in 1, nothing else comes close.
BACK_RANK = "6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1"
# White to move: Rb8, Qa8 and Rh7 all mate in 1, so none is unique.
TWO_MATES = "7k/1R6/6K1/8/8/8/Q7/8 w - - 0 1"
# Black is checkmated.
MATED = "3R2k1/5ppp/8/8/8/8/5PPP/6K1 b - - 0 1"
# Real Lichess puzzles (setup move first).
PUZZLES = [
    Puzzle(
        "00008",
        "r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24",
        "f2g3 e6e7 b2b1 b3c1 b1c1 h6c1".split(),
    ),
    Puzzle(
        "0000D",
        "5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27",
        "d3d6 f8d8 d6d8 f6d8".split(),
    ),
    Puzzle("0008Q", "8/4R3/1p2P3/p4r2/P6p/1P3Pk1/4K3/8 w - - 1 64", "e7f7 f5e5 e2f1 e5e6".split()),
    Puzzle(
        "0009B",
        "r2qr1k1/b1p2ppp/pp4n1/P1P1p3/4P1n1/B2P2Pb/3NBP1P/RN1QR1K1 b - - 1 16",
        "b6c5 e2g4 h3g4 d1g4".split(),
    ),
]


@pytest.fixture(scope="module")
def oracle(stockfish):
    with Oracle(OracleConfig(path=stockfish, depth=DEPTH, num_engines=2)) as oracle:
        yield oracle


# --- without Stockfish --------------------------------------------------------------------------


def test_missing_binary_says_how_to_install(tmp_path):
    with pytest.raises(StockfishNotFoundError) as info:
        Oracle(OracleConfig(path=str(tmp_path / "no-stockfish")))
    assert isinstance(info.value, FileNotFoundError)
    assert "apt-get install stockfish" in str(info.value)
    assert repr(str(tmp_path / "no-stockfish")) in str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"depth": None},
        {"depth": 0},
        {"multipv": 1},
        {"threads": 0},
        {"time_s": -1.0},
        {"margin_cp": -5},
        {"margin_cp": MATE_THRESHOLD_CP},
        {"num_engines": 0},
    ],
)
def test_invalid_config_raises_config_error(options):
    with pytest.raises(ConfigError) as info:
        OracleConfig(**options)
    assert isinstance(info.value, ValueError)


def test_analysis_json_round_trip_and_uniqueness_rules():
    analysis = Analysis("fen", ("d1d8", "h2h3"), (MATE_CP - 1, 640), 8)
    assert Analysis.from_json(analysis.to_json()) == analysis
    assert analysis.margin_cp == MATE_CP - 1 - 640
    assert analysis.is_unique("d1d8", 150) and analysis.is_unique(chess.Move.from_uci("d1d8"), 150)
    assert not analysis.is_unique("h2h3", 0)
    close = Analysis("fen", ("a2a3", "b2b3"), (120, 0), 8)
    assert (
        close.is_best("a2a3") and close.is_unique("a2a3", 120) and not close.is_unique("a2a3", 121)
    )
    only_move = Analysis("fen", ("e1f1",), (-300,), 8)
    assert only_move.margin_cp is None and only_move.is_unique("e1f1", 150)


def test_verdict_requires_every_solver_move_unique():
    analyses = [
        Analysis("a", ("m0",), (500,), 1),  # solver: only move
        Analysis("b", ("x1", "m1"), (0, -10), 1),  # opponent: not the best, does not matter
        Analysis("c", ("m2", "y2"), (500, 400), 1),  # solver: best but by only 100
    ]
    verdict = PuzzleVerdict.from_analyses("p", ["m0", "m1", "m2"], analyses, margin_cp=150)
    assert verdict.is_best == (True, False, True) and verdict.is_unique == (True, False, False)
    assert not verdict.solver_unique
    assert PuzzleVerdict.from_analyses(
        "p", ["m0", "m1", "m2"], analyses, margin_cp=100
    ).solver_unique
    with pytest.raises(ValueError):
        PuzzleVerdict.from_analyses("p", ["m0"], analyses, margin_cp=100)


# --- with Stockfish -----------------------------------------------------------------------------


def test_mate_convention_and_mate_beats_any_margin(oracle):
    (analysis,) = oracle.analyse([BACK_RANK])
    assert analysis.best_move == "d1d8"
    assert analysis.score_cp == MATE_CP - 1
    assert abs(analysis.scores_cp[1]) < MATE_THRESHOLD_CP  # the second-best move does not mate
    assert analysis.is_unique("d1d8", 150)
    (two,) = oracle.analyse([TWO_MATES])
    assert two.scores_cp == (MATE_CP - 1, MATE_CP - 1)
    assert not two.is_unique(two.best_move, 150)
    # The same position with Black to move: scored from Black's side, a rook down.
    (black,) = oracle.analyse([BACK_RANK.replace(" w ", " b ")])
    assert -MATE_THRESHOLD_CP < black.score_cp < -300
    # Black's only move Kb8 is met by Qd8 mate: mated in 1 is -(MATE_CP - 1).
    (mated_in_1,) = oracle.analyse(["k7/3Q4/1K6/8/8/8/8/8 b - - 0 1"])
    assert mated_in_1.moves == ("a8b8",) and mated_in_1.scores_cp == (-(MATE_CP - 1),)
    assert mated_in_1.margin_cp is None and mated_in_1.is_unique("a8b8", 150)


def test_finished_games_are_scored_without_a_search(oracle):
    searches = oracle.stats["searches"]
    mated, stalemate = oracle.analyse([MATED, "7k/5Q2/6K1/8/8/8/8/8 b - - 0 1"])
    assert (mated.moves, mated.scores_cp) == ((), (-MATE_CP,))
    assert (stalemate.moves, stalemate.scores_cp) == ((), (0,))
    assert oracle.stats["searches"] == searches


def test_score_moves_restricts_the_search_to_one_move(oracle):
    board = chess.Board(BACK_RANK)
    mate, other = oracle.score_moves([(board, "d1d8"), (BACK_RANK, chess.Move.from_uci("h2h3"))])
    assert mate == MATE_CP - 1 and 0 < other < MATE_THRESHOLD_CP
    with pytest.raises(ValueError, match="'d1e3'"):
        oracle.score_moves([(BACK_RANK, "d1e3")])


def test_invalid_positions_are_refused(oracle):
    with pytest.raises(ValueError, match="invalid position"):
        oracle.analyse(["8/8/8/8/8/8/8/K7 w - - 0 1"])  # no black king


def test_check_puzzles_judges_every_ply(oracle):
    verdicts = oracle.check_puzzles(PUZZLES)
    assert [v.puzzle_id for v in verdicts] == [p.id for p in PUZZLES]
    for puzzle, verdict in zip(PUZZLES, verdicts):
        assert len(verdict.evals_cp) == len(verdict.is_unique) == len(puzzle.pv)
        assert verdict.is_best[0]  # Stockfish agrees with the first solver move of these puzzles
        assert verdict.solver_unique == all(verdict.is_unique[0::2])
    # The analyses are of the positions before each ply, side to move's view.
    (first,) = oracle.analyse([PUZZLES[1].board()])
    assert verdicts[1].evals_cp[0] == first.score_cp


def test_results_do_not_depend_on_the_pool_size(stockfish):
    fens = [board.fen() for puzzle in PUZZLES for board in puzzle.boards()]
    with Oracle(OracleConfig(path=stockfish, depth=DEPTH, num_engines=1)) as one:
        alone = one.analyse(fens)
    with Oracle(OracleConfig(path=stockfish, depth=DEPTH, num_engines=2)) as two:
        assert two.analyse(fens) == alone
        assert two.analyse(list(reversed(fens))) == list(reversed(alone))


def test_cache_answers_reruns_and_keys_on_settings(stockfish, tmp_path):
    cache = tmp_path / "run" / "oracle_cache.sqlite"
    config = OracleConfig(path=stockfish, depth=DEPTH, num_engines=2)
    with Oracle(config, cache_path=cache) as first:
        verdicts = first.check_puzzles(PUZZLES)
        searched = first.stats["searches"]
        assert searched > 0 and first.stats["cache_hits"] == 0
    with Oracle(config, cache_path=cache) as again:
        assert again.check_puzzles(PUZZLES) == verdicts
        assert again.stats == {"cache_hits": searched, "searches": 0, "restarts": 0}
        assert again.score_moves([(BACK_RANK, "h2h3")])  # a different query is searched
        assert again.stats["searches"] == 1
    # The margin is applied after the cache: changing it searches nothing.
    with Oracle(
        OracleConfig(path=stockfish, depth=DEPTH, margin_cp=10_000), cache_path=cache
    ) as strict:
        assert not any(v.solver_unique for v in strict.check_puzzles(PUZZLES[1:]))
        assert strict.stats["searches"] == 0
    # Other search settings are other keys.
    with Oracle(
        OracleConfig(path=stockfish, depth=DEPTH - 1, num_engines=1), cache_path=cache
    ) as shallower:
        shallower.check_puzzles(PUZZLES[:1])
        assert shallower.stats["cache_hits"] == 0 and shallower.stats["searches"] > 0


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def test_a_killed_idle_engine_is_restarted_and_the_position_retried(stockfish):
    fens = [board.fen() for board in PUZZLES[0].boards()]
    with Oracle(OracleConfig(path=stockfish, depth=DEPTH, num_engines=1)) as oracle:
        expected = oracle.analyse(fens)
    with Oracle(OracleConfig(path=stockfish, depth=DEPTH, num_engines=1)) as oracle:
        (pid,) = oracle.engine_pids()
        _kill(pid)
        assert oracle.analyse(fens) == expected
        assert oracle.stats["restarts"] == 1
        assert oracle.engine_pids() != [pid]


def test_engines_killed_mid_run_are_restarted_and_nothing_is_lost(stockfish, tmp_path):
    fens = [board.fen() for puzzle in PUZZLES for board in puzzle.boards()]
    with Oracle(OracleConfig(path=stockfish, depth=DEPTH, num_engines=2)) as oracle:
        expected = oracle.analyse(fens)
    cache = tmp_path / "cache.sqlite"
    with Oracle(
        OracleConfig(path=stockfish, depth=DEPTH, num_engines=2), cache_path=cache
    ) as oracle:
        pids = oracle.engine_pids()

        def kill_after_first_result() -> None:
            deadline = time.monotonic() + 30
            while oracle.stats["searches"] < 1 and time.monotonic() < deadline:
                time.sleep(0.0005)
            for pid in pids:
                _kill(pid)

        killer = threading.Thread(target=kill_after_first_result)
        killer.start()
        results = oracle.analyse(fens)
        killer.join()
        assert results == expected
        assert oracle.stats["restarts"] >= 1
        assert oracle.stats["searches"] == len(set(fens))
        assert not set(oracle.engine_pids()) & set(pids)
