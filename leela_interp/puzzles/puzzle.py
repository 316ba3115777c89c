"""The :class:`Puzzle` value type: one Lichess puzzle, its validation from a CSV row, and the
boards and squares of its principal variation.

Lichess convention: ``fen`` is the position *before* the opponent's setup move; ``moves[0]`` is
that setup move and the solution (the principal variation, PV) is ``moves[1:]``, starting with
the solver's move. So PV plies 0, 2, 4, ... are the solver's moves and 1, 3, ... the opponent's
replies. Files of puzzles are read and written by :mod:`leela_interp.puzzles.lichess`.

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

from collections.abc import Mapping
from dataclasses import dataclass, field

import chess

from leela_interp.errors import ConfigError, LeelaInterpError

#: What history the networks see for a puzzle (the ``puzzles.history`` setting, recorded in
#: ``puzzles.h5``):
#:
#: - ``"none"``: the bare position after the setup move, as its FEN (lc0's ``fen_only`` fill
#:   repeats it in the history planes). What the paper's weak net saw; the default.
#: - ``"setup"``: the setup move (and, before later PV plies, the PV moves so far) as history;
#:   a corrupted board then gets its corruption in every history position too.
HISTORIES: tuple[str, ...] = ("none", "setup")

_NUMERIC_COLUMNS = {
    "Rating": "rating",
    "RatingDeviation": "rating_deviation",
    "Popularity": "popularity",
    "NbPlays": "nb_plays",
}


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
    """A puzzle row fails validation. ``reason`` is one of
    :data:`~leela_interp.puzzles.lichess.REJECT_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        #: Why the row was rejected: one of
        #: :data:`~leela_interp.puzzles.lichess.REJECT_REASONS`.
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
            row: The row, keyed by the names in
                :data:`~leela_interp.puzzles.lichess.COLUMNS`.
            min_moves: The fewest moves, setup move included, a valid row may have.

        Raises:
            InvalidPuzzleError: The row is invalid; its ``reason`` says why (one of
                :data:`~leela_interp.puzzles.lichess.REJECT_REASONS`, except ``duplicate_id``,
                ``malformed_row``, ``bad_encoding`` and ``truncated_row``, which need the whole
                file).
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

    def distinct_solver_targets(self, plies: int) -> bool:
        """Whether the solver's moves among the first ``plies`` PV plies (PV[0], PV[2], ...)
        have pairwise distinct target squares: for ``plies`` 7, the 1st, 3rd, 5th and 7th moves'.

        ``False`` when the PV has fewer than ``plies`` moves.
        """
        if len(self.pv_moves) < plies:
            return False
        targets = self.targets[:plies:2]
        return len(set(targets)) == len(targets)
