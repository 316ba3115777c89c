"""Mine Lichess-style puzzles from games with the Stockfish oracle.

A *puzzle* is a position from a game where the side to move (the *solver*) has a unique
winning move and a forcing line of at least ``min_plies`` plies follows:

1. **Screen** (cheap): every position of every game (from ply 1 on, so that it has a setup
   move) is searched by a fast oracle (``screen_nodes`` nodes, multipv 2). Positions where the
   best move is roughly winning and roughly unique (both thresholds loosened by
   ``screen_slack_cp``) go on.
2. **Verify** (deep oracle, ``depth`` plies, multipv 2): the first solver move must be
   Stockfish's best, score at least ``min_win_cp`` for the solver, beat the second-best by
   ``margin_cp`` (mate against no mate always does; the ``leela_interp.puzzles.oracle`` scale) and,
   if ``max_second_cp`` is set, the second-best move must score at most that (only one move
   wins). There must be at least two legal moves.
3. **Extend**: the opponent answers with Stockfish's best reply; each further solver move must
   again be unique (best, and ``margin_cp`` ahead of the second; an only move counts as
   unique, as in :meth:`leela_interp.puzzles.oracle.Analysis.is_unique`). The line stops at
   checkmate, at ``max_plies``, or before the first solver move that is not unique (the
   opponent's reply before it is dropped, so every line ends with a solver move). Lines
   shorter than ``min_plies`` are discarded.
4. **Confirm** (optional, ``confirm_depth``): the finished puzzle is judged again by a deeper
   oracle exactly as the puzzles stage judges it (every solver move Stockfish's best and
   ``margin_cp`` ahead of the second) and dropped if it fails.

The result is a :class:`~leela_interp.puzzles.puzzle.Puzzle` in the Lichess convention: ``fen`` is
the game position *before* the opponent's setup move (the game's previous move), ``moves`` is
the setup move followed by the line. ``rating`` is empty; ``themes`` are ``mateInN`` (the line
ends in checkmate after N solver moves), else ``crushing`` (the solver's last score >= 500
cp) or ``advantage``; the length tag ``short`` / ``long`` / ``veryLong`` (2 / 3 / 4+ solver
moves); and the phase of the puzzle position (:func:`phase`). ``game_url`` names the source
game. Ids are the first 8 hex digits of the sha1 of ``fen`` and ``moves``.

Everything is deterministic: searches use one thread, depth or node limits and a cleared hash
(see :mod:`leela_interp.puzzles.oracle`), and ``seed`` only drives the per-game choice when
``max_per_game`` caps how many puzzles one game gives (the generator is seeded with ``seed``
and the game's ``source``). Results are cached in the oracle's
sqlite cache, so an interrupted run resumes cheaply.

>>> games = read_pgn("games.pgn")  # doctest: +SKIP
>>> puzzles, stats = mine_puzzles(games, MiningConfig(depth=14))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import chess
import chess.pgn
import numpy as np

from leela_interp.errors import ConfigError
from leela_interp.puzzles.oracle import Analysis, Oracle, OracleConfig
from leela_interp.puzzles.puzzle import Puzzle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Game:
    """A game to mine: a start position and the moves played from it."""

    start_fen: str
    """FEN of the position before ``moves[0]``."""
    moves: tuple[str, ...]
    """The moves in UCI (python-chess notation)."""
    source: str = ""
    """Where the game comes from (for ``Puzzle.game_url``): a URL or ``file:index``."""

    def board_at(self, ply: int) -> chess.Board:
        """The position after ``ply`` moves, with those moves on its stack."""
        board = chess.Board(self.start_fen)
        for uci in self.moves[:ply]:
            board.push_uci(uci)
        return board


@dataclass(frozen=True)
class MiningConfig:
    """Settings of :func:`mine_puzzles`.

    Raises:
        ConfigError: On construction, for an invalid value (the message shows it).
    """

    depth: int = 16
    """Verification search depth (the puzzles stage's oracle default is 16)."""
    screen_nodes: int = 10_000
    """Node limit of the screening search."""
    screen_slack_cp: int = 100
    """The screen keeps positions within this much of ``min_win_cp`` and ``margin_cp``."""
    margin_cp: int = 150
    """A solver move must beat the second-best move by this much (the oracle's default)."""
    min_win_cp: int = 200
    """The first solver move must score at least this for the solver."""
    max_second_cp: int | None = 100
    """If set, the second-best first move may score at most this (only one move wins)."""
    min_plies: int = 3
    """Shortest line (solver and opponent plies) a puzzle may have."""
    max_plies: int = 9
    """The line stops after this many plies (an odd number keeps a solver move last)."""
    min_game_ply: int = 1
    """Skip puzzle positions before this game ply (e.g. to skip random openings)."""
    confirm_depth: int | None = None
    """If set, every mined puzzle is checked again at this depth (as the puzzles stage's oracle
    does: :meth:`leela_interp.puzzles.oracle.Oracle.check_puzzles`) and kept only if every solver
    move is still Stockfish's unique best; e.g. mine at depth 12 and confirm at 16."""
    max_per_game: int | None = None
    """Keep at most this many puzzles per game, chosen with ``seed``; None keeps all."""
    seed: int = 0
    """Seed of the per-game choice (only used with ``max_per_game``)."""
    path: str = "/usr/games/stockfish"
    """The Stockfish binary."""
    hash_mb: int = 16
    """UCI Hash per engine, MiB."""
    num_engines: int | None = None
    """Engine processes; None = one per CPU core."""

    def __post_init__(self) -> None:
        if self.confirm_depth is not None and (not isinstance(self.confirm_depth, int)
                                               or self.confirm_depth < 1):
            raise ConfigError(f"mining confirm_depth must be a positive integer or None, "
                              f"got {self.confirm_depth!r}")
        for name in ("depth", "screen_nodes", "min_plies", "max_plies", "min_game_ply",
                     "hash_mb"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"mining {name} must be a positive integer, "
                                  f"got {getattr(self, name)!r}")
        if self.min_plies > self.max_plies:
            raise ConfigError(f"mining min_plies {self.min_plies!r} > max_plies "
                              f"{self.max_plies!r}")
        if self.max_per_game is not None and self.max_per_game < 1:
            raise ConfigError(f"mining max_per_game must be >= 1 or None, "
                              f"got {self.max_per_game!r}")

    def screen_oracle(self) -> OracleConfig:
        return OracleConfig(path=self.path, threads=1, hash_mb=self.hash_mb, depth=None,
                            nodes=self.screen_nodes, multipv=2, margin_cp=self.margin_cp,
                            num_engines=self.num_engines)

    def verify_oracle(self, depth: int | None = None) -> OracleConfig:
        return OracleConfig(path=self.path, threads=1, hash_mb=self.hash_mb,
                            depth=depth or self.depth, multipv=2, margin_cp=self.margin_cp,
                            num_engines=self.num_engines)


@dataclass
class MiningStats:
    """Counts of one mining run (every candidate ends in exactly one bucket after screening)."""

    games: int = 0
    positions: int = 0
    """Positions searched by the screen."""
    screened: int = 0
    """Positions that passed the screen."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Verified candidates dropped, per reason."""
    found: int = 0
    """Lines that became puzzles (before de-duplication and the per-game cap)."""
    duplicates: int = 0
    capped: int = 0
    kept: int = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------- input


def read_pgn(path: str | os.PathLike[str], *, limit: int | None = None) -> Iterator[Game]:
    """The games of a PGN file (standard chess only; games with errors or variants skipped).

    A game's start is its ``FEN`` header if it has one, else the standard position. Its
    ``source`` is the ``Site`` header, or ``<file name>:<1-based game number>`` when that is
    empty or ``?``.
    """
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        index = 0
        while limit is None or index < limit:
            game = chess.pgn.read_game(handle)
            if game is None:
                break
            index += 1
            variant = game.headers.get("Variant", "Standard").lower()
            if game.errors or variant not in ("standard", "chess", "from position"):
                log.warning("%s game %d skipped (errors %s, variant %r)", path, index,
                            game.errors[:1], variant)
                continue
            site = game.headers.get("Site", "").strip()
            source = site if site not in ("", "?") else f"{path.name}:{index}"
            moves = tuple(m.uci() for m in game.mainline_moves())
            yield Game(game.board().fen(), moves, source)


def games_from_shards(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Game]:
    """The games of ``scripts/make_training_data.py`` shards (``game_moves`` arrays)."""
    for path in paths:
        path = Path(path)
        with np.load(path) as data:
            for index, moves in enumerate(data["game_moves"]):
                yield Game(chess.STARTING_FEN, tuple(str(moves).split()),
                           f"{path.name}:{index}")


def candidates_from_shards(paths: Iterable[str | os.PathLike[str]],
                           config: MiningConfig) -> tuple[list[Game], list[tuple[int, int]]]:
    """Games of training-data shards and their positions that pass the screen, using the
    Stockfish labels already in the shards (``multipv_moves`` / ``multipv_cp``, side to move's
    view) instead of a new screening search.

    Returns:
        The games (as :func:`games_from_shards`) and ``(game index, ply)`` candidates for the
        ``candidates`` argument of :func:`mine_puzzles`.
    """
    games: list[Game] = []
    candidates: list[tuple[int, int]] = []
    slack = config.screen_slack_cp
    for path in paths:
        path = Path(path)
        with np.load(path) as data:
            offset = len(games)
            games.extend(Game(chess.STARTING_FEN, tuple(str(m).split()), f"{path.name}:{i}")
                         for i, m in enumerate(data["game_moves"]))
            cp = data["multipv_cp"]
            n_moves = np.array([len(str(m).split()) for m in data["multipv_moves"]])
            for row in range(len(cp)):
                ply = int(data["ply"][row])
                if ply < max(1, config.min_game_ply) or n_moves[row] < 2:
                    continue
                best, second = int(cp[row, 0]), int(cp[row, 1])
                if (best >= config.min_win_cp - slack and best - second >= config.margin_cp - slack
                        and (config.max_second_cp is None
                             or second <= config.max_second_cp + slack)):
                    candidates.append((offset + int(data["game"][row]), ply))
    return games, candidates


def write_pgn(games: Iterable[Game], path: str | os.PathLike[str]) -> int:
    """Write games as PGN (so that other tools, or :func:`read_pgn`, can read them)."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for game in games:
            pgn = chess.pgn.Game.from_board(game.board_at(len(game.moves)))
            pgn.headers["Site"] = game.source
            print(pgn, file=handle, end="\n\n")
            count += 1
    return count


# --------------------------------------------------------------------------- mining


def phase(board: chess.Board) -> str:
    """The game phase of a position, roughly as Lichess tags it.

    ``endgame`` if each side has at most 13 points of non-pawn material (N, B = 3, R = 5,
    Q = 9) or there are no queens and at most 16 points together; else ``opening`` before
    ply 20 (``board.ply()``, from the FEN's move number); else ``middlegame``.
    """
    values = {chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9}
    side = [sum(v * len(board.pieces(p, c)) for p, v in values.items())
            for c in (chess.WHITE, chess.BLACK)]
    queens = len(board.pieces(chess.QUEEN, chess.WHITE) | board.pieces(chess.QUEEN, chess.BLACK))
    if max(side) <= 13 or (queens == 0 and sum(side) <= 16):
        return "endgame"
    return "opening" if board.ply() < 20 else "middlegame"


def _first_move_ok(a: Analysis, config: MiningConfig, slack: int = 0) -> str | None:
    """None if ``a`` passes the first-move test (loosened by ``slack``), else the reason."""
    if len(a.moves) < 2:
        return "single_legal_move" if a.moves else "game_over"
    if a.score_cp < config.min_win_cp - slack:
        return "not_winning"
    if a.margin_cp < config.margin_cp - slack:
        return "not_unique"
    if config.max_second_cp is not None and a.scores_cp[1] > config.max_second_cp + slack:
        return "second_move_wins"
    return None


@dataclass
class _Line:
    game: int
    ply: int
    board: chess.Board
    moves: list[str] = field(default_factory=list)
    scores: list[int] = field(default_factory=list)
    done: bool = False
    reason: str | None = None

    def drop_last(self) -> None:
        self.moves.pop()
        self.scores.pop()
        self.board.pop()


def _extend(lines: list[_Line], oracle: Oracle, config: MiningConfig) -> None:
    """Grow every line one ply at a time, searching all open lines' positions together."""
    while True:
        open_lines = [line for line in lines if not line.done]
        if not open_lines:
            return
        analyses = oracle.analyse([line.board for line in open_lines])
        for line, a in zip(open_lines, analyses):
            i = len(line.moves)
            solver = i % 2 == 0
            if i == 0:
                line.reason = _first_move_ok(a, config)
                if line.reason is not None:
                    line.done = True
                    continue
            elif solver and not a.is_unique(a.best_move or "", config.margin_cp):
                line.drop_last()  # the opponent's reply: lines end with a solver move
                line.done = True
                continue
            if not a.moves:  # the opponent has no move: cannot happen after the checks above
                line.done = True
                continue
            line.moves.append(a.best_move)
            line.scores.append(a.score_cp if solver else -a.score_cp)
            line.board.push_uci(a.best_move)
            if line.board.is_game_over(claim_draw=False) or len(line.moves) >= config.max_plies:
                if not solver:  # the game ended on the opponent's move (e.g. stalemate)
                    line.drop_last()
                line.done = True


def _confirm(lines: list[_Line], games: Sequence[Game], config: MiningConfig,
             cache_path, stats: MiningStats) -> list[_Line]:
    """Drop lines whose solver moves are not all unique at ``confirm_depth``."""
    good = [line for line in lines
            if line.reason is None and len(line.moves) >= config.min_plies]
    if not good:
        return lines
    puzzles = [Puzzle(id=str(i), fen=games[line.game].board_at(line.ply - 1).fen(),
                      moves=[games[line.game].moves[line.ply - 1], *line.moves])
               for i, line in enumerate(good)]
    with Oracle(config.verify_oracle(config.confirm_depth), cache_path=cache_path) as oracle:
        verdicts = oracle.check_puzzles(puzzles)
    for line, verdict in zip(good, verdicts):
        if not verdict.solver_unique:
            line.reason = f"not_unique_at_depth_{config.confirm_depth}"
    return lines


def _themes(line: _Line, start: chess.Board) -> list[str]:
    solver_moves = (len(line.moves) + 1) // 2
    board = line.board
    if board.is_checkmate():
        themes = [f"mateIn{solver_moves}"]
    elif line.scores and line.scores[-1] >= 500:
        themes = ["crushing"]
    else:
        themes = ["advantage"]
    themes.append({1: "oneMove", 2: "short", 3: "long"}.get(solver_moves, "veryLong"))
    themes.append(phase(start))
    return sorted(themes)


def _puzzle_id(fen: str, moves: Sequence[str]) -> str:
    return hashlib.sha1(f"{fen}|{' '.join(moves)}".encode()).hexdigest()[:8]


def mine_puzzles(games: Iterable[Game], config: MiningConfig | None = None, *,
                 cache_path: str | os.PathLike[str] | None = None,
                 stats: MiningStats | None = None,
                 seen: set[str] | None = None,
                 candidates: Sequence[tuple[int, int]] | None = None
                 ) -> tuple[list[Puzzle], MiningStats]:
    """Find puzzles in ``games`` (see the module docstring for the rules).

    Args:
        games: the games, e.g. from :func:`read_pgn` or :func:`games_from_shards`.
        config: the settings (default :class:`MiningConfig`).
        cache_path: sqlite file for both oracles' results (reruns search nothing twice).
        stats: counts to add to (for several calls); a new one if None.
        seen: EPDs of puzzle positions already found (for several calls); puzzles at these
            positions are dropped as duplicates, new ones are added.
        candidates: ``(game index, ply)`` positions already screened (e.g. by
            :func:`candidates_from_shards`); None screens every position with the oracle.

    Returns:
        The puzzles in game order, then ply order, and the counts.

    Raises:
        StockfishNotFoundError: the Stockfish binary cannot be run.
    """
    config = config or MiningConfig()
    stats = stats or MiningStats()
    games = list(games)
    stats.games += len(games)
    if candidates is None:
        positions: list[tuple[int, int]] = []
        for g, game in enumerate(games):
            board = chess.Board(game.start_fen)
            for ply, uci in enumerate(game.moves, start=1):
                board.push_uci(uci)
                if ply >= config.min_game_ply and not board.is_game_over():
                    positions.append((g, ply))
        stats.positions += len(positions)
        with Oracle(config.screen_oracle(), cache_path=cache_path) as screen:
            analyses = screen.analyse([games[g].board_at(ply).fen() for g, ply in positions])
        passed = [c for c, a in zip(positions, analyses)
                  if _first_move_ok(a, config, config.screen_slack_cp) is None]
    else:
        passed = list(candidates)
    stats.screened += len(passed)
    lines = [_Line(g, ply, games[g].board_at(ply)) for g, ply in passed]
    with Oracle(config.verify_oracle(), cache_path=cache_path) as oracle:
        _extend(lines, oracle, config)
    found: dict[int, list[Puzzle]] = {}
    if config.confirm_depth is not None:
        lines = _confirm(lines, games, config, cache_path, stats)
    for line in lines:
        if line.reason is not None:
            stats.reject(line.reason)
            continue
        if len(line.moves) < config.min_plies:
            stats.reject("short_line")
            continue
        stats.found += 1
        game = games[line.game]
        before = game.board_at(line.ply - 1)
        setup = game.moves[line.ply - 1]
        fen = before.fen()
        moves = [setup, *line.moves]
        found.setdefault(line.game, []).append(Puzzle(
            id=_puzzle_id(fen, moves), fen=fen, moves=moves,
            themes=_themes(line, game.board_at(line.ply)), game_url=game.source))
    puzzles: list[Puzzle] = []
    seen = set() if seen is None else seen
    for g in sorted(found):
        chosen = []
        for puzzle in found[g]:
            key = puzzle.board().epd()
            if key in seen:
                stats.duplicates += 1
                continue
            seen.add(key)
            chosen.append(puzzle)
        if config.max_per_game is not None and len(chosen) > config.max_per_game:
            rng = np.random.default_rng([config.seed, _stable_int(games[g].source)])
            keep = sorted(rng.choice(len(chosen), config.max_per_game, replace=False))
            stats.capped += len(chosen) - len(keep)
            chosen = [chosen[i] for i in keep]
        puzzles.extend(chosen)
    stats.kept += len(puzzles)
    return puzzles, stats


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little")
