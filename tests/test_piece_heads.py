"""The piece-movement-head finder: move squares, scores of planted heads, the selection rule."""

from __future__ import annotations

import chess
import numpy as np
import pytest
import torch

from tiny_run import ROWS

from leela_interp import load_network
from leela_interp.experiments import piece_heads as ph
from leela_interp.board.encoding import square_to_token
from leela_interp.errors import ConfigError
from leela_interp.network.lc0.random_net import write_random_net

PLANTED = (1, 2)  # (layer, head) of the planted heads


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = write_random_net(tmp_path_factory.mktemp("ph") / "net.pb.gz", body="transformer",
                            policy="attention", d_model=32, layers=2, heads=4, d_ff=32, seed=3)
    return load_network(path, device="cpu")


@pytest.fixture(scope="module")
def boards():
    """Real Lichess positions, both before and after the setup move (both sides to move)."""
    out = []
    for row in ROWS:
        fen, moves = row.split(",")
        board = chess.Board(fen)
        out.append(board.copy())
        board.push_uci(moves.split()[0])
        out.append(chess.Board(board.fen()))
    assert {b.turn for b in out} == {chess.WHITE, chess.BLACK}
    return out


def test_move_masks_are_each_lone_pieces_moves_on_an_empty_board():
    masks = ph.move_masks()
    for p, kind in enumerate(ph.PIECE_TYPES.values()):
        for square in chess.SQUARES:
            board = chess.Board(None)
            board.set_piece_at(square, chess.Piece(kind, chess.WHITE))
            assert set(np.nonzero(masks[p, square])[0]) == set(board.attacks(square))
    assert masks[0, chess.A1].sum() == 2 and masks[2, chess.D4].sum() == 14


def own_tokens(board: chess.Board, kind: int) -> list[int]:
    """Tokens of the side to move's pieces of ``kind`` (input format 1: no transform)."""
    return [square_to_token(sq, board.turn) for sq in board.pieces(kind, board.turn)]


def plant(boards, rows_from):
    """A hook that sets head PLANTED's pattern row of every query to ``rows_from(board,
    query)`` (a 64-vector), for ``boards`` run in order, in batches of any size."""
    layer, head = PLANTED
    seen = [0]

    def hook(pattern, hook):
        out = pattern.clone()
        batch = boards[seen[0]:seen[0] + len(pattern)]
        seen[0] += len(pattern)
        for b, board in enumerate(batch):
            for q in range(64):
                out[b, head, q] = torch.as_tensor(rows_from(board, q), dtype=out.dtype)
        return out

    return f"blocks.{layer}.attn.hook_pattern", hook


def uniform_on(mask_row: np.ndarray) -> np.ndarray:
    return mask_row / mask_row.sum()


def test_a_planted_knight_head_is_ranked_first_for_knights(net, boards):
    knight = ph.move_masks()[0]
    with net.hooks([plant(boards, lambda board, q: uniform_on(knight[q]))]):
        scores = ph.movement_scores(net, boards, batch_size=len(boards))
    n_knights = sum(len(own_tokens(b, chess.KNIGHT)) for b in boards)
    assert scores.n_queries[0] == n_knights > 0 and scores.n_positions == len(boards)
    assert scores.score[0][PLANTED] == pytest.approx(1.0, abs=1e-5)
    assert scores.control[0][PLANTED] == pytest.approx(1.0, abs=1e-5)  # a piece-blind pattern
    assert scores.score[1][PLANTED] == pytest.approx(0.0, abs=1e-6)  # never on a diagonal
    expected = np.mean([knight[q].sum() / 64 for b in boards
                        for q in own_tokens(b, chess.KNIGHT)])
    assert scores.chance[0] == pytest.approx(expected)
    lists = ph.select_heads(scores, 2.0)
    assert lists["knight"][0] == PLANTED
    assert PLANTED not in lists["bishop"] + lists["rook"]
    ranked = np.dstack(np.unravel_index(np.argsort(-scores.score[0], axis=None),
                                        scores.score[0].shape))[0]
    assert tuple(ranked[0]) == PLANTED


def test_the_score_is_conditioned_on_the_movers_piece_on_the_query_square(net, boards):
    """A head that follows knight moves only from the mover's knights (else attends to its own
    square) scores 1 for knights and 0 on the control; black's tokens are rank-flipped."""
    knight = ph.move_masks()[0]

    def row(board, q):
        if q in own_tokens(board, chess.KNIGHT):
            return uniform_on(knight[q])
        return np.eye(64)[q]

    with net.hooks([plant(boards, row)]):
        scores = ph.movement_scores(net, boards, batch_size=5)  # several batches
    assert scores.score[0][PLANTED] == pytest.approx(1.0, abs=1e-5)
    assert scores.control[0][PLANTED] == pytest.approx(0.0, abs=1e-6)
    assert ph.select_heads(scores, 2.0)["knight"][0] == PLANTED


def test_select_heads_threshold_and_one_type_per_head():
    chance = np.array([0.1, 0.15, 0.2])
    score = np.full((3, 2, 2), np.nan, np.float32)
    score[:, 0, 0] = [0.25, 0.1, 0.1]   # knight: lift 2.5
    score[:, 0, 1] = [0.19, 0.1, 0.1]   # knight: lift 1.9, below 2
    score[:, 1, 0] = [0.30, 0.1, 0.5]   # knight 3.0, rook 2.5: knight only
    score[:, 1, 1] = [0.0, 0.45, 0.1]   # bishop 3.0
    s = ph.MovementScores(score, score, chance, np.ones(3, np.int64), 1)
    assert ph.select_heads(s, 2.0) == {"knight": [(1, 0), (0, 0)], "bishop": [(1, 1)],
                                       "rook": []}
    for bad in (1.0, 0.5, -2):
        with pytest.raises(ConfigError, match="min_lift"):
            ph.select_heads(s, bad)


def test_a_cnn_or_no_positions_is_a_clear_error(tmp_path, net):
    cnn = load_network(write_random_net(tmp_path / "cnn.pb.gz", seed=2), device="cpu")
    with pytest.raises(ConfigError, match="no attention heads"):
        ph.movement_scores(cnn, [chess.Board()])
    with pytest.raises(ConfigError, match="no positions"):
        ph.movement_scores(net, [])


@pytest.fixture(scope="module")
def puzzles_run(tmp_path_factory):
    """A puzzles.h5 of the tiny run's rows on its random 2-layer transformer."""
    from tiny_run import compose_config, write_inputs

    from leela_interp.stages import run_stages

    root = tmp_path_factory.mktemp("ph_run")
    inputs = write_inputs(root, ROWS, len(ROWS))
    run_stages(compose_config(inputs, root / "run", "stage=puzzles"))
    return inputs, root / "run"


def ablate(puzzles_run, out, *extra):
    from tiny_run import compose_config

    from leela_interp.stages import run_stages

    inputs, run = puzzles_run
    out.mkdir()
    (out / "puzzles.h5").symlink_to(run / "puzzles.h5")
    cfg = compose_config(inputs, out, "stage=ablations", "ablations.edge.enabled=false",
                         "ablations.piece_heads.min_pv_length=3", *extra)
    run_stages(cfg)
    return cfg


def test_the_ablations_stage_runs_the_piece_heads_from_the_lists_it_finds(puzzles_run,
                                                                          tmp_path):
    import h5py

    from leela_interp.puzzles.puzzle_set import PuzzleSet

    out = tmp_path / "found"
    # a random net's heads sit near chance: a low threshold lets some pass
    cfg = ablate(puzzles_run, out, "ablations.piece_heads.find.min_lift=1.05",
                 "ablations.figures=true")
    net = load_network(cfg.model.path, device="cpu")
    fens = PuzzleSet.load(out / "puzzles.h5").fens
    expected = ph.movement_scores(net, [chess.Board(fen) for fen in fens])
    lists = ph.read_lists(out / ph.OUTPUT)
    assert lists == ph.select_heads(expected, 1.05) and any(lists.values())
    with h5py.File(out / ph.OUTPUT, "r") as f:
        np.testing.assert_allclose(f["score"][()], expected.score, rtol=1e-5)
        np.testing.assert_allclose(f["control"][()], expected.control, rtol=1e-5)
        assert f.attrs["n_positions"] == len(fens) and f.attrs["min_lift"] == 1.05
    with h5py.File(out / "ablations.h5", "r") as f:
        g = f["piece_heads"]
        assert g.attrs["heads"] == str(lists)
        assert g.attrs["heads_source"].startswith("found: piece_heads.h5")
        assert np.isfinite(g["effect"][()][:, 0]).any()
    assert (out / "figures" / "piece_heads.png").stat().st_size > 0
    from leela_interp.outputs.report import markdown, sections

    text = markdown(sections(out))
    assert f"Heads: {lists} (found: piece_heads.h5" in text
    row = next(line for line in text.splitlines() if line.startswith("| knight |"))
    knights = " ".join(f"L{l}H{h}" for l, h in lists["knight"]) or "none"
    assert row.split(" | ")[1] == knights


def test_configured_lists_or_find_disabled_write_no_piece_heads_file(puzzles_run, tmp_path):
    import h5py

    ablate(puzzles_run, tmp_path / "given", "ablations.piece_heads.heads.rook=[[1,3]]")
    assert not (tmp_path / "given" / ph.OUTPUT).exists()
    with h5py.File(tmp_path / "given" / "ablations.h5", "r") as f:
        assert f["piece_heads"].attrs["heads_source"] == "config"
    ablate(puzzles_run, tmp_path / "off", "ablations.piece_heads.find.enabled=false")
    assert not (tmp_path / "off" / ph.OUTPUT).exists()
    with h5py.File(tmp_path / "off" / "ablations.h5", "r") as f:
        assert "piece_heads" not in f
    with pytest.raises(ConfigError, match="max_positions=0"):
        ablate(puzzles_run, tmp_path / "bad", "ablations.piece_heads.find.max_positions=0")
