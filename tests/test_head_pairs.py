"""Joint patching of head pairs: against plain full forward passes, and the interaction."""

from __future__ import annotations

import chess
import numpy as np
import pytest
import torch

from tiny_run import ROWS

from leela_interp import load_network
from leela_interp.board.policy import legal_mask, policy_index
from leela_interp.experiments import head_pairs as hp
from leela_interp.experiments import interventions as iv
from leela_interp.experiments import patching as pt
from leela_interp.errors import ConfigError
from leela_interp.network.lc0.random_net import write_random_net

HEADS = [(1, 2), (0, 1), (1, 0)]  # two in one layer, one earlier


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    path = write_random_net(tmp_path_factory.mktemp("hp") / "net.pb.gz", body="transformer",
                            policy="attention", d_model=32, layers=2, heads=4, d_ff=32, seed=5)
    net = load_network(path, device="cpu")
    puzzles = []
    for n, row in enumerate(ROWS[:6]):
        fen, moves = row.split(",")
        board = chess.Board(fen)
        board.push_uci(moves.split()[0])
        board = chess.Board(board.fen())
        pv = tuple(chess.Move.from_uci(m) for m in moves.split()[1:])
        corrupted = board.copy()
        pawn = next(iter(board.pieces(chess.PAWN, board.turn)))
        corrupted.remove_piece_at(pawn)  # remove one of the mover's pawns
        usable = n < 5 and corrupted.is_valid() and corrupted.is_legal(pv[0])
        puzzles.append(iv.Puzzle(board, pv, corrupted if usable else None))
    prep = iv.prepare(net, puzzles, batch_size=4)  # several batches of rows
    assert prep.corrupted_ok.sum() >= 4 and not prep.corrupted_ok.all()
    return prep


def plain_effect(prep, i, heads):
    """log-odds(clean) - log-odds(clean with ``heads``' hook_z from the corrupted board), with
    two full forward passes and run_with_hooks."""
    net, puzzle = prep.net, prep.puzzles[i]
    _, corr = net.run_with_cache(net.encode([puzzle.corrupted]), names="blocks.*.attn.hook_z")

    def patch(layer, head):
        def hook(t, hook):
            t = t.clone()
            t[:, head] = corr[f"blocks.{layer}.attn.hook_z"][:, head]
            return t
        return f"blocks.{layer}.attn.hook_z", hook

    logits = {}
    for name, hooks in (("clean", []), ("patched", [patch(l, h) for l, h in heads])):
        with torch.no_grad():
            logits[name] = net.run_with_hooks(net.encode([puzzle.clean]),
                                              fwd_hooks=hooks).policy_logits.double()
    legal = legal_mask([puzzle.clean])
    move = torch.tensor([policy_index(puzzle.clean, puzzle.pv[0])])
    lo = {k: iv.log_odds(v, legal, move)[0].item() for k, v in logits.items()}
    return lo["clean"] - lo["patched"]


def test_joint_patching_equals_full_forward_passes_with_both_heads_patched(prep):
    joint = hp.pair_patching(prep, HEADS)
    pairs = hp.pairs_of(HEADS)
    assert pairs == [(0, 1), (0, 2), (1, 2)] and joint.shape == (prep.n, 3)
    for i in range(prep.n):
        if not prep.corrupted_ok[i]:
            assert np.isnan(joint[i]).all()
            continue
        for k, (a, b) in enumerate(pairs):
            assert joint[i, k] == pytest.approx(plain_effect(prep, i, [HEADS[a], HEADS[b]]),
                                                abs=1e-4)


def test_interaction_is_joint_minus_the_two_singles(prep):
    single = pt.head_patching(prep)
    joint = hp.pair_patching(prep, HEADS)
    inter = hp.interaction(joint, single, HEADS)
    ok = prep.corrupted_ok
    i = int(np.flatnonzero(ok)[0])
    want = joint[i, 1] - single[i, 1, 2] - single[i, 1, 0]  # pair (0, 2): L1H2 and L1H0
    assert inter[i, 1] == pytest.approx(want, abs=1e-6)
    assert single[i, 0, 1] == pytest.approx(plain_effect(prep, i, [(0, 1)]), abs=1e-4)
    assert np.isfinite(inter[ok]).all() and np.isnan(inter[~ok]).all()
    assert np.abs(inter[ok]).max() > 0  # a random net's heads do not add up exactly


def test_top_heads_and_bad_choices():
    mean = np.array([[0.1, np.nan, 0.5], [0.3, -1.0, 0.2]])
    assert hp.top_heads(mean, 3) == [(0, 2), (1, 0), (1, 2)]
    assert hp.top_heads(mean, 9) == [(0, 2), (1, 0), (1, 2), (0, 0), (1, 1)]
    for bad in (1, 0, 2.5):
        with pytest.raises(ConfigError, match="top_n"):
            hp.top_heads(mean, bad)


def test_the_patching_stage_writes_the_pairs_of_its_top_heads(tmp_path):
    import h5py
    from tiny_run import compose_config, write_inputs

    from leela_interp.puzzles.puzzle_set import PuzzleSet
    from leela_interp.stages import run_stages

    inputs = write_inputs(tmp_path, ROWS, len(ROWS))
    out = tmp_path / "run"
    run_stages(compose_config(inputs, out, "stage=[puzzles,patching]",
                              "patching.head_pairs.top_n=3"))
    with h5py.File(out / "patching.h5", "r") as f:
        mean = f["heads/summary/all/effect_mean"][()]
        g = f["heads/pairs"]
        chosen = [tuple(int(x) for x in r) for r in g["heads"][()]]
        joint, inter = g["joint_effect"][()], g["interaction"][()]
        single, analysed = f["heads/effect"][()], f["analysed"][()]
        n = g["summary/all/joint_effect_n"][()]
    assert chosen == hp.top_heads(mean, 3)
    assert mean[chosen[0]] >= mean[chosen[1]] >= mean[chosen[2]] == np.sort(mean, None)[-3]
    assert (n == analysed.sum()).all() and analysed.sum() >= 3
    puzzles = PuzzleSet.load(out / "puzzles.h5")
    net = load_network(inputs[1], device="cpu")
    rows = np.flatnonzero(analysed)
    prep = iv.prepare(net, [iv.Puzzle.from_set(puzzles, int(i)) for i in rows])
    np.testing.assert_allclose(joint[rows], hp.pair_patching(prep, chosen), atol=1e-5)
    np.testing.assert_allclose(inter, hp.interaction(joint, single, chosen), atol=1e-6)
    assert np.isnan(joint[~analysed]).all()
    with pytest.raises(ConfigError, match="top_n=1"):
        run_stages(compose_config(inputs, out, "stage=patching", "patching.head_pairs.top_n=1"))
