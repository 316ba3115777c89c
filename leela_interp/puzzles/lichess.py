"""Lichess puzzles: the :class:`Puzzle` value type and a streaming, validating CSV reader.

The Lichess puzzle database (https://database.lichess.org/#puzzles) is a CSV file with the
columns ``PuzzleId,FEN,Moves,Rating,RatingDeviation,Popularity,NbPlays,Themes,GameUrl,
OpeningTags``. Lichess convention: ``FEN`` is the position *before* the opponent's setup move;
``Moves[0]`` is that setup move and the solution (the principal variation, PV) is ``Moves[1:]``,
starting with the solver's move. So PV plies 0, 2, 4, ... are the solver's moves and 1, 3, ...
the opponent's replies.

:class:`PuzzleReader` streams a plain or zstandard-compressed (``.zst``) file in chunks, so the
~5M-row database is never held in memory. Every row is checked with python-chess; a row that
fails is counted under one reason in :class:`ReadCounts` (and logged), never raised and never
dropped silently. A truncated ``.zst`` stops the read with a count under
``ReadCounts.read_errors``; the rows before the damage are kept, except those in the damaged
zstd block (zstd decodes whole blocks of up to 128 KiB of text).

>>> puzzle = Puzzle(id="0000D", fen="5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27",
...                 moves=["d3d6", "f8d8", "d6d8", "f6d8"])
>>> puzzle.pv
['f8d8', 'd6d8', 'f6d8']
>>> [chess.square_name(square) for square in puzzle.targets]
['d8', 'd8', 'd8']
>>> puzzle.different_targets
False
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import chess
import numpy as np
import zstandard

from leela_interp.errors import ConfigError, LeelaInterpError

log = logging.getLogger(__name__)

#: The columns of the Lichess puzzle CSV, in the database's order.
COLUMNS: tuple[str, ...] = (
    "PuzzleId",
    "FEN",
    "Moves",
    "Rating",
    "RatingDeviation",
    "Popularity",
    "NbPlays",
    "Themes",
    "GameUrl",
    "OpeningTags",
)
#: Columns every row must fill; the others may be empty.
REQUIRED_COLUMNS: tuple[str, ...] = ("PuzzleId", "FEN", "Moves")

#: Reasons a row is rejected (keys of :attr:`ReadCounts.rejected`), in the order they are checked.
#:
#: - ``malformed_row``: more fields than the header, or a required column missing.
#: - ``bad_encoding``: the line is not valid UTF-8.
#: - ``missing_id``: ``PuzzleId`` is empty.
#: - ``duplicate_id``: an earlier row of the file (in any shard) has the same id.
#: - ``bad_fen``: ``FEN`` does not parse, or describes an invalid position.
#: - ``empty_moves``: ``Moves`` is empty.
#: - ``illegal_move``: a move is not UCI, is the null move ``0000``, or is illegal where it is
#:   played.
#: - ``short_line``: fewer moves than ``min_moves`` (setup move included).
#: - ``bad_number``: a numeric column (``Rating``, ...) holds something other than an integer.
#: - ``truncated_row``: the partial last line of a truncated compressed file.
REJECT_REASONS: tuple[str, ...] = (
    "malformed_row",
    "bad_encoding",
    "missing_id",
    "duplicate_id",
    "bad_fen",
    "empty_moves",
    "illegal_move",
    "short_line",
    "bad_number",
    "truncated_row",
)
#: Reasons a valid row is left out by an option (keys of :attr:`ReadCounts.filtered`).
FILTER_REASONS: tuple[str, ...] = ("rating", "themes")
#: Problems that end the read early (keys of :attr:`ReadCounts.read_errors`): ``truncated_input``
#: (a compressed stream that ends inside a frame) and ``corrupt_input`` (undecodable zstd data).
READ_ERRORS: tuple[str, ...] = ("truncated_input", "corrupt_input")

#: Themes left out unless told otherwise, as in the paper.
DEFAULT_EXCLUDE_THEMES: tuple[str, ...] = ("mateIn1",)

#: What history the networks see for a puzzle (the ``puzzles.history`` setting, recorded in
#: ``puzzles.h5``):
#:
#: - ``"none"``: the bare position after the setup move, as its FEN (lc0's ``fen_only`` fill
#:   repeats it in the history planes). What the paper's weak net saw; the default.
#: - ``"setup"``: the setup move (and, before later PV plies, the PV moves so far) as history;
#:   a corrupted board then gets its corruption in every history position too.
HISTORIES: tuple[str, ...] = ("none", "setup")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK_BYTES = 1 << 20
_NUMERIC_COLUMNS = {
    "Rating": "rating",
    "RatingDeviation": "rating_deviation",
    "Popularity": "popularity",
    "NbPlays": "nb_plays",
}
# How many example messages ReadCounts keeps per reason.
_MAX_EXAMPLES = 5


def without_history(board: chess.Board) -> chess.Board:
    """The position of ``board`` with an empty move stack, as its FEN describes it.

    Built from ``board.fen()``, so an en-passant square is kept only when an en-passant capture
    is legal (python-chess, Lichess and lc0 write FENs that way), and lc0's encoder, which trusts
    a FEN's en-passant square, sees what it would see for that FEN.

    >>> board = chess.Board()
    >>> _ = board.push_uci("e2e4")
    >>> bare = without_history(board)
    >>> bare.move_stack, bare.ep_square, board.ep_square == chess.E3
    ([], None, True)
    """
    return chess.Board(board.fen())


def _check_history(history: str) -> str:
    if history not in HISTORIES:
        raise ConfigError(f"unknown history {history!r}; choose one of {list(HISTORIES)}")
    return history


class InvalidPuzzleError(LeelaInterpError, ValueError):
    """A puzzle row fails validation. ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        #: Why the row was rejected: one of :data:`REJECT_REASONS`.
        self.reason = reason


@dataclass
class Puzzle:
    """One Lichess puzzle.

    Only ``id``, ``fen`` and ``moves`` are required; the other columns are empty in some sources
    and then hold ``None``, ``[]`` or ``""``.
    """

    id: str
    """``PuzzleId``: the Lichess id (``"00008"``) or another string unique in its file."""
    fen: str
    """``FEN``: the position *before* the opponent's setup move ``moves[0]``."""
    moves: list[str]
    """``Moves``: the setup move followed by the solution, in UCI (``"e2e4"``, ``"e7e8q"``).
    Castling is king-to-destination (``"e1g1"``), as python-chess writes it for standard chess."""
    rating: int | None = None
    """``Rating``: Glicko-2 puzzle rating, or ``None`` if the column is empty."""
    rating_deviation: int | None = None
    """``RatingDeviation`` of the rating, or ``None``."""
    popularity: int | None = None
    """``Popularity``: -100 to 100, or ``None``."""
    nb_plays: int | None = None
    """``NbPlays``: how often the puzzle was played, or ``None``."""
    themes: list[str] = field(default_factory=list)
    """``Themes``: Lichess theme tags (``"fork"``, ``"mateIn2"``, ...); empty if unknown."""
    game_url: str = ""
    """``GameUrl``: the game the puzzle comes from, or ``""``."""
    opening_tags: list[str] = field(default_factory=list)
    """``OpeningTags``: opening family and variation names; often empty."""

    @classmethod
    def from_row(cls, row: Mapping[str, str | None], *, min_moves: int = 2) -> Puzzle:
        """Build and validate a puzzle from one CSV row (column name -> text).

        Missing and empty optional columns are fine. Moves are normalised to python-chess UCI.

        Args:
            row: The row, keyed by the names in :data:`COLUMNS`.
            min_moves: The fewest moves, setup move included, a valid row may have.

        Raises:
            InvalidPuzzleError: The row is invalid; its ``reason`` says why (one of
                :data:`REJECT_REASONS`, except ``duplicate_id``, ``malformed_row``,
                ``bad_encoding`` and ``truncated_row``, which need the whole file).
        """
        puzzle_id = (row.get("PuzzleId") or "").strip()
        if not puzzle_id:
            raise InvalidPuzzleError("missing_id", "empty PuzzleId")
        fen = (row.get("FEN") or "").strip()
        try:
            board = chess.Board(fen)
        except ValueError as exc:
            raise InvalidPuzzleError(
                "bad_fen", f"puzzle {puzzle_id!r}: bad FEN {fen!r}: {exc}"
            ) from None
        if not board.is_valid():
            raise InvalidPuzzleError(
                "bad_fen", f"puzzle {puzzle_id!r}: invalid position {fen!r} ({board.status()!r})"
            )
        uci_moves = (row.get("Moves") or "").split()
        if not uci_moves:
            raise InvalidPuzzleError("empty_moves", f"puzzle {puzzle_id!r}: empty Moves")
        moves = []
        for ply, uci in enumerate(uci_moves):
            try:
                move = board.parse_uci(uci)
                if not move:  # parse_uci accepts the null move "0000" unchecked
                    raise ValueError("null move")
            except ValueError as exc:
                raise InvalidPuzzleError(
                    "illegal_move",
                    f"puzzle {puzzle_id!r}: move {ply} {uci!r} in {board.fen()!r}: {exc}",
                ) from None
            moves.append(move.uci())
            board.push(move)
        if len(moves) < min_moves:
            raise InvalidPuzzleError(
                "short_line",
                f"puzzle {puzzle_id!r}: {len(moves)} moves {moves!r}, need at least {min_moves}",
            )
        numbers: dict[str, int | None] = {}
        for column, name in _NUMERIC_COLUMNS.items():
            text = (row.get(column) or "").strip()
            try:
                numbers[name] = int(text) if text else None
            except ValueError:
                raise InvalidPuzzleError(
                    "bad_number", f"puzzle {puzzle_id!r}: {column} is not an integer: {text!r}"
                ) from None
        return cls(
            id=puzzle_id,
            fen=fen,
            moves=moves,
            themes=(row.get("Themes") or "").split(),
            game_url=(row.get("GameUrl") or "").strip(),
            opening_tags=(row.get("OpeningTags") or "").split(),
            **numbers,
        )

    def to_row(self) -> dict[str, str]:
        """This puzzle as a CSV row (column name -> text), the inverse of :meth:`from_row`."""
        numbers = {
            c: "" if getattr(self, n) is None else str(getattr(self, n))
            for c, n in _NUMERIC_COLUMNS.items()
        }
        return {
            "PuzzleId": self.id,
            "FEN": self.fen,
            "Moves": " ".join(self.moves),
            **numbers,
            "Themes": " ".join(self.themes),
            "GameUrl": self.game_url,
            "OpeningTags": " ".join(self.opening_tags),
        }

    def initial_board(self) -> chess.Board:
        """The position of ``fen``, before the setup move."""
        return chess.Board(self.fen)

    def board(self, *, history: str = "setup") -> chess.Board:
        """The puzzle position: after the setup move ``moves[0]``, the solver to move.

        Args:
            history: what history the board carries (:data:`HISTORIES`): ``"setup"`` (the
                default here) keeps the setup move on the move stack (``board.peek()``);
                ``"none"`` gives the bare position (:func:`without_history`).
        """
        board = self.initial_board()
        board.push_uci(self.moves[0])
        return without_history(board) if _check_history(history) == "none" else board

    @property
    def pv(self) -> list[str]:
        """The principal variation ``moves[1:]`` in UCI; even plies are the solver's moves."""
        return self.moves[1:]

    @property
    def pv_moves(self) -> list[chess.Move]:
        """:attr:`pv` as :class:`chess.Move` objects."""
        return [chess.Move.from_uci(uci) for uci in self.pv]

    def boards(self, *, history: str = "setup") -> list[chess.Board]:
        """The position before each PV ply: ``boards()[i]`` is where ``pv[i]`` is played.

        ``boards(history=h)[0]`` equals :meth:`board` with the same ``history``. With
        ``"setup"`` each board carries the setup move and the PV moves before it on its stack;
        with ``"none"`` each is the bare position (:func:`without_history`).
        """
        none = _check_history(history) == "none"
        board = self.board()
        boards = []
        for move in self.pv_moves:
            boards.append(without_history(board) if none else board.copy())
            board.push(move)
        return boards

    @property
    def sources(self) -> list[chess.Square]:
        """The from-square of each PV move (python-chess squares, a1 = 0, h8 = 63)."""
        return [move.from_square for move in self.pv_moves]

    @property
    def targets(self) -> list[chess.Square]:
        """The to-square of each PV move (a1 = 0; castling ``e1g1`` targets g1)."""
        return [move.to_square for move in self.pv_moves]

    @property
    def different_targets(self) -> bool:
        """Whether the targets of PV moves 1, 2 and 3 are three distinct squares.

        ``False`` when the PV has fewer than 3 moves.
        """
        targets = self.targets[:3]
        return len(targets) == 3 and len(set(targets)) == 3


@dataclass
class ReadCounts:
    """What happened to every row a :class:`PuzzleReader` read.

    Every data row read is counted exactly once, so
    ``rows == kept + other_shard + sum(rejected.values()) + sum(filtered.values())``.
    Blank lines are skipped and not counted. Stream problems that stop the read early are in
    ``read_errors``, with their messages in ``examples``.
    """

    rows: int = 0
    """Data rows read (header excluded), up to the row limit, across all shards."""
    kept: int = 0
    """Rows of this shard that passed validation and every filter."""
    other_shard: int = 0
    """Rows that belong to other shards (checked only for their id)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Invalid rows of this shard per reason in :data:`REJECT_REASONS`."""
    filtered: dict[str, int] = field(default_factory=dict)
    """Valid rows of this shard left out per option in :data:`FILTER_REASONS`."""
    read_errors: dict[str, int] = field(default_factory=dict)
    """Problems that ended the read early, per kind in :data:`READ_ERRORS`."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """The first few messages for each rejection reason and read error."""

    def to_dict(self) -> dict[str, object]:
        """The counts as plain nested dicts (for JSON or HDF5 attributes)."""
        return dataclasses.asdict(self)

    def _count(self, table: dict[str, int], reason: str, message: str | None = None) -> None:
        table[reason] = table.get(reason, 0) + 1
        if message is not None:
            examples = self.examples.setdefault(reason, [])
            if len(examples) < _MAX_EXAMPLES:
                examples.append(message)
            if table[reason] == 1:
                log.warning("puzzle rows: %s: %s", reason, message)
            else:
                log.debug("puzzle rows: %s: %s", reason, message)


class _SeenIds:
    """A compact set of ids: 64-bit BLAKE2b digests, most in one sorted numpy array.

    About 8 bytes per id instead of ~90 for a set of strings (5M ids: ~40 MB, not ~450 MB).
    Two different ids collide with probability ~n**2 / 2**65 (< 1e-6 for 5M ids).
    """

    _PENDING_MAX = 1 << 18

    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._pending: set[int] = set()

    @staticmethod
    def _digest(item: str) -> int:
        return int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "little")

    def add(self, item: str) -> bool:
        """Add ``item``; return whether it was already present."""
        key = self._digest(item)
        if key in self._pending:
            return True
        index = int(np.searchsorted(self._sorted, key))
        if index < len(self._sorted) and int(self._sorted[index]) == key:
            return True
        self._pending.add(key)
        if len(self._pending) >= self._PENDING_MAX:
            new = np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending))
            new.sort()
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            self._sorted = np.sort(np.concatenate([self._sorted, new]), kind="stable")
            self._pending.clear()
        return False


class _TruncatedInput(Exception):
    def __init__(self, kind: str, message: str, partial: bytes) -> None:
        super().__init__(message)
        self.kind = kind
        self.partial = partial


def _zstd_chunks(handle) -> Iterator[bytes]:
    """Decompressed chunks of a (possibly multi-frame) zstd stream.

    Raises:
        _TruncatedInput: With ``partial=b""``, when the data end inside a frame
            (``truncated_input``) or cannot be decoded (``corrupt_input``).
    """
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    in_frame = False
    offset = 0
    while True:
        data = handle.read(_CHUNK_BYTES)
        if not data:
            break
        while data:
            try:
                out = frame.decompress(data)
            except zstandard.ZstdError as exc:
                raise _TruncatedInput(
                    "corrupt_input", f"undecodable zstd data near byte {offset}: {exc}", b""
                ) from None
            in_frame = True
            if out:
                yield out
            if frame.eof:
                data = frame.unused_data
                frame = decompressor.decompressobj()
                in_frame = False
            else:
                data = b""
        offset = handle.tell()
    if in_frame:
        raise _TruncatedInput(
            "truncated_input", f"zstd stream ends inside a frame at byte {offset}", b""
        )


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of a plain or zstd-compressed file, each ending in ``\\n`` but maybe the last.

    Raises:
        _TruncatedInput: The compressed stream is damaged; ``partial`` is the incomplete line
            that was being read when the data ran out (maybe ``b""``).
    """
    with open(path, "rb") as handle:
        if handle.read(4) != _ZSTD_MAGIC:
            handle.seek(0)
            yield from handle
            return
        handle.seek(0)
        rest = b""
        try:
            for chunk in _zstd_chunks(handle):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield line + b"\n"
        except _TruncatedInput as exc:
            exc.partial = rest
            raise
        if rest:
            yield rest


class PuzzleReader:
    """Stream, validate and filter the puzzles of a Lichess puzzle CSV.

    The file may be plain or zstd-compressed (recognised by its magic bytes, whatever its
    name). It is read in 1 MiB chunks; memory use does not grow with the file except for the
    ids seen so far (8 bytes each), which the duplicate check needs.

    For each data row ``i`` (0-based, in file order, header excluded):

    1. Rows from ``limit`` on are not read.
    2. The id is checked against every earlier row's, in every shard, so the first row with an
       id owns it and the shards of a file together give exactly the unsharded result.
    3. Rows with ``i % num_shards != shard`` belong to other shards and are only counted.
    4. The row is validated (:meth:`Puzzle.from_row`), then the rating range and themes
       options are applied.

    Iterating yields the kept puzzles in file order and fills :attr:`counts`; iterating again
    re-reads the file and starts new counts. Blank lines are skipped. A plain file's last line
    is read even without a final newline, so a cut plain file cannot be told from a whole one;
    a cut ``.zst`` can (see the module docstring).

    >>> reader = PuzzleReader("lichess_db_puzzle.csv.zst", limit=1000)  # doctest: +SKIP
    >>> puzzles = list(reader)  # doctest: +SKIP
    >>> reader.counts.rejected  # doctest: +SKIP
    {}

    Args:
        path: The CSV file, plain or ``.zst``. A header line is expected; a file whose first
            line lacks ``FEN`` and ``Moves`` is read as headerless with :data:`COLUMNS`.
        limit: Read at most this many data rows (all shards together); ``None`` reads all.
        min_rating: Keep only puzzles rated at least this (inclusive); puzzles without a
            rating are then filtered out.
        max_rating: Keep only puzzles rated at most this (inclusive); as ``min_rating``.
        include_themes: If given, keep only puzzles with at least one of these themes.
        exclude_themes: Drop puzzles with any of these themes (default: ``mateIn1``). Puzzles
            with an empty ``Themes`` column are never dropped by this.
        shard: Which shard this reader keeps, ``0 <= shard < num_shards``.
        num_shards: How many readers split the file.
        min_moves: The fewest moves, setup move included, a valid row has (default 2: a setup
            move and one solver move).

    Raises:
        ConfigError: On construction, for an invalid option (the message shows it).
        FileNotFoundError: When iterating, if ``path`` does not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        limit: int | None = None,
        min_rating: int | None = None,
        max_rating: int | None = None,
        include_themes: Collection[str] | None = None,
        exclude_themes: Collection[str] = DEFAULT_EXCLUDE_THEMES,
        shard: int = 0,
        num_shards: int = 1,
        min_moves: int = 2,
    ) -> None:
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be None or >= 0, got {limit!r}")
        if num_shards < 1:
            raise ConfigError(f"num_shards must be >= 1, got {num_shards!r}")
        if not 0 <= shard < num_shards:
            raise ConfigError(f"shard must be in [0, {num_shards}), got {shard!r}")
        if min_rating is not None and max_rating is not None and min_rating > max_rating:
            raise ConfigError(f"min_rating {min_rating!r} > max_rating {max_rating!r}")
        if min_moves < 1:
            raise ConfigError(f"min_moves must be >= 1, got {min_moves!r}")
        for name, themes in (
            ("include_themes", include_themes),
            ("exclude_themes", exclude_themes),
        ):
            if isinstance(themes, str):
                raise ConfigError(
                    f"{name} must be a collection of theme names, not the string {themes!r}"
                )
        self.path = Path(path)
        self.limit = limit
        self.min_rating = min_rating
        self.max_rating = max_rating
        self.include_themes = None if include_themes is None else frozenset(include_themes)
        self.exclude_themes = frozenset(exclude_themes)
        self.shard = shard
        self.num_shards = num_shards
        self.min_moves = min_moves
        #: Counts of the latest (or current) iteration.
        self.counts = ReadCounts()

    def __repr__(self) -> str:
        path = str(self.path)
        return f"PuzzleReader({path!r}, shard={self.shard!r}, num_shards={self.num_shards!r})"

    def _filter_reason(self, puzzle: Puzzle) -> str | None:
        if self.min_rating is not None or self.max_rating is not None:
            rating = puzzle.rating
            if (
                rating is None
                or (self.min_rating is not None and rating < self.min_rating)
                or (self.max_rating is not None and rating > self.max_rating)
            ):
                return "rating"
        themes = set(puzzle.themes)
        if self.include_themes is not None and not themes & self.include_themes:
            return "themes"
        if themes & self.exclude_themes:
            return "themes"
        return None

    def __iter__(self) -> Iterator[Puzzle]:
        counts = self.counts = ReadCounts()
        seen = _SeenIds()
        line_iter = _lines(self.path)
        partial: bytes | None = None

        def text_lines() -> Iterator[str]:
            nonlocal partial
            try:
                for line in line_iter:
                    yield line.decode("utf-8", errors="replace")
            except _TruncatedInput as exc:
                counts._count(counts.read_errors, exc.kind, f"{self.path}: {exc}")
                partial = exc.partial

        header: list[str] | None = None
        index = 0
        for fields in csv.reader(text_lines()):
            if not fields:
                continue
            if header is None:
                if "FEN" in fields and "Moves" in fields:
                    header = [name.strip() for name in fields]
                    continue
                header = list(COLUMNS)
            if self.limit is not None and index >= self.limit:
                line_iter.close()
                break
            row_index = index
            index += 1
            counts.rows += 1
            id_column = header.index("PuzzleId") if "PuzzleId" in header else len(fields)
            puzzle_id = fields[id_column].strip() if id_column < len(fields) else ""
            duplicate = bool(puzzle_id) and seen.add(puzzle_id)
            if row_index % self.num_shards != self.shard:
                counts.other_shard += 1
                continue
            where = f"row {row_index} (id {puzzle_id!r})"
            if len(fields) > len(header) or len(fields) < len(REQUIRED_COLUMNS):
                counts._count(
                    counts.rejected,
                    "malformed_row",
                    f"{where}: {len(fields)} fields, header has {len(header)}",
                )
                continue
            row = dict(zip(header, fields))
            if any(column not in row for column in REQUIRED_COLUMNS):
                counts._count(
                    counts.rejected,
                    "malformed_row",
                    f"{where}: missing {REQUIRED_COLUMNS!r} fields",
                )
                continue
            if any("\ufffd" in value for value in fields):
                counts._count(counts.rejected, "bad_encoding", f"{where}: not UTF-8")
                continue
            if duplicate:
                counts._count(
                    counts.rejected, "duplicate_id", f"{where}: duplicate id {puzzle_id!r}"
                )
                continue
            try:
                puzzle = Puzzle.from_row(row, min_moves=self.min_moves)
            except InvalidPuzzleError as exc:
                counts._count(counts.rejected, exc.reason, f"{where}: {exc}")
                continue
            reason = self._filter_reason(puzzle)
            if reason is not None:
                counts._count(counts.filtered, reason)
                continue
            counts.kept += 1
            yield puzzle
        if partial and (self.limit is None or index < self.limit):
            # The incomplete last line of a damaged stream: never parsed, it may look valid.
            counts.rows += 1
            if index % self.num_shards == self.shard:
                counts._count(
                    counts.rejected,
                    "truncated_row",
                    f"row {index}: incomplete line {partial[:80]!r}",
                )
            else:
                counts.other_shard += 1
        log.info(
            "%s: %d rows, %d kept, %d other shards, rejected %s, filtered %s, read errors %s",
            self.path,
            counts.rows,
            counts.kept,
            counts.other_shard,
            counts.rejected,
            counts.filtered,
            counts.read_errors,
        )


def read_puzzles(path: str | os.PathLike[str], **options) -> tuple[list[Puzzle], ReadCounts]:
    """Read every kept puzzle of ``path`` into a list.

    Args:
        path: The CSV file, plain or ``.zst``.
        **options: Keyword options of :class:`PuzzleReader`.

    Returns:
        The kept puzzles in file order and the :class:`ReadCounts`.
    """
    reader = PuzzleReader(path, **options)
    puzzles = list(reader)
    return puzzles, reader.counts


def write_puzzles(path: str | os.PathLike[str], puzzles: Iterable[Puzzle]) -> None:
    """Write puzzles as a Lichess-format CSV with a header (zstd-compressed if ``path`` ends in
    ``.zst``)."""
    path = Path(path)
    if path.suffix == ".zst":
        with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as compressed:
            with io.TextIOWrapper(compressed, encoding="utf-8", newline="") as text:
                _write_rows(text, puzzles)
    else:
        with open(path, "w", encoding="utf-8", newline="") as text:
            _write_rows(text, puzzles)


def _write_rows(text, puzzles: Iterable[Puzzle]) -> None:
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for puzzle in puzzles:
        writer.writerow(puzzle.to_row())
