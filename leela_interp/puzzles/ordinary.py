"""The ordinary-position control (``puzzles.positions=ordinary``): real game positions without
the blunder that makes a puzzle, each with the strong net's own greedy line.

A Lichess puzzle row gives the game position *before* the opponent's setup move (``fen``) and
that move, the blunder that allows the tactic. :func:`ordinary_puzzles` keeps the game and the
moment but not the blunder: the setup move becomes the strong net's most probable move at ``fen``
other than the game's move (so a control position is never the puzzle position), and the line to
analyse, in place of the puzzle's solution, is the strong net's greedy line from there (its
argmax legal move, ply after ply, for both sides). The result is a :class:`Puzzle` in the same
layout, so the ``puzzles`` stage's pv-length and distinct-target filters, its corruption search
and every later stage run on it unchanged; the network filters (``hard``, ``correct``,
``forcing``) and Stockfish's ``unique`` are puzzle criteria and are not applied
(:data:`~leela_interp.puzzles.config.CONTROL_FILTERS`). Why this design: ``docs/puzzles.md``
("Ordinary positions").
"""

from __future__ import annotations

from collections.abc import Sequence

import chess

from leela_interp.puzzles.puzzle import Puzzle, without_history

def ordinary_puzzles(rows: Sequence[Puzzle], net, *, plies: int | None = None,
                     history: str = "none", batch_size: int = 256) -> list[Puzzle]:
    """The control of each puzzle row: its game position with the net's own move in place of
    the setup move, and the net's greedy line from there.

    ``moves[0]`` of the result is ``net``'s most probable legal move at the row's ``fen`` that is
    not the row's setup move (the one legal move when it is the only one); ``moves[1:]`` is
    the greedy line: at each ply ``net``'s most probable legal move, as
    :func:`~leela_interp.puzzles.evaluation.top_moves` ranks them, on the board the ``puzzles``
    stage shows the net at that ply (``history``). The line stops early at a position without
    legal moves (the pv-length filter then decides). The id and ``game_url`` are the row's (the
    same id links a control to its puzzle); rating and themes describe the puzzle and are left
    empty.

    Args:
        rows: Lichess puzzles (as the reader gives them).
        net: The strong network (anything :func:`~leela_interp.puzzles.evaluation.load_net`
            returns).
        plies: Length of each greedy line; None = the row's own PV length (the matched control:
            the same number of look-ahead squares as the puzzle it comes from).
        history: ``puzzles.history`` (:data:`~leela_interp.puzzles.puzzle.HISTORIES`).
        batch_size: Positions per forward pass (one pass per ply over all rows).

    Raises:
        ValueError: ``plies`` is not None or an integer >= 1.
    """
    from leela_interp.puzzles.evaluation import top_moves

    if plies is not None and (not isinstance(plies, int) or isinstance(plies, bool) or plies < 1):
        raise ValueError(f"plies must be an integer >= 1 or None, got {plies!r}")
    wanted = [len(row.pv) if plies is None else plies for row in rows]
    boards = [row.initial_board() for row in rows]
    first = top_moves(net, [_shown(b, history) for b in boards], 2, batch_size)
    for board, row, best in zip(boards, rows, first):
        setup = next((m for m in best if m.uci() != row.moves[0]), best[0])
        board.push(setup)
    for ply in range(max(wanted, default=0)):
        active = [i for i, board in enumerate(boards)
                  if ply < wanted[i] and any(board.legal_moves)]
        if not active:
            break
        chosen = top_moves(net, [_shown(boards[i], history) for i in active], 1, batch_size)
        for i, (move,) in zip(active, chosen):
            boards[i].push(move)
    return [Puzzle(id=row.id, fen=row.fen, moves=[m.uci() for m in board.move_stack],
                   game_url=row.game_url)
            for row, board in zip(rows, boards)]


def _shown(board: chess.Board, history: str) -> chess.Board:
    """``board`` as the ``puzzles`` stage shows it to a net (as
    :meth:`~leela_interp.puzzles.puzzle.Puzzle.boards` builds it)."""
    return without_history(board) if history == "none" else board.copy()
