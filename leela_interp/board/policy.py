"""lc0's 1858-move policy index, and the maps from policy-head outputs to it.

A policy index names a move in the side to move's frame (black's moves are mirrored by rank,
``square ^ 56``, as the input planes are), after the position's canonical transform:

* 0..1791: non-promotion moves ``from -> to``, ordered by from-square (a1, b1, ..., h8) and,
  for each, by to-square, over every queen-like and knight move that stays on the board.
* 1792..1857: promotions to queen, rook, bishop from rank 7 to rank 8 (``a7a8q``, ``a7a8r``,
  ``a7a8b``, ``a7b8q``, ...). A knight promotion uses the plain move's index.

Castling is encoded as king-takes-rook (``e1h1`` for O-O, ``e1a1`` for O-O-O), as lc0 does.

>>> POLICY_MOVES[322], POLICY_MOVES[1792], len(POLICY_MOVES)
('e2e4', 'a7a8q', 1858)
>>> board = chess.Board()
>>> board.push(chess.Move.from_uci("e2e4"))
>>> policy_index(board, chess.Move.from_uci("e7e5"))  # black's e7e5 is e2e4 mirrored
322
"""

from __future__ import annotations

from collections.abc import Sequence

import chess
import numpy as np
import torch

from leela_interp.board.encoding import inverse_transform_square, transform_square
from leela_interp.errors import LeelaInterpError

NUM_MOVES = 1858
"""Length of the policy vector."""

_QUEEN_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
"""(file, rank) steps N, NE, E, SE, S, SW, W, NW: the conv policy's order."""
_KNIGHT_STEPS = ((1, 2), (2, 1), (2, -1), (1, -2), (-1, -2), (-2, -1), (-2, 1), (-1, 2))
"""(file, rank) knight steps N, NE, E, SE, S, SW, W, NW: the conv policy's order."""
_PROMOTION_PIECES = (chess.QUEEN, chess.ROOK, chess.BISHOP)
"""Order of promotions within a (from, to) pair in the policy index."""


class MoveNotInPolicyError(LeelaInterpError, ValueError):
    """A move has no policy index (not a queen-like or knight move, or a bad promotion)."""


def _on_board(file: int, rank: int) -> bool:
    return 0 <= file < 8 and 0 <= rank < 8


def _build_policy_moves() -> tuple[str, ...]:
    moves = []
    for from_square in chess.SQUARES:
        file, rank = chess.square_file(from_square), chess.square_rank(from_square)
        targets = set()
        for df, dr in _QUEEN_DIRECTIONS:
            for dist in range(1, 8):
                if _on_board(file + df * dist, rank + dr * dist):
                    targets.add(chess.square(file + df * dist, rank + dr * dist))
        for df, dr in _KNIGHT_STEPS:
            if _on_board(file + df, rank + dr):
                targets.add(chess.square(file + df, rank + dr))
        moves += [chess.SQUARE_NAMES[from_square] + chess.SQUARE_NAMES[to] for to in sorted(targets)]
    for file in range(8):
        for to_file in (file - 1, file, file + 1):
            if 0 <= to_file < 8:
                for piece in _PROMOTION_PIECES:
                    moves.append(chess.FILE_NAMES[file] + "7" + chess.FILE_NAMES[to_file] + "8"
                                 + chess.piece_symbol(piece))
    return tuple(moves)


POLICY_MOVES: tuple[str, ...] = _build_policy_moves()
"""UCI string of every policy index, in lc0's order (``kMoveStrs``), in the side to move's frame."""

_INDEX: dict[str, int] = {uci: i for i, uci in enumerate(POLICY_MOVES)}

_FROM_TO_INDEX = np.full(64 * 64, -1, dtype=np.int64)
"""from * 64 + to -> index of the plain move, -1 where there is none."""
for _i, _uci in enumerate(POLICY_MOVES[:1792]):
    _FROM_TO_INDEX[chess.parse_square(_uci[:2]) * 64 + chess.parse_square(_uci[2:4])] = _i


def _promotion_index(from_file: int, to_file: int, piece: chess.PieceType) -> int:
    return _INDEX[chess.FILE_NAMES[from_file] + "7" + chess.FILE_NAMES[to_file] + "8" + chess.piece_symbol(piece)]


def _build_conv_policy_map() -> np.ndarray:
    result = np.full(80 * 64, -1, dtype=np.int64)
    for square in chess.SQUARES:
        file, rank = chess.square_file(square), chess.square_rank(square)
        for d, (df, dr) in enumerate(_QUEEN_DIRECTIONS):
            for dist in range(1, 8):
                if _on_board(file + df * dist, rank + dr * dist):
                    to = chess.square(file + df * dist, rank + dr * dist)
                    result[(d * 7 + dist - 1) * 64 + square] = _FROM_TO_INDEX[square * 64 + to]
        for k, (df, dr) in enumerate(_KNIGHT_STEPS):
            if _on_board(file + df, rank + dr):
                to = chess.square(file + df, rank + dr)
                result[(56 + k) * 64 + square] = _FROM_TO_INDEX[square * 64 + to]
        if rank == 6:
            for d, df in enumerate((-1, 0, 1)):  # NW, N, NE
                for p, piece in enumerate((chess.ROOK, chess.BISHOP, chess.QUEEN)):
                    if 0 <= file + df < 8:
                        result[(64 + 3 * d + p) * 64 + square] = _promotion_index(file, file + df, piece)
    return result


def _build_attention_policy_map() -> np.ndarray:
    result = np.full(64 * 64 + 8 * 24, -1, dtype=np.int64)
    result[: 64 * 64] = _FROM_TO_INDEX
    for from_file in range(8):
        for to_file in (from_file - 1, from_file, from_file + 1):
            if 0 <= to_file < 8:
                for p, piece in enumerate(_PROMOTION_PIECES):
                    result[4096 + 24 * from_file + 3 * to_file + p] = _promotion_index(from_file, to_file, piece)
    return result


CONV_POLICY_MAP: np.ndarray = _build_conv_policy_map()
"""Conv policy head output (``plane * 64 + from_square``, 80 planes) -> policy index, or -1.

Planes 0..55 are queen-like moves, ``direction * 7 + distance - 1`` with directions N, NE, E,
SE, S, SW, W, NW; 56..63 knight moves with (file, rank) steps (1, 2), (2, 1), (2, -1), (1, -2),
(-1, -2), (-2, -1), (-2, 1), (-1, 2); 64..72 promotions from rank 7, ``64 + 3 * d + p`` with
``d`` in NW, N, NE and ``p`` in rook, bishop, queen. Planes 73..79 are unused (-1). Knight
promotions are the plain moves of planes 0..55. Every policy index occurs exactly once.
"""

ATTENTION_POLICY_MAP: np.ndarray = _build_attention_policy_map()
"""Attention policy head output -> policy index, or -1 (length 64 * 64 + 192).

Entry ``from * 64 + to`` is the plain move from -> to (queen-like or knight; the knight
promotion for rank 7 -> 8); entry ``4096 + 24 * from_file + 3 * to_file + p`` is the promotion
from rank 7 to rank 8 with ``p`` = 0 queen, 1 rook, 2 bishop. Every index occurs exactly once.
"""

CONV_POLICY_MAP.setflags(write=False)
ATTENTION_POLICY_MAP.setflags(write=False)


def _king_takes_rook(board: chess.Board, move: chess.Move) -> chess.Move:
    """``move`` with castling written as king-takes-rook (standard e1g1 -> e1h1)."""
    if not board.is_castling(move):
        return move
    rook = board.piece_at(move.to_square)
    if rook is not None and rook.color == board.turn and rook.piece_type == chess.ROOK:
        return move  # already king-takes-rook (chess960 notation)
    rank = chess.square_rank(move.from_square)
    rook_file = 7 if chess.square_file(move.to_square) > chess.square_file(move.from_square) else 0
    return chess.Move(move.from_square, chess.square(rook_file, rank))


def policy_index(board: chess.Board, move: chess.Move, *, transform: int = 0) -> int:
    """The policy index of ``move`` played on ``board``.

    Castling becomes king-takes-rook, black's moves are mirrored by rank, then ``transform``
    (the position's canonical transform, :func:`leela_interp.board.encoding.transform_for`) is
    applied to both squares. Legality is not checked.

    Args:
        board: the position the move is played in (only its side to move and, for castling,
            its pieces are used).
        move: the move.
        transform: canonical transform bits; 0 (the default) for none, as lc0's Python
            bindings' ``GameState.policy_indices()`` use.

    Raises:
        MoveNotInPolicyError: the move has no index (null move, a move that is neither
            queen-like nor a knight move, a promotion not from rank 7 to rank 8 or to a king or
            pawn).

    >>> policy_index(chess.Board(), chess.Move.from_uci("g1f3"))
    159
    >>> policy_index(chess.Board("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1"), chess.Move.from_uci("e1g1"))
    103
    """
    if not move:
        raise MoveNotInPolicyError(f"the null move {move!r} has no policy index")
    plain = _king_takes_rook(board, move)
    from_square, to_square = plain.from_square, plain.to_square
    if board.turn == chess.BLACK:
        from_square, to_square = from_square ^ 56, to_square ^ 56
    from_square = transform_square(from_square, transform)
    to_square = transform_square(to_square, transform)
    if move.promotion is not None:
        if move.promotion not in (chess.QUEEN, chess.ROOK, chess.BISHOP, chess.KNIGHT):
            raise MoveNotInPolicyError(
                f"promotion to {chess.piece_name(move.promotion)} in {move.uci()!r} has no policy index")
        from_file, to_file = chess.square_file(from_square), chess.square_file(to_square)
        if not (chess.square_rank(from_square) == 6 and chess.square_rank(to_square) == 7
                and abs(from_file - to_file) <= 1):
            side = "black" if board.turn == chess.BLACK else "white"
            raise MoveNotInPolicyError(f"promotion {move.uci()!r} ({side} to move, transform {transform}) "
                                       "is not from rank 7 to rank 8 in the policy's frame")
        if move.promotion != chess.KNIGHT:  # the knight promotion is the plain move
            return _promotion_index(from_file, to_file, move.promotion)
    index = int(_FROM_TO_INDEX[from_square * 64 + to_square])
    if index < 0:
        raise MoveNotInPolicyError(f"move {move.uci()!r} is neither a queen-like nor a knight move")
    return index


def policy_move(board: chess.Board, index: int, *, transform: int = 0) -> chess.Move:
    """The move on ``board`` that a policy index names; inverse of :func:`policy_index`.

    Castling (a king move onto its own rook) is returned as python-chess writes it for
    ``board`` (``e1g1`` unless ``board.chess960``); a pawn move to the last rank without a
    promotion piece is a knight promotion. Legality is not checked.

    Raises:
        IndexError: ``index`` is not in ``0..1857``.

    >>> policy_move(chess.Board(), 322)
    Move.from_uci('e2e4')
    """
    if not 0 <= index < NUM_MOVES:
        raise IndexError(f"policy index {index!r} is out of range 0..{NUM_MOVES - 1}")
    uci = POLICY_MOVES[index]
    from_square = inverse_transform_square(chess.parse_square(uci[:2]), transform)
    to_square = inverse_transform_square(chess.parse_square(uci[2:4]), transform)
    if board.turn == chess.BLACK:
        from_square, to_square = from_square ^ 56, to_square ^ 56
    promotion = chess.PIECE_SYMBOLS.index(uci[4]) if len(uci) == 5 else None
    if (promotion is None and board.piece_type_at(from_square) == chess.PAWN
            and chess.square_rank(to_square) in (0, 7)):
        promotion = chess.KNIGHT
    move = chess.Move(from_square, to_square, promotion)
    if not board.chess960 and board.is_castling(move):
        rank = chess.square_rank(from_square)
        kingside = chess.square_file(to_square) > chess.square_file(from_square)
        move = chess.Move(from_square, chess.square(6 if kingside else 2, rank))
    return move


def legal_moves_and_indices(board: chess.Board, transform: int = 0) -> tuple[list[chess.Move], np.ndarray]:
    """The legal moves of ``board`` and their policy indices (int64), in the same order.

    >>> moves, indices = legal_moves_and_indices(chess.Board())
    >>> len(moves), int(indices[moves.index(chess.Move.from_uci("e2e4"))])
    (20, 322)
    """
    moves = list(board.legal_moves)
    indices = np.fromiter((policy_index(board, m, transform=transform) for m in moves), dtype=np.int64,
                          count=len(moves))
    return moves, indices


def legal_mask(boards: Sequence[chess.Board], transforms: Sequence[int] | None = None) -> torch.Tensor:
    """Boolean ``[batch, 1858]`` tensor: True at the policy index of every legal move.

    Args:
        boards: the positions.
        transforms: each board's canonical transform (as
            :func:`leela_interp.board.encoding.encode_bitboards` returns them), or None for no
            transform.

    Raises:
        ValueError: ``transforms`` and ``boards`` differ in length.
    """
    if transforms is not None and len(transforms) != len(boards):
        raise ValueError(f"got {len(transforms)} transforms for {len(boards)} boards")
    mask = torch.zeros((len(boards), NUM_MOVES), dtype=torch.bool)
    for row, board in enumerate(boards):
        _, indices = legal_moves_and_indices(board, 0 if transforms is None else int(transforms[row]))
        mask[row, torch.from_numpy(indices)] = True
    return mask
