"""The clean and corrupted inputs of a puzzle differ only by the corruption (issue "Trustworthy
effects"): a null corruption gives exactly zero effects, and on a real run the two input planes
of every kept puzzle differ only in the piece planes of its corrupted squares."""

from __future__ import annotations

from pathlib import Path

import chess
import h5py
import numpy as np
import pytest
import torch

from leela_interp.board.encoding import AUX_PLANE_BASE, PLANES_PER_BOARD, encode
from leela_interp.experiments import interventions as iv
from leela_interp.experiments.activations import cache_activations
from leela_interp.network import load_network
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.puzzles.corruptions import SelectionThresholds
from leela_interp.puzzles.config import FilterConfig, NetSpec, PipelineConfig
from leela_interp.puzzles.pipeline import build_puzzles
from leela_interp.puzzles.puzzle_set import PuzzleSet

ROOT = Path(__file__).resolve().parents[1]
# Real Lichess rows (CC0): white and black to move, one with a double pawn push as setup move
# (an en-passant square), one with castling rights.
PUZZLES = [
    ("p0", "r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24",
     "f2g3 e6e7 b2b1 b3c1 b1c1 h6c1"),
    ("p1", "5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27", "d3d6 f8d8 d6d8 f6d8"),
    ("p2", "r2qr1k1/b1p2ppp/pp4n1/P1P1p3/4P1n1/B2P2Pb/3NBP1P/RN1QR1K1 b - - 1 16",
     "b6c5 e2g4 h3g4 d1g4"),
    ("p3", "rnbqkb1r/pp3ppp/4pn2/2pp4/3P1B2/4PN2/PPP2PPP/RN1QKB1R w KQkq - 0 5",
     "c2c4 d5c4 f1c4 c5d4"),
]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nets")
    transformer = load_network(write_random_net(
        folder / "bt.pb.gz", body="transformer", policy="attention", d_model=32, layers=2,
        heads=4, d_ff=32, seed=3))
    cnn = load_network(write_random_net(folder / "cnn.pb.gz", seed=4))
    return {"transformer": transformer, "cnn": cnn}


def null_set(history: str) -> PuzzleSet:
    """The puzzles with each one's corrupted board set to its own clean position."""
    fens = [fen for _, fen, _ in PUZZLES]
    moves = [m.split() for _, _, m in PUZZLES]
    clean = [chess.Board(fen) for fen in fens]
    for board, m in zip(clean, moves):
        board.push_uci(m[0])
    return PuzzleSet(ids=[p[0] for p in PUZZLES], fens=fens, moves=moves,
                     corrupted_fens=[b.fen(en_passant="fen") for b in clean],
                     different_targets=np.ones(len(PUZZLES), bool), history=history)


@pytest.mark.parametrize("history", ["none", "setup"])
@pytest.mark.parametrize("body", ["transformer", "cnn"])
def test_a_null_corruption_gives_exactly_zero(nets, body, history, tmp_path):
    net = nets[body]
    puzzles = null_set(history)
    pairs = [puzzles.pair(i) for i in range(len(puzzles))]
    assert all(c.move_stack == b.move_stack for b, c in pairs)
    assert torch.equal(net.encode([b for b, _ in pairs]), net.encode([c for _, c in pairs]))
    prep = iv.prepare(net, [iv.Puzzle.from_set(puzzles, i) for i in range(len(puzzles))],
                      batch_size=64)
    assert prep.corrupted_ok.all()
    residual = iv.residual_patching(prep)
    assert np.array_equal(residual, np.zeros_like(residual))
    assert np.array_equal(prep.clean_log_odds, prep.corrupted_log_odds)
    if body == "transformer":
        heads = iv.head_patching(prep)
        assert np.array_equal(heads, np.zeros_like(heads))
    path = cache_activations(net, puzzles, tmp_path / "activations.h5",
                             hooks="blocks.*.hook_resid_post", boards="both", progress=False)
    with h5py.File(path, "r") as f:
        for name in f["clean"]:
            if name.startswith("blocks."):
                assert np.array_equal(f["clean"][name][()], f["corrupted"][name][()]), name


def _piece_plane_mask(tokens) -> np.ndarray:
    """``bool [112, 64]``: the piece planes (every history slot) at ``tokens``."""
    mask = np.zeros((112, 64), bool)
    pieces = [p for p in range(AUX_PLANE_BASE) if p % PLANES_PER_BOARD < 12]
    for t in tokens:
        mask[pieces, t] = True
    return mask


@pytest.mark.parametrize("history", ["none", "setup"])
def test_kept_pairs_differ_only_in_the_corrupted_squares_piece_planes(tmp_path, history):
    """A real run (the project's mined puzzles and trained nets, in the checkout): for every kept
    puzzle, clean and corrupted planes differ only in piece planes at ``corruption_squares``
    (read from puzzles.h5 as tokens, no conversion)."""
    strong = str(ROOT / "data" / "nets" / "strong-bt-64x4.pb.gz")
    weak = str(ROOT / "data" / "nets" / "weak-bt-32x2.pb.gz")
    loose = FilterConfig(hard_max_weak_prob=None, correct_min_strong_prob=None,
                         forcing_min_weak_prob=None, unique=False)
    cfg = PipelineConfig(source=str(ROOT / "data" / "puzzles" / "mined.csv"),
                         strong=NetSpec(strong), weak=NetSpec(weak), limit=24, device="cpu",
                         threads=1, filters=loose, history=history, chunk_size=20,
                         thresholds=SelectionThresholds(max_weak_log_odds_drop=2.0,
                                                        min_strong_value_drop=0.0,
                                                        max_strong_prob=0.5, max_jsd=0.5))
    path = build_puzzles(cfg, tmp_path / "puzzles.h5").path
    puzzles = PuzzleSet.load(path)
    assert puzzles.history == history
    with h5py.File(path, "r") as f:
        squares = f["puzzles/corruption_squares"][()]
        has = f["puzzles/has_corruption"][()]
    assert has.sum() >= 6
    net = load_network(strong)
    checked = 0
    for i in np.flatnonzero(has):
        clean, corrupted = puzzles.pair(i)
        planes = encode([clean, corrupted], input_format=net.config.input_format)
        diff = (planes[0] != planes[1]).reshape(112, 64).numpy()
        tokens = [int(t) for t in squares[i] if t >= 0]
        assert diff.any(), puzzles.ids[i]
        assert not (diff & ~_piece_plane_mask(tokens)).any(), (puzzles.ids[i], tokens)
        assert diff[:12, tokens].any(axis=0).all()  # the current position changes at each one
        if history == "setup":  # the corruption is in the history position too
            assert diff[PLANES_PER_BOARD:PLANES_PER_BOARD + 12, tokens].any()
        checked += 1
    assert checked == has.sum()
