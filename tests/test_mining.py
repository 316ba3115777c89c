"""Puzzle mining with the Stockfish oracle, on PGN literals with known tactics.

Small and shallow (depth 12, one engine): skipped when Stockfish is absent.
"""

from __future__ import annotations

import chess
import pytest

from engines import needs_stockfish

from leela_interp.errors import ConfigError
from leela_interp.puzzles.lichess import read_puzzles, write_puzzles
from leela_interp.puzzles.mining import (Game, MiningConfig, games_from_shards, mine_puzzles, phase,
                                         read_pgn, write_pgn)
from leela_interp.puzzles.oracle import Oracle, OracleConfig
from leela_interp.puzzles.puzzle import Puzzle


# Game 1: Black's 1...Qd7?? (guarding e8) allows 2.Qxe8+ Qxe8 3.Rxe8#, a back-rank mate in 2.
# Game 2: Legal's trap: 5...Bxd1?? allows 6.Bxf7+ Ke7 7.Nd5#.
# Game 3: a quiet Ruy Lopez opening: nothing to find.
PGN = """\
[Event "Back rank"]
[Site "?"]
[Result "*"]
[SetUp "1"]
[FEN "4r1k1/5ppp/3q4/8/8/8/4QPPP/4R1K1 b - - 0 1"]

1... Qd7 *

[Event "Legal trap"]
[Site "https://example.org/legal"]
[Result "1-0"]

1. e4 e5 2. Nf3 d6 3. Bc4 Bg4 4. Nc3 g6 5. Nxe5 Bxd1 6. Bxf7+ Ke7 7. Nd5# 1-0

[Event "Quiet"]
[Site "?"]
[Result "*"]

1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. Ba4 Nf6 5. O-O Be7 *
"""

CONFIG = MiningConfig(depth=12, screen_nodes=5000, num_engines=1)


@pytest.fixture(scope="module")
def pgn_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("pgn") / "games.pgn"
    path.write_text(PGN)
    return path


@pytest.fixture(scope="module")
def mined(pgn_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache") / "oracle.sqlite"
    return mine_puzzles(read_pgn(pgn_path), CONFIG, cache_path=cache)


def test_read_pgn(pgn_path):
    games = list(read_pgn(pgn_path))
    assert len(games) == 3
    assert games[0].start_fen == "4r1k1/5ppp/3q4/8/8/8/4QPPP/4R1K1 b - - 0 1"
    assert games[0].moves == ("d6d7",)
    assert games[1].source == "https://example.org/legal"
    assert games[2].source == "games.pgn:3"
    assert games[1].board_at(len(games[1].moves)).is_checkmate()


@needs_stockfish
def test_finds_the_known_tactics(mined):
    puzzles, stats = mined
    by_line = {tuple(p.moves): p for p in puzzles}
    back_rank = by_line[("d6d7", "e2e8", "d7e8", "e1e8")]
    assert back_rank.fen == "4r1k1/5ppp/3q4/8/8/8/4QPPP/4R1K1 b - - 0 1"
    assert "mateIn2" in back_rank.themes and "short" in back_rank.themes
    legal = by_line[("g4d1", "c4f7", "e8e7", "c3d5")]
    assert legal.fen == "rn1qkbnr/ppp2p1p/3p2p1/4N3/2B1P1b1/2N5/PPPP1PPP/R1BQK2R b KQkq - 0 5"
    assert legal.game_url == "https://example.org/legal"
    assert "mateIn2" in legal.themes
    # the quiet game gives nothing
    assert all(p.game_url in ("games.pgn:1", "https://example.org/legal") for p in puzzles)
    assert stats.games == 3 and stats.kept == len(puzzles)
    assert stats.positions == 1 + 12 + 10  # every position after a move, game over excluded


@needs_stockfish
def test_puzzles_are_valid_and_pass_the_oracle(mined, tmp_path):
    puzzles, _ = mined
    assert puzzles
    path = tmp_path / "mined.csv"
    write_puzzles(path, puzzles)
    read, counts = read_puzzles(path, exclude_themes=())
    assert [p.to_row() for p in read] == [p.to_row() for p in puzzles]
    assert not counts.rejected
    for p in puzzles:
        assert len(p.pv) >= CONFIG.min_plies and len(p.pv) % 2 == 1
        assert p.id == Puzzle.from_row(p.to_row()).id
    with Oracle(OracleConfig(depth=CONFIG.depth, num_engines=1)) as oracle:
        verdicts = oracle.check_puzzles(puzzles)
    assert all(v.solver_unique for v in verdicts)
    assert all(v.evals_cp[0] >= CONFIG.min_win_cp for v in verdicts)


@needs_stockfish
def test_deterministic_without_cache(pgn_path, mined):
    again, _ = mine_puzzles(read_pgn(pgn_path), CONFIG, cache_path=None)
    assert [p.to_row() for p in again] == [p.to_row() for p in mined[0]]


@needs_stockfish
def test_max_per_game_and_seen(pgn_path, tmp_path):
    games = list(read_pgn(pgn_path))
    cache = tmp_path / "oracle.sqlite"
    seen: set[str] = set()
    first, _ = mine_puzzles(games[:2], CONFIG, cache_path=cache, seen=seen)
    assert len(seen) == len(first)
    again, stats = mine_puzzles(games[:2], CONFIG, cache_path=cache, seen=seen)
    assert again == [] and stats.duplicates == len(first)


def test_shards_and_pgn_round_trip(tmp_path):
    np = pytest.importorskip("numpy")
    moves = "e2e4 e7e5 g1f3 b8c6 f1b5"
    np.savez(tmp_path / "shard-00000.npz", game_moves=np.array([moves, "d2d4"]))
    games = list(games_from_shards([tmp_path / "shard-00000.npz"]))
    assert games[0] == Game(chess.STARTING_FEN, tuple(moves.split()), "shard-00000.npz:0")
    write_pgn(games, tmp_path / "games.pgn")
    back = list(read_pgn(tmp_path / "games.pgn"))
    assert [(g.start_fen, g.moves, g.source) for g in back] == \
        [(g.start_fen, g.moves, g.source) for g in games]


def test_phase():
    assert phase(chess.Board()) == "opening"
    assert phase(chess.Board("4r1k1/5ppp/8/8/8/8/5PPP/4R1K1 w - - 0 30")) == "endgame"


def test_config_errors():
    with pytest.raises(ConfigError, match="min_plies"):
        MiningConfig(min_plies=5, max_plies=3)
    with pytest.raises(ConfigError, match="depth"):
        MiningConfig(depth=0)


@needs_stockfish
def test_confirm_depth_keeps_sound_puzzles(pgn_path, mined, tmp_path):
    config = MiningConfig(depth=12, confirm_depth=14, screen_nodes=5000, num_engines=1)
    confirmed, stats = mine_puzzles(read_pgn(pgn_path), config, cache_path=tmp_path / "c.sqlite")
    # both mates in 2 are sound at any depth; every kept puzzle passed the deeper check
    assert {tuple(p.moves) for p in confirmed} >= {("d6d7", "e2e8", "d7e8", "e1e8"),
                                                   ("g4d1", "c4f7", "e8e7", "c3d5")}
    assert stats.kept + sum(n for r, n in stats.rejected.items() if r.startswith("not_unique_at")) \
        == len(mined[0])
