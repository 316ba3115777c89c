"""A Stockfish oracle: is each solver move of a puzzle the engine's best move, and by how much?

:class:`Oracle` drives a pool of Stockfish processes through :mod:`chess.engine` (UCI), one
search per position on whichever engine is free, and caches every result on disk by (FEN,
engine settings) so that reruns and other stages do not search again.

Scores are centipawns **from the point of view of the side to move** in the analysed position.
A forced mate is a large value (see :data:`MATE_CP`): mate in ``n`` moves for the side to move
is ``MATE_CP - n``, being mated in ``n`` is ``-(MATE_CP - n)``, being checkmated now is
``-MATE_CP``. Any ``|score| >= MATE_THRESHOLD_CP`` is a mate. Differences between scores are
taken on this scale, so mate against no mate always beats a margin below ``MATE_THRESHOLD_CP``
and a shorter mate against a longer one differs by the difference in moves.

Each search starts from the bare FEN (no move history, so no repetition draws) and with a
cleared hash table (``ucinewgame``), so that with ``threads=1`` and a depth or node limit a
result depends only on (FEN, settings) and is reproducible.

>>> config = OracleConfig(depth=10)
>>> with Oracle(config, cache_path="run/oracle_cache.sqlite") as oracle:  # doctest: +SKIP
...     verdicts = oracle.check_puzzles(puzzles)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import queue
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import chess
import chess.engine

from leela_interp.errors import ConfigError, LeelaInterpError
from leela_interp.puzzles.puzzle import Puzzle

log = logging.getLogger(__name__)

#: Where Debian's ``stockfish`` package installs the binary (not on ``PATH``).
DEFAULT_STOCKFISH_PATH = "/usr/games/stockfish"
#: Score of a mate on the move for the side to move (see the module docstring).
MATE_CP = 100_000
#: Scores at least this large in absolute value are mates.
MATE_THRESHOLD_CP = 50_000
#: How often one position is tried on a fresh engine before :class:`OracleError` is raised.
MAX_ATTEMPTS = 3

_INSTALL_HINT = (
    "install it with `apt-get install stockfish` (Debian/Ubuntu put it at /usr/games/stockfish) "
    "or set the oracle path to a Stockfish binary"
)


class StockfishNotFoundError(LeelaInterpError, FileNotFoundError):
    """The Stockfish binary does not exist or cannot be run; the message says how to install it."""


class OracleError(LeelaInterpError, RuntimeError):
    """A position could not be analysed, even on fresh engines; the message names its FEN."""


@dataclass(frozen=True)
class OracleConfig:
    """How the oracle searches and judges.

    Set at least one of ``depth``, ``nodes`` and ``time_s``; the search stops at the first
    reached. Only ``threads=1`` with a ``depth`` or ``nodes`` limit gives reproducible results.

    Raises:
        ConfigError: On construction, for an invalid value (the message shows it).
    """

    path: str = DEFAULT_STOCKFISH_PATH
    """The Stockfish binary: a path, or a command name looked up on ``PATH``."""
    threads: int = 1
    """UCI ``Threads`` per engine process."""
    hash_mb: int = 16
    """UCI ``Hash`` per engine process, in MiB."""
    depth: int | None = 16
    """Search depth limit in plies, or ``None``."""
    nodes: int | None = None
    """Node limit per search, or ``None``."""
    time_s: float | None = None
    """Time limit per search in seconds, or ``None`` (not reproducible)."""
    multipv: int = 2
    """How many best moves to search per position; at least 2, to compare best and second."""
    margin_cp: int = 150
    """A move is *unique* if it is the best and beats the second-best by at least this."""
    num_engines: int | None = None
    """Engine processes in the pool; ``None`` means one per CPU core."""

    def __post_init__(self) -> None:
        if self.depth is None and self.nodes is None and self.time_s is None:
            raise ConfigError(
                "set at least one oracle limit: depth, nodes or time_s (all are None)"
            )
        for name in ("threads", "hash_mb", "depth", "nodes", "multipv", "num_engines"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"oracle {name} must be a positive integer or None, got {value!r}"
                )
        if self.time_s is not None and not self.time_s > 0:
            raise ConfigError(f"oracle time_s must be > 0 or None, got {self.time_s!r}")
        if self.multipv < 2:
            raise ConfigError(
                "oracle multipv must be >= 2 to compare best and second moves, "
                f"got {self.multipv!r}"
            )
        if not 0 <= self.margin_cp < MATE_THRESHOLD_CP:
            raise ConfigError(
                f"oracle margin_cp must be in [0, {MATE_THRESHOLD_CP}), got {self.margin_cp!r}"
            )

    @property
    def limit(self) -> chess.engine.Limit:
        """The search limit as a :class:`chess.engine.Limit`."""
        return chess.engine.Limit(depth=self.depth, nodes=self.nodes, time=self.time_s)

    @property
    def engines(self) -> int:
        """How many engine processes the pool runs."""
        return self.num_engines or os.cpu_count() or 1


@dataclass(frozen=True)
class Analysis:
    """Stockfish's top moves in one position."""

    fen: str
    """The analysed position."""
    moves: tuple[str, ...]
    """The best moves in UCI, best first (fewer than ``multipv`` if there are fewer legal moves;
    empty if the game is over)."""
    scores_cp: tuple[int, ...]
    """The score after each of ``moves``, side to move's view, mates per :data:`MATE_CP`. For a
    finished game, one score and no move: ``-MATE_CP`` if checkmated, else 0."""
    depth: int
    """Depth the search completed (0 for a finished game)."""

    @property
    def best_move(self) -> str | None:
        """Stockfish's best move, or ``None`` in a finished game."""
        return self.moves[0] if self.moves else None

    @property
    def score_cp(self) -> int:
        """The position's score: the best move's."""
        return self.scores_cp[0]

    @property
    def margin_cp(self) -> int | None:
        """Best score minus second-best score; ``None`` with fewer than two legal moves."""
        return self.scores_cp[0] - self.scores_cp[1] if len(self.scores_cp) > 1 else None

    def is_best(self, move: str | chess.Move) -> bool:
        """Whether ``move`` is Stockfish's best move."""
        uci = move.uci() if isinstance(move, chess.Move) else move
        return uci == self.best_move

    def is_unique(self, move: str | chess.Move, margin_cp: int) -> bool:
        """Whether ``move`` is the best move and beats the second by at least ``margin_cp``.

        The only legal move is unique.
        """
        margin = self.margin_cp
        return self.is_best(move) and (margin is None or margin >= margin_cp)

    def to_json(self) -> str:
        """This analysis as a JSON object (the cache's format)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Analysis:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(data["fen"], tuple(data["moves"]), tuple(data["scores_cp"]), data["depth"])


@dataclass(frozen=True)
class PuzzleVerdict:
    """The oracle's judgement of one puzzle's principal variation (PV).

    Every per-ply tuple has one entry per PV ply; plies 0, 2, ... are the solver's moves.
    """

    puzzle_id: str
    """The puzzle's id."""
    evals_cp: tuple[int, ...]
    """Stockfish's score of the position before each ply, side to move's view."""
    best_moves: tuple[str, ...]
    """Stockfish's best move before each ply."""
    margins_cp: tuple[int | None, ...]
    """Best minus second-best score before each ply (``None``: only one legal move)."""
    is_best: tuple[bool, ...]
    """Whether each PV move is Stockfish's best move."""
    is_unique: tuple[bool, ...]
    """Whether each PV move is the best and beats the second by the margin."""

    @property
    def solver_unique(self) -> bool:
        """Whether every solver move (plies 0, 2, ...) is unique: the oracle's puzzle filter."""
        return all(self.is_unique[0::2])

    @classmethod
    def from_analyses(
        cls, puzzle_id: str, pv: Sequence[str], analyses: Sequence[Analysis], margin_cp: int
    ) -> PuzzleVerdict:
        """Judge ``pv`` given the analysis of the position before each of its moves."""
        if len(pv) != len(analyses):
            raise ValueError(
                f"{len(pv)} PV moves but {len(analyses)} analyses for puzzle {puzzle_id!r}"
            )
        return cls(
            puzzle_id=puzzle_id,
            evals_cp=tuple(a.score_cp for a in analyses),
            best_moves=tuple(a.best_move or "" for a in analyses),
            margins_cp=tuple(a.margin_cp for a in analyses),
            is_best=tuple(a.is_best(m) for a, m in zip(analyses, pv)),
            is_unique=tuple(a.is_unique(m, margin_cp) for a, m in zip(analyses, pv)),
        )


def score_cp(score: chess.engine.PovScore, turn: chess.Color) -> int:
    """A python-chess score as centipawns for ``turn``, mates per :data:`MATE_CP`."""
    value = score.pov(turn).score(mate_score=MATE_CP)
    return int(value)


def find_stockfish(path: str = DEFAULT_STOCKFISH_PATH) -> str:
    """The runnable Stockfish binary ``path`` names (a file, or a command on ``PATH``).

    Raises:
        StockfishNotFoundError: It does not exist or is not executable.
    """
    found = shutil.which(path)
    if found is None:
        raise StockfishNotFoundError(f"Stockfish not found at {path!r}: {_INSTALL_HINT}")
    return found


def check_engine(path: str = DEFAULT_STOCKFISH_PATH) -> str:
    """:func:`find_stockfish`, then start it and end it: a binary that is not a UCI engine (a
    script, a crashing build) is refused before any work.

    Raises:
        StockfishNotFoundError: it does not exist, or does not answer as a UCI engine.
    """
    found = find_stockfish(path)
    try:
        engine = chess.engine.SimpleEngine.popen_uci(found, timeout=30)
    except (chess.engine.EngineError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
        raise StockfishNotFoundError(
            f"{found!r} (puzzles.oracle.path={path!r}) did not start as a UCI engine "
            f"({exc.__class__.__name__}: {exc}): {_INSTALL_HINT}") from None
    _close_quietly(engine)
    return found


class _Cache:
    """Analyses on disk: an sqlite table keyed by (settings, FEN, query), JSON values.

    Used only from the thread that owns the :class:`Oracle`.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS analysis (settings TEXT NOT NULL, fen TEXT NOT NULL, "
            "query TEXT NOT NULL, result TEXT NOT NULL, PRIMARY KEY (settings, fen, query))"
        )
        self._db.commit()

    def get(self, settings: str, fen: str, query: str) -> Analysis | None:
        row = self._db.execute(
            "SELECT result FROM analysis WHERE settings = ? AND fen = ? AND query = ?",
            (settings, fen, query),
        ).fetchone()
        return None if row is None else Analysis.from_json(row[0])

    def put(self, settings: str, fen: str, query: str, analysis: Analysis) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO analysis VALUES (?, ?, ?, ?)",
            (settings, fen, query, analysis.to_json()),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class Oracle:
    """A pool of Stockfish processes with an on-disk cache.

    The engines start on construction; use the oracle as a context manager (or call
    :meth:`close`) to stop them. Methods take many positions at once and search them in
    parallel, one per free engine; call them from one thread at a time.

    If an engine dies during a search (crash, killed), it is replaced by a fresh process and the
    position searched again, up to :data:`MAX_ATTEMPTS` times.

    Args:
        config: Search and judging settings.
        cache_path: An sqlite file for cached results (created if missing), e.g.
            ``run_dir / "oracle_cache.sqlite"``; ``None`` caches nothing.

    Raises:
        StockfishNotFoundError: ``config.path`` is not a runnable binary.
    """

    def __init__(
        self,
        config: OracleConfig | None = None,
        *,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config or OracleConfig()
        self._binary = find_stockfish(self.config.path)
        self._idle: queue.Queue[chess.engine.SimpleEngine] = queue.Queue()
        self._engines: list[chess.engine.SimpleEngine] = []
        self._lock = threading.Lock()
        self._cache: _Cache | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: Positions answered from the cache, searched, and engines restarted, so far.
        self.stats = {"cache_hits": 0, "searches": 0, "restarts": 0}
        try:
            for _ in range(self.config.engines):
                engine = self._start_engine()
                self._engines.append(engine)
                self._idle.put(engine)
            #: The engine's UCI name, e.g. ``"Stockfish 15.1"``; part of the cache key.
            self.engine_name: str = self._engines[0].id.get("name", self._binary)
            self._settings = json.dumps(
                {
                    "engine": self.engine_name,
                    "threads": self.config.threads,
                    "hash_mb": self.config.hash_mb,
                    "depth": self.config.depth,
                    "nodes": self.config.nodes,
                    "time_s": self.config.time_s,
                    "multipv": self.config.multipv,
                },
                sort_keys=True,
            )
            if cache_path is not None:
                self._cache = _Cache(Path(cache_path))
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.config.engines, thread_name_prefix="oracle"
            )
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Oracle({self.config!r})"

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engines and close the cache. Safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            engines, self._engines = self._engines, []
        for engine in engines:
            _close_quietly(engine)
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def engine_pids(self) -> list[int]:
        """The process ids of the running engines (for monitoring and tests)."""
        with self._lock:
            return [engine.protocol.transport.get_pid() for engine in self._engines]

    def _start_engine(self) -> chess.engine.SimpleEngine:
        try:
            engine = chess.engine.SimpleEngine.popen_uci(self._binary)
        except (FileNotFoundError, PermissionError) as exc:
            raise StockfishNotFoundError(
                f"cannot run Stockfish {self._binary!r} ({exc}): {_INSTALL_HINT}"
            ) from None
        try:
            engine.configure({"Threads": self.config.threads, "Hash": self.config.hash_mb})
        except BaseException:
            _close_quietly(engine)
            raise
        return engine

    def _replace_engine(self, dead: chess.engine.SimpleEngine) -> chess.engine.SimpleEngine:
        _close_quietly(dead)
        fresh = self._start_engine()
        with self._lock:
            self._engines = [fresh if engine is dead else engine for engine in self._engines]
            self.stats["restarts"] += 1
        return fresh

    def _search(self, fen: str, root_move: str | None) -> Analysis:
        """Search one position on a free engine, restarting dead engines. Runs in a pool thread."""
        board = chess.Board(fen)
        root_moves = None if root_move is None else [chess.Move.from_uci(root_move)]
        multipv = 1 if root_move is not None else self.config.multipv
        engine = self._idle.get()
        try:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    infos = engine.analyse(
                        board,
                        self.config.limit,
                        multipv=multipv,
                        game=object(),
                        root_moves=root_moves,
                    )
                    break
                except (
                    chess.engine.EngineError,
                    OSError,
                    concurrent.futures.CancelledError,
                ) as exc:
                    # A dead engine raises EngineTerminatedError, or CancelledError when its event
                    # loop stops during the call.
                    log.warning(
                        "Stockfish failed on %r (attempt %d of %d): %r; restarting it",
                        fen,
                        attempt,
                        MAX_ATTEMPTS,
                        exc,
                    )
                    engine = self._replace_engine(engine)
            else:
                raise OracleError(f"Stockfish failed {MAX_ATTEMPTS} times on position {fen!r}")
        finally:
            self._idle.put(engine)
        infos = [info for info in infos if info.get("pv")]
        if not infos:
            raise OracleError(f"Stockfish returned no move for position {fen!r}")
        return Analysis(
            fen=fen,
            moves=tuple(info["pv"][0].uci() for info in infos),
            scores_cp=tuple(score_cp(info["score"], board.turn) for info in infos),
            depth=int(infos[0].get("depth", 0)),
        )

    def _run(self, queries: Sequence[tuple[str, str | None]]) -> list[Analysis]:
        """Answer (FEN, root move or None) queries from the cache or by searching, in order."""
        results: dict[tuple[str, str | None], Analysis] = {}
        todo: list[tuple[str, str | None]] = []
        for query in dict.fromkeys(queries):
            fen, root_move = query
            board = chess.Board(fen)
            if not board.is_valid():
                raise ValueError(f"cannot analyse invalid position {fen!r} ({board.status()!r})")
            if root_move is not None and chess.Move.from_uci(root_move) not in board.legal_moves:
                raise ValueError(f"move {root_move!r} is not legal in {fen!r}")
            outcome = board.outcome()
            if outcome is not None:
                results[query] = Analysis(fen, (), (-MATE_CP if board.is_checkmate() else 0,), 0)
                continue
            cached = self._cache.get(self._settings, fen, root_move or "") if self._cache else None
            if cached is not None:
                results[query] = cached
                self.stats["cache_hits"] += 1
            else:
                todo.append(query)
        if todo:
            if self._pool is None:
                raise RuntimeError("the oracle is closed")
            futures = {
                self._pool.submit(self._search, fen, root_move): (fen, root_move)
                for fen, root_move in todo
            }
            try:
                for future in concurrent.futures.as_completed(futures):
                    query = futures[future]
                    analysis = future.result()
                    results[query] = analysis
                    self.stats["searches"] += 1
                    if self._cache is not None:
                        self._cache.put(self._settings, query[0], query[1] or "", analysis)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return [results[query] for query in queries]

    def analyse(self, positions: Iterable[str | chess.Board]) -> list[Analysis]:
        """Stockfish's top ``multipv`` moves in each position.

        Args:
            positions: FENs or boards; a board is analysed from its FEN, without its move stack.

        Returns:
            One :class:`Analysis` per position, in order (repeats are searched once).

        Raises:
            ValueError: A position is invalid (``chess.Board.is_valid`` is false).
            OracleError: A position failed on :data:`MAX_ATTEMPTS` fresh engines.
        """
        fens = [p.fen() if isinstance(p, chess.Board) else chess.Board(p).fen() for p in positions]
        return self._run([(fen, None) for fen in fens])

    def score_moves(self, pairs: Iterable[tuple[str | chess.Board, str | chess.Move]]) -> list[int]:
        """Stockfish's score of playing a given move, for each (position, move) pair.

        The search is restricted to that root move (UCI ``go searchmoves``); the score is the
        mover's view, mates per :data:`MATE_CP`. It can differ from the same move's score in
        :meth:`analyse` (a different search), so compare it only with other ``score_moves``
        results, e.g. a move on a clean and on a corrupted board.

        Raises:
            ValueError: A position is invalid, or a move is not legal in it.
            OracleError: A position failed on :data:`MAX_ATTEMPTS` fresh engines.
        """
        queries = []
        for position, move in pairs:
            fen = (
                position.fen() if isinstance(position, chess.Board) else chess.Board(position).fen()
            )
            queries.append((fen, move.uci() if isinstance(move, chess.Move) else move))
        return [analysis.score_cp for analysis in self._run(queries)]

    def check_puzzles(self, puzzles: Sequence[Puzzle]) -> list[PuzzleVerdict]:
        """Judge every ply of each puzzle's PV (the positions of all puzzles are searched together).

        Returns:
            One :class:`PuzzleVerdict` per puzzle, in order, using ``config.margin_cp``.
        """
        fens_per_puzzle = [[board.fen() for board in puzzle.boards()] for puzzle in puzzles]
        analyses = self.analyse([fen for fens in fens_per_puzzle for fen in fens])
        verdicts = []
        start = 0
        for puzzle, fens in zip(puzzles, fens_per_puzzle):
            verdicts.append(
                PuzzleVerdict.from_analyses(
                    puzzle.id, puzzle.pv, analyses[start : start + len(fens)], self.config.margin_cp
                )
            )
            start += len(fens)
        return verdicts


def _close_quietly(engine: chess.engine.SimpleEngine) -> None:
    try:
        engine.close()
    except Exception as exc:  # a dead engine may fail to shut down cleanly; it is gone anyway
        log.debug("closing Stockfish: %r", exc)
