"""Tests of leela_interp.puzzles.corruptions: candidate boards, JSD, log-odds and the paper's
selection."""

from __future__ import annotations

import math
import re
from pathlib import Path

import chess
import numpy as np
import pytest
import torch

from leela_interp.errors import ConfigError
from leela_interp.puzzles.corruptions import (KINDS, CandidateBatch, Corruption,
                                              SelectionThresholds, candidate_mask,
                                              corruption_candidates, counterfactual_pair,
                                              jensen_shannon, log_odds, log_odds_from_log_prob,
                                              score_candidates, select_corruption,
                                              select_corruptions, )

SAMPLE_CSV = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "puzzles"
    / "lichess_sample.csv"
)

# White: Kg1, Rd1, pawns f2 g2 h2; Black: Kg8, pawns f7 g7 h7. Rd8 mates.
BACK_RANK = chess.Board("6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1")
DESCRIPTION = re.compile(
    r"remove [a-h][1-8]|add (white|black) pawn [a-h][1-8]|move [NBRQK][a-h][1-8] to [a-h][1-8]"
)


def _history(board: chess.Board) -> list[chess.Board]:
    """Every position of ``board``'s game, the root first."""
    b = board.root()
    out = [b.copy(stack=False)]
    for move in board.move_stack:
        b.push(move)
        out.append(b.copy(stack=False))
    return out


def changed_squares(before: chess.Board, after: chess.Board) -> set[chess.Square]:
    a, b = before.piece_map(), after.piece_map()
    return {square for square in chess.SQUARES if a.get(square) != b.get(square)}


def check_candidates(board: chess.Board, move: chess.Move, candidates: list[Corruption]) -> None:
    """Every candidate is valid, keeps ``move`` legal and differs exactly on its squares."""
    assert len({c.fen for c in candidates}) == len(candidates)
    kinds = [c.kind for c in candidates]
    first_move = kinds.index("move_piece") if "move_piece" in kinds else len(kinds)
    assert all(kind == "move_piece" for kind in kinds[first_move:])  # pawn edits come first
    for candidate in candidates:
        corrupted = candidate.apply(board)
        assert corrupted.is_valid() and move in corrupted.legal_moves
        assert corrupted.move_stack == board.move_stack  # same history, same moves
        assert DESCRIPTION.fullmatch(candidate.description), candidate.description
        assert changed_squares(board, corrupted) == set(candidate.squares)
        assert {sq for sq, _ in candidate.pieces} == set(candidate.squares)
        # Nothing but pieces changes: side to move, castling, en passant, counters.
        assert (corrupted.turn, corrupted.clean_castling_rights(), corrupted.ep_square,
                corrupted.halfmove_clock, corrupted.fullmove_number) == (
            board.turn, board.clean_castling_rights(), board.ep_square, board.halfmove_clock,
            board.fullmove_number)
        assert chess.Board(candidate.fen).board_fen() == corrupted.board_fen()
        for before, after in zip(_history(board), _history(corrupted)):  # every position
            assert changed_squares(before, after) <= set(candidate.squares)
        assert corrupted.turn == board.turn and corrupted.castling_rights == board.castling_rights
        names = [chess.square_name(s) for s in candidate.squares]
        if candidate.kind == "remove_pawn":
            assert board.piece_type_at(candidate.squares[0]) == chess.PAWN
            assert candidate.description == f"remove {names[0]}"
        elif candidate.kind == "add_pawn":
            added = corrupted.piece_at(candidate.squares[0])
            assert added.piece_type == chess.PAWN and board.piece_at(candidate.squares[0]) is None
            assert candidate.description == f"add {chess.COLOR_NAMES[added.color]} pawn {names[0]}"
        else:
            source, target = candidate.squares
            piece = board.piece_at(source)
            assert piece.piece_type != chess.PAWN and corrupted.piece_at(target) == piece
            assert candidate.description == f"move {piece.symbol().upper()}{names[0]} to {names[1]}"


def test_back_rank_candidates_counted_by_hand():
    candidates = corruption_candidates(BACK_RANK, "d1d8")
    check_candidates(BACK_RANK, chess.Move.from_uci("d1d8"), candidates)
    by_kind = {kind: [c for c in candidates if c.kind == kind] for kind in KINDS}
    # Each of the 6 pawns can go.
    assert len(by_kind["remove_pawn"]) == 6
    # 55 empty squares, 13 of them on the back ranks; pawns on d2..d7 would block Rd8: (42 - 6) * 2.
    assert len(by_kind["add_pawn"]) == 72
    assert not any(c.squares[0] in chess.SquareSet(chess.BB_FILE_D) for c in by_kind["add_pawn"])
    # The rook cannot move (Rd8 would be gone); only the kings do (kings count as non-pawn pieces).
    assert {c.description.split()[1] for c in by_kind["move_piece"]} == {"Kg1", "Kg8"}
    assert [c.description for c in candidates[:3]] == [
        "add white pawn a2",
        "add black pawn a2",
        "add white pawn b2",
    ]


def test_a_move_that_must_stay_legal_must_be_legal():
    with pytest.raises(ValueError, match="'e2e4'"):
        corruption_candidates(BACK_RANK, "e2e4")


def test_branching_candidates_keep_both_moves_legal():
    """After 1.e4, black's ...e5 and ...d5: removing the d7 pawn, a piece moved to d6 or d5, or
    a white bishop on b5 (pinning d7 to the king) makes ...d5 illegal; the branching candidates
    are exactly the plain ones that keep ...d5 legal too (no pawn can be added: 8 each)."""
    board = chess.Board()
    board.push_uci("e2e4")
    e5, d5 = chess.Move.from_uci("e7e5"), chess.Move.from_uci("d7d5")
    plain = corruption_candidates(board, e5)
    branching = corruption_candidates(board, e5, also_legal=[d5])
    assert branching == [c for c in plain if chess.Board(c.fen).is_legal(d5)]
    names = {c.description for c in branching}
    assert len(branching) < len(plain)
    assert {c.description for c in plain} - names >= {"remove d7", "move Nb8 to d6",
                                                      "move Bf1 to b5", "move Qd8 to d5"}
    for c in branching:
        after = c.apply(board)
        assert after.is_legal(e5) and after.is_legal(d5), c.description
    assert corruption_candidates(board, e5, also_legal=["d7d5"]) == branching
    with pytest.raises(ValueError, match="'d7d4'"):
        corruption_candidates(board, e5, also_legal=["d7d4"])
    batch = CandidateBatch.build([board, board], [e5, e5], [[d5], []])
    assert list(np.diff(batch.offsets)) == [len(branching), len(plain)]


def test_moving_a_castling_rook_or_king_is_dropped_as_invalid():
    board = chess.Board("r3k2r/pppq1ppp/8/8/8/8/PPPQ1PPP/R3K2R w KQkq - 0 1")
    descriptions = {c.description for c in corruption_candidates(board, "d2d3")}
    assert not any(
        d.startswith(("move Ra1", "move Rh1", "move Ke1", "move Ra8", "move Rh8", "move Ke8"))
        for d in descriptions
    )
    assert "move Qd7 to d5" in descriptions
    board.castling_rights = chess.BB_EMPTY
    descriptions = {c.description for c in corruption_candidates(board, "d2d3")}
    assert "move Ra1 to b1" in descriptions


def test_a_board_with_history_gets_the_corruption_in_every_position():
    board = chess.Board()
    for uci in ("e2e4", "e7e5", "g1f3"):
        board.push_uci(uci)
    candidates = corruption_candidates(board, "b8c6")
    check_candidates(board, chess.Move.from_uci("b8c6"), candidates)
    descriptions = {c.description for c in candidates}
    # The knight that just moved cannot be moved back in history; e4/e5/f3 edits break the replay.
    assert "move Nf3 to h4" not in descriptions and "remove e4" not in descriptions
    assert "remove a2" in descriptions and "remove a7" in descriptions
    bare = chess.Board(board.fen())  # the same position without history: more candidates
    assert descriptions < {c.description for c in corruption_candidates(bare, "b8c6")}


def test_en_passant_square_survives_the_corruption():
    # After d7d5, white's e5 pawn may capture en passant: the FEN keeps "d6".
    board = chess.Board("4k3/3p4/8/4P3/8/8/8/4K3 b - - 0 1")
    board.push_uci("d7d5")
    bare = chess.Board(board.fen())
    assert bare.ep_square == chess.D6
    added = next(c for c in corruption_candidates(bare, "e5d6")
                 if c.description == "add black pawn a6")
    assert added.apply(bare).ep_square == chess.D6
    # Removing the capturer keeps the (now uncapturable) square: lc0 trusts a FEN's square, so
    # the corrupted input still has the same en-passant history as the clean one.
    rook = chess.Board("4k3/3p4/8/4P3/8/8/8/R3K3 b - - 0 1")
    rook.push_uci("d7d5")
    bare = chess.Board(rook.fen())
    moved = [c for c in corruption_candidates(bare, "a1a8") if c.squares == (chess.E5,)]
    assert moved and all(c.apply(bare).ep_square == chess.D6 for c in moved)
    assert all(chess.Board(c.fen).ep_square == chess.D6 for c in moved)


def test_candidate_batch_offsets():
    boards = [BACK_RANK, chess.Board()]
    batch = CandidateBatch.build(boards, ["d1d8", chess.Move.from_uci("e2e4")])
    first = corruption_candidates(BACK_RANK, "d1d8")
    second = corruption_candidates(chess.Board(), "e2e4")
    assert batch.corruptions == first + second
    assert batch.offsets.tolist() == [0, len(first), len(first) + len(second)]
    assert batch.puzzle_index.tolist() == [0] * len(first) + [1] * len(second)
    assert [b.fen(en_passant="fen") for b in batch.boards()] == [c.fen for c in batch.corruptions]
    assert batch.board(len(first)).fen(en_passant="fen") == second[0].fen
    empty = CandidateBatch.build([], [])
    assert len(empty) == 0 and empty.offsets.tolist() == [0]
    with pytest.raises(ValueError):
        CandidateBatch.build(boards, ["d1d8"])


# --- JSD and log-odds ---------------------------------------------------------------------------


def reference_jsd(p: list[float], q: list[float]) -> float:
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda x: sum(a * math.log(a / c) for a, c in zip(x, m) if a > 0)  # noqa: E731
    return (kl(p) + kl(q)) / 2


def test_jensen_shannon_matches_the_definition():
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 30, generator=generator, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(5, 30, generator=generator, dtype=torch.float64), -1)
    p[:, :10] = 0  # illegal moves
    p = p / p.sum(-1, keepdim=True)
    got = jensen_shannon(p, q)
    assert got.shape == (5,)
    for i in range(5):
        assert got[i].item() == pytest.approx(
            reference_jsd(p[i].tolist(), q[i].tolist()), rel=1e-12
        )
    assert torch.allclose(got, jensen_shannon(q, p))
    assert torch.all(jensen_shannon(p, p) == 0)
    assert jensen_shannon(
        torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    ).item() == pytest.approx(math.log(2))
    # Broadcasting one clean policy against many corrupted ones, along another dim.
    assert torch.allclose(
        jensen_shannon(p[0], q), torch.stack([jensen_shannon(p[0], qi) for qi in q])
    )
    assert torch.allclose(jensen_shannon(p.T, q.T, dim=0), got)


def test_log_odds_has_no_clamp():
    p = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0, 1e-9, 1e-12])
    got = log_odds(p)
    assert got.dtype == torch.float64
    assert got[1:4].tolist() == pytest.approx([math.log(0.25 / 0.75), 0.0, math.log(0.9 / 0.1)])
    assert got[0].item() == -math.inf and got[4].item() == math.inf
    # Two tiny probabilities keep their difference (a clamp at 1e-6 made it 0).
    assert (got[5] - got[6]).item() == pytest.approx(math.log(1000), rel=1e-6)


def test_log_odds_from_log_prob_is_exact_in_the_tails():
    log_p = torch.tensor([-1e-15, math.log(0.5), -50.0, -800.0, 0.0], dtype=torch.float64)
    got = log_odds_from_log_prob(log_p)
    assert got[0].item() == pytest.approx(math.log(1 / 1e-15), rel=1e-9)
    assert got[1].item() == pytest.approx(0.0, abs=1e-12)
    assert got[2].item() == pytest.approx(-50.0, abs=1e-12)
    assert got[3].item() == -800.0  # p = e^-800 underflows as a probability
    assert got[4].item() == math.inf


# --- selection ----------------------------------------------------------------------------------


def test_each_threshold_at_its_boundary():
    # Passing values; then each candidate breaks exactly one criterion at its boundary.
    weak = [0.0, 0.2, 0.0, 0.0, 0.0, 0.199]
    value = [0.5, 0.5, 0.1, 0.5, 0.5, 0.101]
    prob = [0.05, 0.05, 0.05, 0.1, 0.05, 0.099]
    assert candidate_mask(weak, value, prob).tolist() == [True, False, False, False, True, True]
    jsd = [0.3, 0.0, 0.0, 0.0, 0.2, 0.25]
    assert select_corruption(weak, value, prob, jsd) == 4  # jsd <= 0.2 is allowed
    jsd[4] = 0.2000001
    assert select_corruption(weak, value, prob, jsd) is None  # best surviving JSD too large
    loose = SelectionThresholds(max_jsd=0.26)
    assert select_corruption(weak, value, prob, jsd, thresholds=loose) == 4


def test_value_and_log_odds_may_go_up():
    # A weak-net log-odds *rise* (negative drop) passes; a strong-value *rise* fails.
    assert candidate_mask([-3.0], [0.2], [0.0]).tolist() == [True]
    assert candidate_mask([0.0], [-0.2], [0.0]).tolist() == [False]


def test_ties_nan_and_empty():
    ok = dict(weak_log_odds_drop=[0.0] * 3, strong_value_drop=[0.5] * 3, strong_prob=[0.0] * 3)
    assert select_corruption(**ok, jsd=[0.1, 0.05, 0.05]) == 1  # the first of equal JSDs
    assert select_corruption(**ok, jsd=[float("nan"), 0.1, 0.1]) == 1
    nan_value = dict(ok, strong_value_drop=[float("nan"), 0.5, 0.5])
    assert select_corruption(**nan_value, jsd=[0.0, 0.1, 0.2]) == 1
    assert select_corruption([], [], [], []) is None
    with pytest.raises(ValueError, match="entries"):
        select_corruption([0.0], [0.5, 0.5], [0.0], [0.0])


def test_optional_oracle_margin():
    args = ([0.0, 0.0], [0.5, 0.5], [0.0, 0.0], [0.01, 0.02])
    assert select_corruption(*args) == 0
    with_oracle = SelectionThresholds(min_oracle_drop_cp=150)
    assert select_corruption(*args, oracle_drop_cp=[149, 150], thresholds=with_oracle) == 1
    assert select_corruption(*args, oracle_drop_cp=[10, 20], thresholds=with_oracle) is None
    with pytest.raises(ValueError, match="oracle_drop_cp"):
        select_corruption(*args, thresholds=with_oracle)


def test_tensors_are_accepted():
    args = [torch.tensor(x) for x in ([0.0, 0.0], [0.5, 0.5], [0.0, 0.0], [0.02, 0.01])]
    assert select_corruption(*args) == 1


def test_select_corruptions_returns_flat_indices_per_puzzle():
    offsets = np.array([0, 2, 2, 5])  # the middle puzzle has no candidates
    weak = np.zeros(5)
    value = np.array([0.5, 0.5, 0.5, 0.0, 0.5])
    prob = np.zeros(5)
    jsd = np.array([0.1, 0.05, 0.3, 0.0, 0.15])
    assert select_corruptions(offsets, weak, value, prob, jsd) == [1, None, 4]
    with pytest.raises(ValueError, match="offsets"):
        select_corruptions([1, 5], weak, value, prob, jsd)
    with pytest.raises(ValueError, match="entries"):
        select_corruptions([0, 4], weak, value, prob, jsd)
    for bad in ([], 0):
        with pytest.raises(ValueError, match="offsets"):
            select_corruptions(bad, weak, value, prob, jsd)
    # Each puzzle gets its own slice of oracle_drop_cp: only the last puzzle's clear the margin.
    oracle = np.array([0, 0, 0, 200, 200])
    assert select_corruptions(offsets, weak, value, prob, jsd, oracle_drop_cp=oracle,
                              thresholds=SelectionThresholds(min_oracle_drop_cp=150)) == \
        [None, None, 4]


@pytest.mark.parametrize("name", ["weak_log_odds_drop", "strong_value_drop", "strong_prob"])
def test_a_bad_array_is_named_in_the_error(name):
    ok = dict(weak_log_odds_drop=[0.0] * 2, strong_value_drop=[0.5] * 2, strong_prob=[0.0] * 2)
    with pytest.raises(ValueError, match=f"^{name} must be one-dimensional"):
        candidate_mask(**dict(ok, **{name: [[0.0, 0.0]]}))


@pytest.mark.parametrize("history", ["none", "setup"])
def test_counterfactual_pair_is_the_board_after_the_setup_move_and_its_corruption(history):
    moves = ["e2e4", "e7e5"]
    without_a2 = "rnbqkbnr/pppppppp/8/8/4P3/8/1PPP1PPP/RNBQKBNR b KQkq - 0 1"
    clean, corrupted = counterfactual_pair(chess.STARTING_FEN, moves, without_a2,
                                           history=history)
    expected = chess.Board()
    expected.push_uci("e2e4")
    assert clean.fen() == expected.fen()
    assert clean.move_stack == (expected.move_stack if history == "setup" else [])
    assert corrupted.board_fen() == without_a2.split()[0]
    assert corrupted.move_stack == clean.move_stack and corrupted.turn == chess.BLACK
    assert counterfactual_pair(chess.STARTING_FEN, moves, "", history=history) == (clean, None)


@pytest.mark.parametrize(
    "options",
    [{"max_weak_log_odds_drop": -0.1}, {"max_jsd": float("nan")}, {"min_oracle_drop_cp": -1}],
)
def test_invalid_thresholds_raise_config_error(options):
    with pytest.raises(ConfigError, match=re.escape(repr(next(iter(options.values()))))):
        SelectionThresholds(**options)


def test_score_candidates_from_network_outputs():
    weak_clean = torch.tensor([0.5, 0.3, 0.2, 0.0])
    weak_corrupted = torch.tensor(
        [
            [0.5, 0.3, 0.2, 0.0],  # unchanged
            [0.2, 0.6, 0.2, 0.0],  # the weak net sees the move got worse
            [0.0, 0.0, 0.0, 1.0],  # the move's probability falls to exactly 0
            [0.5, 0.2, 0.3, 0.0],  # the move's probability unchanged, others shuffled
        ]
    )
    strong_corrupted = torch.tensor(
        [[0.9, 0.1, 0.0, 0.0], [0.05, 0.95, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.05, 0.0, 0.95, 0.0]]
    )
    scores = score_candidates(
        move_index=0,
        weak_clean_policy=weak_clean,
        weak_corrupted_policy=weak_corrupted,
        strong_clean_value=torch.tensor(0.8),
        strong_corrupted_value=torch.tensor([0.8, 0.2, -1.0, -0.2]),
        strong_corrupted_policy=strong_corrupted,
    )
    assert scores.weak_log_odds_drop[[0, 1, 3]] == pytest.approx([0.0, math.log(0.8 / 0.2), 0.0])
    assert scores.weak_log_odds_drop[2] == math.inf  # P falls to 0: no clamp
    assert scores.strong_value_drop == pytest.approx([0.0, 0.6, 1.8, 1.0])
    assert scores.strong_prob == pytest.approx([0.9, 0.05, 0.0, 0.05])
    assert scores.jsd == pytest.approx(
        [
            0.0,
            reference_jsd([0.5, 0.3, 0.2, 0], [0.2, 0.6, 0.2, 0]),
            math.log(2),
            reference_jsd([0.5, 0.3, 0.2, 0], [0.5, 0.2, 0.3, 0]),
        ]
    )
    # 0: the strong net's value does not drop; 1 and 2: the weak net's log-odds drop too much.
    assert candidate_mask(
        scores.weak_log_odds_drop, scores.strong_value_drop, scores.strong_prob
    ).tolist() == [False, False, False, True]
    assert (
        select_corruption(
            scores.weak_log_odds_drop, scores.strong_value_drop, scores.strong_prob, scores.jsd
        )
        == 3
    )


# --- real puzzles -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_puzzles():
    if not SAMPLE_CSV.is_file():
        pytest.skip(f"needs the shared puzzle sample {SAMPLE_CSV}; it is absent")
    from leela_interp.puzzles.lichess import read_puzzles

    puzzles, _ = read_puzzles(SAMPLE_CSV, limit=40)
    return puzzles[:20]


@pytest.mark.parametrize("history", ["none", "setup"])
def test_real_puzzles_have_sound_candidates(sample_puzzles, history):
    boards = [p.board(history=history) for p in sample_puzzles]
    batch = CandidateBatch.build(boards, [p.pv[0] for p in sample_puzzles])
    assert all(np.diff(batch.offsets) > 0)  # every real puzzle has some candidates
    for board, puzzle, start, stop in zip(boards, sample_puzzles, batch.offsets[:-1],
                                          batch.offsets[1:]):
        check_candidates(board, puzzle.pv_moves[0], batch.corruptions[start:stop])


def test_the_puzzles_stage_with_branching_keeps_the_strong_nets_top_two_legal(tmp_path):
    from tiny_run import ROWS, compose_config, write_inputs

    from leela_interp import load_network
    from leela_interp.puzzles.config import PipelineConfig
    from leela_interp.puzzles.evaluation import top_moves
    from leela_interp.puzzles.puzzle_set import PuzzleSet
    from leela_interp.stages import run_stages

    inputs = write_inputs(tmp_path, ROWS, len(ROWS))
    cfg = compose_config(inputs, tmp_path / "run", "stage=puzzles",
                         "puzzles.corruptions.branching=true")
    run_stages(cfg)
    puzzles = PuzzleSet.load(tmp_path / "run" / "puzzles.h5")
    import h5py

    with h5py.File(tmp_path / "run" / "puzzles.h5", "r") as f:
        counts = f["puzzles/corruption_candidates"][()]
    net = load_network(inputs[1], device="cpu")
    corrupted, fewer = 0, 0
    for i in range(len(puzzles)):
        clean, bad = puzzles.pair(i)
        probs = net.move_probabilities([clean])[0]
        top2 = sorted(probs, key=probs.get, reverse=True)[:2]
        assert [m.uci() for m in top_moves(net, [clean], 2)[0]] == top2
        pv0 = puzzles.pv(i)[0]
        assert counts[i] == len(corruption_candidates(clean, pv0, also_legal=top2))
        fewer += counts[i] < len(corruption_candidates(clean, pv0))
        if bad is not None:
            corrupted += 1
            assert all(bad.is_legal(chess.Move.from_uci(m)) for m in top2), puzzles.ids[i]
    assert corrupted >= 3 and fewer >= 1
    with pytest.raises(ConfigError, match="branching"):
        PipelineConfig.from_sections({"path": "x"}, {"source": "x", "weak_model": {"path": "y"},
                                                     "corruptions": {"branching": "yes"}})
