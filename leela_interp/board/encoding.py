"""Boards to lc0's 112 input planes, bit for bit as lc0's own encoder writes them.

lc0 (``src/neural/encoder.cc``, ``EncodePositionForNN``) feeds a network 112 planes of 8x8. Each
plane is a 64-bit mask times a value; bit ``i`` of a mask is square ``i`` (a1 = 0, h1 = 7,
a8 = 56) *in the side to move's frame*: for black the ranks are flipped (``square ^ 56``) and
the files are kept. :func:`encode` returns them as a float32 tensor ``[batch, 112, 8, 8]``
indexed ``[plane, rank, file]`` in that frame.

Planes (``ours`` is always the side to move of the encoded position):

* History slot ``i`` (0 = current position, 1 = the position before it, ...; ``base = 13 * i``):
  ``base + 0..5`` our pawns, knights, bishops, rooks, queens, king; ``base + 6..11`` theirs;
  ``base + 12`` all ones if that position occurred before (lc0's repetition count >= 1).
* 104..107: castling. Format 1: whole planes for we O-O-O, we O-O, they O-O-O, they O-O.
  Formats >= 2: 104 marks the rooks (ours on rank 1, theirs on rank 8) that still have a-side
  castling rights, 105 those with h-side rights; 106 and 107 are zero.
* 108: formats 1 and 2: all ones if black is to move. Formats >= 3: the en-passant mask, one
  bit on rank 8 at the file of the pawn that just made a double push.
* 109: the rule-50 counter in plies (formats 1-3), or plies / 100 (formats >= 4).
* 110: zero, except all ones when black is to move in the armageddon formats 132 and 133.
* 111: all ones.

Canonical formats (>= 3) may also flip, mirror or transpose planes 0..108 (see
:func:`transform_for`), and they stop walking back through the history at the first change
of castling rights, older position with en passant, or position with rule50 = 0.

The game history of a :class:`chess.Board` is its move stack: ``board.root()`` is the position
lc0 would be given as a FEN, ``board.move_stack`` the moves given after it. Castling rights are
python-chess's :meth:`chess.Board.clean_castling_rights`. The en-passant flag of the root is
set whenever its ``ep_square`` is (lc0 trusts the FEN); after a move it is set only when a pawn
of the side to move attacks the skipped square, as in lc0.

>>> import chess
>>> planes = encode([chess.Board()])
>>> planes.shape, planes.dtype
(torch.Size([1, 112, 8, 8]), torch.float32)
>>> planes[0, 0, 1].tolist()  # our pawns on rank 2
[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
>>> float(planes[0, 13:104].abs().sum())  # fen_only: no history before the start position
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import chess
import numpy as np
import torch

from leela_interp.errors import ConfigError

INPUT_FORMATS: tuple[int, ...] = (1, 2, 3, 4, 5, 132, 133)
"""Input formats supported (``NetworkFormat.InputFormat`` numbers of lc0's ``net.proto``).

1 classical, 2 castling planes, 3 canonical, 4 canonical with rule50 in hectoplies,
132 = 4 plus armageddon side-to-move plane, 5 canonical v2 (history only of repeats),
133 = 5 plus armageddon plane.
"""

HISTORY_FILLS: tuple[str, ...] = ("fen_only", "always", "no")
"""How slots before the start of the game are filled (lc0's ``--history-fill``).

``"fen_only"`` (lc0's default) repeats the root position unless it is the standard start
position; ``"always"`` always repeats it; ``"no"`` leaves them zero, except one slot
reconstructed from the root's en-passant square.
"""

NUM_PLANES = 112
"""Number of input planes."""
PLANES_PER_BOARD = 13
"""Planes per history slot: 12 piece planes and a repetition plane."""
HISTORY_LENGTH = 8
"""Number of history slots."""
AUX_PLANE_BASE = PLANES_PER_BOARD * HISTORY_LENGTH
"""Index of the first auxiliary plane (104)."""

NO_TRANSFORM = 0
FLIP_TRANSFORM = 1
"""Mirror the files (a <-> h); lc0's ``ReverseBitsInBytes``."""
MIRROR_TRANSFORM = 2
"""Mirror the ranks (1 <-> 8); lc0's ``ReverseBytesInBytes``."""
TRANSPOSE_TRANSFORM = 4
"""Reflect in the a8-h1 diagonal, (rank, file) -> (7 - file, 7 - rank); ``TransposeBitsInBytes``."""

_ALL = (1 << 64) - 1
_STARTPOS_KEY: tuple | None = None  # filled lazily by _is_startpos


# --------------------------------------------------------------------------- transforms


def _reverse_bits_in_bytes(v: int) -> int:
    v = ((v >> 1) & 0x5555555555555555) | ((v & 0x5555555555555555) << 1)
    v = ((v >> 2) & 0x3333333333333333) | ((v & 0x3333333333333333) << 2)
    v = ((v >> 4) & 0x0F0F0F0F0F0F0F0F) | ((v & 0x0F0F0F0F0F0F0F0F) << 4)
    return v


def _reverse_bytes(v: int) -> int:
    return int.from_bytes(v.to_bytes(8, "little"), "big")


def _transpose(v: int) -> int:
    v = ((v & 0xAA00AA00AA00AA00) >> 9) | ((v & 0x0055005500550055) << 9) | (v & 0x55AA55AA55AA55AA)
    v = ((v & 0xCCCC0000CCCC0000) >> 18) | ((v & 0x0000333300003333) << 18) | (v & 0x3333CCCC3333CCCC)
    v = ((v & 0xF0F0F0F000000000) >> 36) | ((v & 0x000000000F0F0F0F) << 36) | (v & 0x0F0F0F0FF0F0F0F0)
    return v


def transform_bitboard(mask: int, transform: int) -> int:
    """Applies a canonical transform to a 64-bit mask: flip, then mirror, then transpose.

    Args:
        mask: a bitboard, bit ``i`` = square ``i``.
        transform: an OR of :data:`FLIP_TRANSFORM`, :data:`MIRROR_TRANSFORM` and
            :data:`TRANSPOSE_TRANSFORM`.

    >>> hex(transform_bitboard(0x1, FLIP_TRANSFORM)), hex(transform_bitboard(0x1, TRANSPOSE_TRANSFORM))
    ('0x80', '0x8000000000000000')
    """
    if transform & FLIP_TRANSFORM:
        mask = _reverse_bits_in_bytes(mask)
    if transform & MIRROR_TRANSFORM:
        mask = _reverse_bytes(mask)
    if transform & TRANSPOSE_TRANSFORM:
        mask = _transpose(mask)
    return mask


def transform_square(square: int, transform: int) -> int:
    """Maps a square (0..63) through a canonical transform, as :func:`transform_bitboard` does.

    Flip maps the file ``f`` to ``7 - f``, mirror the rank ``r`` to ``7 - r``, and transpose
    ``(r, f)`` to ``(7 - f, 7 - r)``; they are applied in that order.

    >>> chess.square_name(transform_square(chess.B1, FLIP_TRANSFORM | MIRROR_TRANSFORM))
    'g8'
    """
    rank, file = square >> 3, square & 7
    if transform & FLIP_TRANSFORM:
        file = 7 - file
    if transform & MIRROR_TRANSFORM:
        rank = 7 - rank
    if transform & TRANSPOSE_TRANSFORM:
        rank, file = 7 - file, 7 - rank
    return rank * 8 + file


def inverse_transform_square(square: int, transform: int) -> int:
    """Inverse of :func:`transform_square`: undoes transpose, then mirror, then flip."""
    rank, file = square >> 3, square & 7
    if transform & TRANSPOSE_TRANSFORM:
        rank, file = 7 - file, 7 - rank
    if transform & MIRROR_TRANSFORM:
        rank = 7 - rank
    if transform & FLIP_TRANSFORM:
        file = 7 - file
    return rank * 8 + file


def square_to_token(square: chess.Square, turn: chess.Color, transform: int = 0) -> int:
    """The network's token (input square) index of a board square.

    A token is ``rank * 8 + file`` in the planes' frame: the side to move's view (for black,
    ``square ^ 56``: ranks flipped, files kept), then the canonical ``transform``. It indexes
    the flattened 8x8 planes, the 64 tokens of an attention body and the from/to squares of
    the policy maps.

    Args:
        square: a python-chess square (a1 = 0, h8 = 63) in the real board.
        turn: the side to move of the encoded position.
        transform: the position's canonical transform (:func:`transform_for`), 0 for none.

    >>> square_to_token(chess.E2, chess.WHITE), square_to_token(chess.E7, chess.BLACK)
    (12, 12)
    """
    return transform_square(square ^ 56 if turn == chess.BLACK else square, transform)


def token_to_square(token: int, turn: chess.Color, transform: int = 0) -> chess.Square:
    """The board square of a token; inverse of :func:`square_to_token`.

    >>> chess.square_name(token_to_square(12, chess.BLACK))
    'e7'
    """
    square = inverse_transform_square(token, transform)
    return square ^ 56 if turn == chess.BLACK else square


#: The ``numbering`` attribute of every square-valued HDF5 dataset indexed or valued by tokens.
TOKEN_NUMBERING = ("token: rank*8+file in the side to move's frame (black: ranks flipped, "
                   "files kept) after the clean board's canonical transform "
                   "(leela_interp.board.encoding.square_to_token)")
#: The ``numbering`` attribute of datasets that hold python-chess squares (named ``*_chess``).
CHESS_NUMBERING = "python-chess: a1 = 0, b1 = 1, ..., h1 = 7, a2 = 8, ..., h8 = 63 (white's frame)"


def _token_table(transform: int) -> np.ndarray:
    """``int64 [2, 64]``: ``table[turn, square]`` is the token of ``square`` (turn 0 = black)."""
    return np.array([[square_to_token(sq, turn, transform) for sq in chess.SQUARES]
                     for turn in (chess.BLACK, chess.WHITE)], dtype=np.int64)


_TOKEN_TABLES = {t: _token_table(t) for t in range(8)}


def squares_to_tokens(squares, turns, transforms=0) -> np.ndarray:
    """:func:`square_to_token`, vectorised: python-chess squares to tokens, elementwise.

    Args:
        squares: integer array ``[N, ...]`` of python-chess squares; negative entries (``-1`` =
            none) are passed through unchanged.
        turns: ``[N]`` side to move of each row (True / 1 = white).
        transforms: ``[N]`` canonical transform of each row (or one int for all).

    >>> squares_to_tokens([[chess.E2, -1], [chess.E7, chess.A8]], [True, False]).tolist()
    [[12, -1], [12, 0]]
    """
    return _map_squares(squares, turns, transforms, inverse=False)


def tokens_to_squares(tokens, turns, transforms=0) -> np.ndarray:
    """:func:`token_to_square`, vectorised: the inverse of :func:`squares_to_tokens`."""
    return _map_squares(tokens, turns, transforms, inverse=True)


def _map_squares(values, turns, transforms, *, inverse: bool) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64)
    n = values.shape[0] if values.ndim else 1
    turns = np.broadcast_to(np.asarray(turns, dtype=bool).reshape(-1), (n,))
    transforms = np.broadcast_to(np.asarray(transforms, dtype=np.int64).reshape(-1), (n,))
    out = values.copy()
    flat = out.reshape(n, -1)
    for i in range(n):
        table = _TOKEN_TABLES[int(transforms[i])][int(turns[i])]
        if inverse:
            table = np.argsort(table)
        row = flat[i]
        ok = row >= 0
        row[ok] = table[row[ok]]
    return out


def reorder_tokens_to_squares(values, turns, transforms=0) -> np.ndarray:
    """Reorder the last axis of ``values [N, ..., 64]`` from token order to python-chess square
    order: ``out[i, ..., sq] = values[i, ..., square_to_token(sq, turns[i], transforms[i])]``.

    Use it to show per-token values (activations, patching effects) on a board.

    >>> v = np.arange(64)[None]  # token t holds the value t
    >>> int(reorder_tokens_to_squares(v, [False])[0, chess.E7])  # e7 is black's token 12
    12
    """
    values = np.asarray(values)
    n = values.shape[0]
    squares = np.broadcast_to(np.arange(64), (n, 64))
    index = squares_to_tokens(squares, turns, transforms)  # [N, 64]: token of each square
    shape = (n,) + (1,) * (values.ndim - 2) + (64,)
    return np.take_along_axis(values, index.reshape(shape), axis=-1)


# numpy versions, for a batch of masks at once.
_REV8 = np.array([int(f"{b:08b}"[::-1], 2) for b in range(256)], dtype=np.uint8)


def _np_transform(masks: np.ndarray, transform: int) -> np.ndarray:
    """Applies ``transform`` to every uint64 of ``masks`` (any shape)."""
    v = np.ascontiguousarray(masks, dtype=np.uint64)
    if transform & FLIP_TRANSFORM:
        v = _REV8[v.view(np.uint8)].view(np.uint64)
    if transform & MIRROR_TRANSFORM:
        v = v.byteswap()
    if transform & TRANSPOSE_TRANSFORM:
        u = np.uint64
        v = ((v & u(0xAA00AA00AA00AA00)) >> u(9)) | ((v & u(0x0055005500550055)) << u(9)) | (
            v & u(0x55AA55AA55AA55AA))
        v = ((v & u(0xCCCC0000CCCC0000)) >> u(18)) | ((v & u(0x0000333300003333)) << u(18)) | (
            v & u(0x3333CCCC3333CCCC))
        v = ((v & u(0xF0F0F0F000000000)) >> u(36)) | ((v & u(0x000000000F0F0F0F)) << u(36)) | (
            v & u(0x0F0F0F0FF0F0F0F0))
    return v


# --------------------------------------------------------------------------- validation


def _check_format(input_format: int) -> None:
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"unsupported input format {input_format!r}; expected one of {INPUT_FORMATS}")


def is_canonical_format(input_format: int) -> bool:
    """Whether the format uses canonical transforms and early history stops (3, 4, 5, 132, 133)."""
    return input_format >= 3


def _is_hectoplies(input_format: int) -> bool:
    return input_format >= 4


def _is_armageddon(input_format: int) -> bool:
    return input_format in (132, 133)


def _is_v2(input_format: int) -> bool:
    return input_format in (5, 133)


# --------------------------------------------------------------------------- positions


@dataclass(frozen=True)
class _Snapshot:
    """One position of a game, as lc0's encoder sees it (absolute, white-at-bottom frame)."""

    occupied_co: tuple[int, int]  # (black, white), indexed by chess.Color
    pieces: tuple[int, int, int, int, int, int]  # pawns, knights, bishops, rooks, queens, kings
    turn: chess.Color
    castling: int  # clean castling rights (rook squares)
    ep_file: int | None  # lc0's en-passant flag
    rule50: int
    repetitions: int = 0

    def key(self) -> tuple:
        return (self.occupied_co, self.pieces, self.turn, self.castling, self.ep_file)


def _snapshot(board: chess.Board, at_root: bool) -> _Snapshot:
    ep = board.ep_square
    ep_file = None
    if ep is not None:
        if at_root:
            ep_file = chess.square_file(ep)
        else:
            attackers = board.pawns & board.occupied_co[board.turn] & chess.BB_PAWN_ATTACKS[not board.turn][ep]
            if attackers:
                ep_file = chess.square_file(ep)
    return _Snapshot(
        occupied_co=(board.occupied_co[chess.BLACK], board.occupied_co[chess.WHITE]),
        pieces=(board.pawns, board.knights, board.bishops, board.rooks, board.queens, board.kings),
        turn=board.turn,
        castling=board.clean_castling_rights(),
        ep_file=ep_file,
        rule50=board.halfmove_clock,
    )


def _history(board: chess.Board) -> tuple[list[_Snapshot], bool]:
    """The positions of ``board``'s game that the encoder can look at, oldest first.

    Goes back to the root, or stops once it has 8 positions and the oldest has rule50 = 0
    (nothing older can affect repetitions or the planes). Returns the snapshots with their
    lc0 repetition counts, and whether the oldest one is the root.
    """
    b = board.copy()
    newest_first: list[_Snapshot] = []
    while True:
        at_root = not b.move_stack
        newest_first.append(_snapshot(b, at_root))
        if at_root or (len(newest_first) >= HISTORY_LENGTH and b.halfmove_clock == 0):
            break
        b.pop()
    snaps = newest_first[::-1]
    # lc0's PositionHistory::ComputeLastMoveRepetitions, for each position in turn.
    keys = [s.key() for s in snaps]
    reps = [0] * len(snaps)
    for k in range(1, len(snaps)):
        if snaps[k].rule50 < 4:
            continue
        for j in range(k - 4, -1, -2):
            if keys[j] == keys[k]:
                reps[k] = 1 + reps[j]
                break
            if snaps[j].rule50 < 2:
                break
    snaps = [_Snapshot(**{**s.__dict__, "repetitions": r}) for s, r in zip(snaps, reps)]
    return snaps, at_root


def _is_startpos(snap: _Snapshot) -> bool:
    global _STARTPOS_KEY
    if _STARTPOS_KEY is None:
        _STARTPOS_KEY = _snapshot(chess.Board(), True).key()
    return snap.key() == _STARTPOS_KEY


def _walk(snaps: list[_Snapshot], at_root: bool, input_format: int,
          history_fill: str) -> list[tuple[_Snapshot, bool]]:
    """The positions written to history slots 0, 1, ... and whether each is a synthetic
    en-passant slot (lc0's history loop in ``EncodePositionForNN``)."""
    canonical = is_canonical_format(input_format)
    v2 = _is_v2(input_format)
    n = len(snaps) - 1
    current = snaps[n]
    slots: list[tuple[_Snapshot, bool]] = []
    hidx = n
    while len(slots) < HISTORY_LENGTH:
        if hidx < 0 and not at_root:  # cannot happen: see _history's stopping rule
            raise RuntimeError("encoder walked past the positions it collected")
        snap = snaps[max(hidx, 0)]
        if canonical and snap.castling != current.castling:
            break
        if canonical and hidx != n and snap.ep_file is not None:
            break
        if history_fill == "no" and (hidx < -1 or (hidx == -1 and snap.ep_file is None)):
            break
        if hidx < 0 and history_fill == "fen_only" and _is_startpos(snap):
            break
        if v2 and snap.repetitions == 0 and slots:
            # lc0 skips non-repeats. Past the root it would skip forever (lc0 0.32 loops out
            # of bounds and crashes there); no slot would ever be written, so stop.
            if snap.rule50 == 0 or hidx < 0:
                break
            hidx -= 1
            continue
        slots.append((snap, hidx < 0 and snap.ep_file is not None))
        if canonical and snap.rule50 == 0:
            break
        hidx -= 1
    return slots


def _stm_bitboards(board: chess.Board) -> tuple[int, int, list[int]]:
    """(ours, theirs, [pawns..kings]) of ``board`` in the side to move's frame."""
    ours, theirs = board.occupied_co[board.turn], board.occupied_co[not board.turn]
    pieces = [board.pawns, board.knights, board.bishops, board.rooks, board.queens, board.kings]
    if board.turn == chess.BLACK:
        ours, theirs = _reverse_bytes(ours), _reverse_bytes(theirs)
        pieces = [_reverse_bytes(p) for p in pieces]
    return ours, theirs, pieces


def _compare_transposing(value: int, transform: int) -> int:
    value = transform_bitboard(value, transform & (FLIP_TRANSFORM | MIRROR_TRANSFORM))
    alternative = _transpose(value)
    return (value > alternative) - (value < alternative)


def _choose_transform(board: chess.Board) -> int:
    # lc0's ChooseTransform: any castling right forbids every transform.
    if board.clean_castling_rights():
        return NO_TRANSFORM
    ours, theirs, (pawns, knights, bishops, rooks, queens, kings) = _stm_bitboards(board)
    our_king = kings & ours
    transform = NO_TRANSFORM
    if our_king & 0x0F0F0F0F0F0F0F0F:  # king on files a-d
        transform |= FLIP_TRANSFORM
        our_king = _reverse_bits_in_bytes(our_king)
    if pawns:  # only the horizontal flip keeps pawns valid
        return transform
    if our_king & 0xFFFFFFFF00000000:  # king on ranks 5-8
        transform |= MIRROR_TRANSFORM
        our_king = _reverse_bytes(our_king)
    # The king is now on e1-h4. Transpose when it is above the a8-h1 diagonal; on the diagonal,
    # compare bitboards in lc0's order and pick the smaller of each pair.
    if our_king & 0xE0C08000:
        transform |= TRANSPOSE_TRANSFORM
    elif our_king & 0x10204080:
        for value in (ours | theirs, ours, kings, queens, rooks, knights, bishops):
            outcome = _compare_transposing(value, transform)
            if outcome < 0:
                return transform
            if outcome > 0:
                return transform | TRANSPOSE_TRANSFORM
    return transform


def transform_for(board: chess.Board, input_format: int) -> int:
    """lc0's canonical transform for the position on ``board`` (lc0's ``TransformForPosition``).

    For canonical formats (>= 3) and only when no castling rights remain: flip the files if
    our king is on files a-d; then, only if there are no pawns, mirror the ranks if the king is
    on ranks 5-8, and transpose if it is above the a8-h1 diagonal (on the diagonal, whichever
    of the two boards has the smaller bitboards, compared in lc0's order). Returns 0 for formats
    1 and 2.

    Args:
        board: the position (its history does not matter).
        input_format: the network's input format.

    Returns:
        An OR of :data:`FLIP_TRANSFORM`, :data:`MIRROR_TRANSFORM`, :data:`TRANSPOSE_TRANSFORM`.

    Raises:
        ConfigError: ``input_format`` is not in :data:`INPUT_FORMATS`.

    >>> transform_for(chess.Board("8/2K5/8/8/8/8/8/6qk w - - 0 1"), 3)  # flip and mirror
    3
    >>> transform_for(chess.Board("8/8/8/8/8/6K1/8/q6k w - - 0 1"), 3)  # transpose
    4
    >>> transform_for(chess.Board("8/2K5/8/8/8/8/8/6qk w - - 0 1"), 1)
    0
    """
    _check_format(input_format)
    if not is_canonical_format(input_format):
        return NO_TRANSFORM
    return _choose_transform(board)


# --------------------------------------------------------------------------- encoder


def encode_bitboards(boards: Sequence[chess.Board], *, input_format: int = 1,
                     history_fill: str = "fen_only") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The planes in lc0's own form: a mask and a value per plane.

    Same arguments and errors as :func:`encode`.

    Returns:
        ``(masks, values, transforms)``: uint64 ``[batch, 112]`` (bit ``i`` = token ``i``),
        float32 ``[batch, 112]`` and int64 ``[batch]`` (each board's canonical transform). Plane
        ``k`` is the bits of ``masks[:, k]`` times ``values[:, k]``; a plane lc0 fills with a
        zero value (rule50 = 0) has an all-ones mask and value 0, as in lc0.
    """
    _check_format(input_format)
    if history_fill not in HISTORY_FILLS:
        raise ConfigError(f"unknown history_fill {history_fill!r}; expected one of {HISTORY_FILLS}")
    if isinstance(boards, chess.Board):
        raise TypeError("encode() takes a sequence of boards; wrap a single board as [board]")
    batch = len(boards)
    masks = np.zeros((batch, NUM_PLANES), dtype=np.uint64)
    values = np.ones((batch, NUM_PLANES), dtype=np.float32)
    transforms = np.zeros(batch, dtype=np.int64)
    black = np.zeros(batch, dtype=bool)
    ep_fixes: list[tuple[int, int, int]] = []  # (row, plane, delta) in the side-to-move frame
    canonical = is_canonical_format(input_format)

    currents: list[_Snapshot] = []
    for row, board in enumerate(boards):
        snaps, at_root = _history(board)
        current = snaps[-1]
        currents.append(current)
        us = current.turn
        black[row] = us == chess.BLACK
        # Planes 0..103: history, in the absolute frame (made side-to-move below).
        for i, (snap, synthetic_ep) in enumerate(_walk(snaps, at_root, input_format, history_fill)):
            base = i * PLANES_PER_BOARD
            ours, theirs = snap.occupied_co[us], snap.occupied_co[not us]
            for t, piece in enumerate(snap.pieces):
                masks[row, base + t] = piece & ours
                masks[row, base + 6 + t] = piece & theirs
            if snap.repetitions >= 1:
                masks[row, base + 12] = _ALL
            if synthetic_ep and snap.ep_file is not None:
                # Undo the double push that made the en-passant square: the pusher's pawn goes
                # back two ranks. lc0 does it by adding to the mask in the side-to-move frame.
                if snap.turn == us:  # they pushed: rank 5 -> rank 7
                    ep_fixes.append((row, base + 6, (1 << (48 + snap.ep_file)) - (1 << (32 + snap.ep_file))))
                else:  # we pushed: rank 4 -> rank 2
                    ep_fixes.append((row, base + 0, (1 << (8 + snap.ep_file)) - (1 << (24 + snap.ep_file))))
        # Planes 104..107: castling.
        rights = current.castling
        if input_format == 1:
            for plane, color, a_side in ((104, us, True), (105, us, False), (106, not us, True),
                                         (107, not us, False)):
                if _side_rights(rights, current, color, a_side):
                    masks[row, plane] = _ALL
        else:
            masks[row, 104] = _side_rights(rights, current, chess.WHITE, True) | _side_rights(
                rights, current, chess.BLACK, True)
            masks[row, 105] = _side_rights(rights, current, chess.WHITE, False) | _side_rights(
                rights, current, chess.BLACK, False)
        if canonical:
            transforms[row] = _choose_transform(board)

    # Side-to-move frame: flip the ranks of black's boards.
    masks[black, :108] = masks[black, :108].byteswap()
    for row, plane, delta in ep_fixes:
        masks[row, plane] = (int(masks[row, plane]) + delta) & _ALL

    for row, current in enumerate(currents):
        if canonical:
            if current.ep_file is not None:  # rank 8 of the side to move's frame
                masks[row, 108] = 1 << (56 + current.ep_file)
        elif black[row]:
            masks[row, 108] = _ALL
        masks[row, 109] = _ALL
        rule50 = np.float32(current.rule50)
        values[row, 109] = rule50 / np.float32(100.0) if _is_hectoplies(input_format) else rule50
        if _is_armageddon(input_format) and black[row]:
            masks[row, 110] = _ALL
        masks[row, 111] = _ALL

    for transform in np.unique(transforms):
        if transform:
            rows = transforms == transform
            masks[rows, :109] = _np_transform(masks[rows, :109], int(transform))
    return masks, values, transforms


def _side_rights(rights: int, snap: _Snapshot, color: chess.Color, a_side: bool) -> int:
    """Rook squares of ``color`` with castling rights on the a side (or h side)."""
    backrank = chess.BB_RANK_1 if color == chess.WHITE else chess.BB_RANK_8
    rooks = rights & backrank & snap.occupied_co[color]
    king = snap.pieces[5] & snap.occupied_co[color] & backrank
    if not rooks or not king:
        return 0
    king_file = chess.square_file(chess.lsb(king))
    result = 0
    for square in chess.scan_forward(rooks):
        if (chess.square_file(square) < king_file) == a_side:
            result |= chess.BB_SQUARES[square]
    return result


def planes_from_bitboards(masks: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """Expands masks and values (as from :func:`encode_bitboards`) to float32 ``[..., 8, 8]``.

    Bit ``rank * 8 + file`` of a mask goes to ``[rank, file]``.

    >>> planes_from_bitboards(np.array([[0x102]], dtype=np.uint64), np.ones((1, 1), np.float32))[0, 0, :2]
    tensor([[0., 1., 0., 0., 0., 0., 0., 0.],
            [1., 0., 0., 0., 0., 0., 0., 0.]])
    """
    masks = np.ascontiguousarray(masks, dtype="<u8")
    bits = np.unpackbits(masks.view(np.uint8).reshape(*masks.shape, 8, 1), axis=-1, bitorder="little")
    planes = bits.astype(np.float32) * np.asarray(values, dtype=np.float32)[..., None, None]
    return torch.from_numpy(planes)


def encode(boards: Sequence[chess.Board], *, input_format: int = 1,
           history_fill: str = "fen_only") -> torch.Tensor:
    """Encodes boards, with their move stacks as history, into lc0's 112 input planes.

    The result equals, bit for bit, the planes lc0's ``EncodePositionForNN`` writes for a game
    that starts at ``board.root()`` and plays ``board.move_stack`` (see the module docstring for
    the plane layout and conventions).

    Args:
        boards: the positions; each board's move stack is its history.
        input_format: the network's input format, one of :data:`INPUT_FORMATS`.
        history_fill: one of :data:`HISTORY_FILLS`; lc0's default is ``"fen_only"``.

    Returns:
        float32 tensor ``[batch, 112, 8, 8]``, ``[plane, rank, file]`` in the side to move's
        frame after the canonical transform.

    Raises:
        ConfigError: ``input_format`` or ``history_fill`` is not supported.
        TypeError: ``boards`` is a single board rather than a sequence.

    .. warning::
        In the v2 formats (5, 133) lc0 0.32 itself crashes when its walk through the history
        reaches before the root without meeting a position with rule50 = 0 (history fill
        ``fen_only`` with a non-start root, or ``always``). There no further slot could be
        written, so this encoder stops and leaves them zero.
    """
    masks, values, _ = encode_bitboards(boards, input_format=input_format, history_fill=history_fill)
    return planes_from_bitboards(masks, values)
