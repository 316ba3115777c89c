"""ONNX in and out (leela_interp.network.onnx).

* lc0's own ``leela2onnx`` exports of maia-1100/1900 (../shared/nets/onnx) load into the native
  module, which then matches lc0's engine on the matching .pb.gz over 500 positions with
  history (<= 1e-4), and equals the module loaded from the .pb.gz.
* Our exports run in onnxruntime and match lc0's engine on the .pb.gz they were made from
  (<= 1e-4; the independent check) and the PyTorch module, for CNN and transformer nets, and
  load back into the same module (round trip); graphs in the conventions of older leela2onnx
  versions run in onnxruntime as lc0 computes (up to what each convention changes) and load
  back to the same weights. Positions are made here (``positions.py``).
* Files that are not lc0 exports raise WeightsFormatError naming the file.
"""

from __future__ import annotations

import logging

import chess
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lc0_reference import NETS, PUZZLES, lc0_evaluate, puzzle_positions
from positions import lc0_positions

from leela_interp import WeightsFormatError, load_network
from leela_interp.errors import ConfigError
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.network import load_onnx
from leela_interp.network.onnx import OnnxRuntimeNet, build_onnx_model, export_onnx, read_onnx_net
from leela_interp.network.onnx.writer import _Style

TOL = 1e-4
_T = dict(body="transformer", policy="attention")
VARIANTS = {
    "cnn-conv-policy-wdl-mlh-se": dict(),
    "cnn-classical-policy-classical-value": dict(policy="classical", value="classical",
                                                 moves_left=False, se_channels=0),
    "cnn-attention-policy-mish": dict(policy="attention", default_activation="mish",
                                      policy_encoders=1, policy_embed=24),
    "t-pe-map-smolgen": dict(_T, embedding="PE_MAP", d_model=48, layers=3, heads=6, d_ff=64,
                             default_activation="mish", ffn_activation="RELU_2",
                             smolgen_activation="SWISH"),
    "t-pe-dense-gating": dict(_T, embedding="PE_DENSE", default_activation="mish",
                              input_format=3),
    "t-pe-map-no-smolgen-no-gating": dict(_T, embedding="PE_MAP", smolgen=False, gating=False),
    "t-policy-encoders-selu-ffn": dict(_T, policy_encoders=2, ffn_activation="SELU",
                                       smolgen_activation="NONE"),
    "t-multihead": dict(_T, multihead=True, network="ATTENTIONBODY_WITH_MULTIHEADFORMAT"),
    "t-classical-value": dict(_T, value="classical", moves_left=False),
}


@pytest.fixture(scope="module")
def boards():
    return lc0_positions(64, seed=0)


def max_errors(a, b) -> dict[str, float]:
    errors = {"policy": float((a.policy_logits - b.policy_logits).abs().max()),
              "value": float((a.value - b.value).abs().max())}
    for field in ("wdl", "mlh"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            errors[field] = float((x - y).abs().max())
    return errors


@pytest.fixture(scope="module")
def variant_nets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    nets = {}
    for name, spec in VARIANTS.items():
        nets[name] = (load_network(write_random_net(tmp / f"{name}.pb.gz", seed=5, **spec)), tmp)
    return nets


def lc0_errors(out, ref) -> dict[str, float]:
    """Max differences of an onnxruntime (or module) output from lc0's, per output."""
    errors = {"policy": float(abs(out.policy_logits.numpy() - ref.policy).max()),
              "q": float(abs(out.value[:, 0].numpy() - ref.q).max())}
    if out.wdl is not None:
        errors["d"] = float(abs(out.wdl[:, 1].numpy() - ref.d).max())
    if out.mlh is not None:
        errors["m"] = float(abs(out.mlh[:, 0].numpy() - ref.m).max())
    assert ref.policy.std() > 0.05, "degenerate net: the comparison would be vacuous"
    return errors


# --- lc0's own exports -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def positions():
    if not PUZZLES.exists():
        pytest.skip(f"needs the real puzzles at {PUZZLES} (../shared is absent)")
    return puzzle_positions(500, seed=0)


@pytest.mark.lc0
@pytest.mark.parametrize("name", ["maia-1100", "maia-1900"])
def test_lc0_export_matches_lc0_engine(name, positions, lc0, caplog):
    onnx_path, pb_path = NETS / "onnx" / f"{name}.onnx", NETS / f"{name}.pb.gz"
    if not onnx_path.exists() or not pb_path.exists():
        pytest.skip(f"needs {onnx_path} and {pb_path} (../shared is absent)")
    with caplog.at_level(logging.WARNING, logger="leela_interp.network.onnx"):
        net = load_network(onnx_path)
    assert "do not record the input format" in caplog.text  # no .pb.gz next to the .onnx
    c = net.config
    assert (c.body, c.n_layers, c.d_model, c.policy, c.value, c.moves_left, c.input_format) == (
        "cnn", 6, 64, "convolution", "wdl", False, 1)
    assert c.details["format.network"] == "NETWORK_SE_WITH_HEADFORMAT"
    assert c.details["onnx.producer"].startswith("Lc0 0.32") and c.details["onnx.notes"] == []

    ref = lc0_evaluate(pb_path, positions)
    native = load_network(pb_path)
    ours, theirs = [], []
    with torch.no_grad():
        for start in range(0, len(positions), 256):
            planes = net.encode(positions[start:start + 256])
            ours.append(net(planes))
            theirs.append(native(planes))
    policy = torch.cat([o.policy_logits for o in ours]).numpy()
    wdl = torch.cat([o.wdl for o in ours]).numpy()
    value = torch.cat([o.value for o in ours])[:, 0].numpy()
    errors = {"policy": abs(policy - ref.policy).max(), "q": abs(value - ref.q).max(),
              "d": abs(wdl[:, 1] - ref.d).max()}
    assert all(e <= TOL for e in errors.values()), errors
    assert policy.std() > 0.5  # a real net: the comparison is not vacuous

    # The same weights as lc0's .pb.gz: lc0's converter decoded and folded them in float32 as
    # our loader does, up to a few ulps of each tensor's scale.
    ours_params, native_params = dict(net.named_parameters()), dict(native.named_parameters())
    assert ours_params.keys() == native_params.keys()
    for key, p in ours_params.items():
        q = native_params[key]
        assert (p - q).abs().max() <= 1e-6 * q.abs().max(), key
    # Weights a few ulps apart, run through oneDNN's channels-last convolutions: the outputs
    # agree within the project's lc0 tolerance.
    for a, b in zip(ours, theirs):
        assert max(max_errors(a, b).values()) <= TOL


@pytest.mark.lc0
@pytest.mark.parametrize("name", ["maia-1900"])
def test_onnxruntime_on_lc0_export_matches_lc0_engine(name, positions, lc0):
    onnx_path, pb_path = NETS / "onnx" / f"{name}.onnx", NETS / f"{name}.pb.gz"
    if not onnx_path.exists() or not pb_path.exists():
        pytest.skip(f"needs {onnx_path} and {pb_path} (../shared is absent)")
    ort_net = OnnxRuntimeNet(onnx_path, input_format=1, threads=2)
    subset = positions[:128]
    out = ort_net(ort_net.encode(subset))
    ref = lc0_evaluate(pb_path, subset)
    assert abs(out.policy_logits.numpy() - ref.policy).max() <= TOL
    assert abs(out.value[:, 0].numpy() - ref.q).max() <= TOL


# --- our exports -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_export_runs_in_onnxruntime_and_matches(variant, variant_nets, boards):
    net, tmp = variant_nets[variant]
    path = export_onnx(net, tmp / f"{variant}.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["/input/planes"]
    expected = ["/output/policy", "/output/wdl" if net.config.value == "wdl" else "/output/value"]
    expected += ["/output/mlh"] if net.config.moves_left else []
    assert [o.name for o in model.graph.output] == expected
    ort_net = OnnxRuntimeNet(path, threads=1)
    assert ort_net.config.input_format == net.config.input_format  # from the metadata
    planes = net.encode(boards)
    with torch.no_grad():
        errors = max_errors(net(planes), ort_net(planes))
    assert all(e <= TOL for e in errors.values()), errors


@pytest.mark.lc0
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_on_our_export_equals_lc0(variant, variant_nets, boards, lc0):
    """What we write, run by another runtime, computes what lc0 computes from the .pb.gz."""
    net, tmp = variant_nets[variant]
    ort_net = OnnxRuntimeNet(export_onnx(net, tmp / f"{variant}-lc0.onnx"), threads=1)
    errors = lc0_errors(ort_net(ort_net.encode(boards)),
                        lc0_evaluate(tmp / f"{variant}.pb.gz", boards))
    assert all(e <= TOL for e in errors.values()), errors


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_loads_back_into_the_same_module(variant, variant_nets, boards):
    net, tmp = variant_nets[variant]
    back = load_onnx(export_onnx(net, tmp / f"{variant}-rt.onnx"))
    assert back.config == net.config
    assert back.config.details["onnx.notes"] == []
    for (k1, p1), (k2, p2) in zip(net.named_parameters(), back.named_parameters()):
        assert k1 == k2 and torch.equal(p1, p2), k1
    planes = net.encode(boards)
    with torch.no_grad():
        assert max(max_errors(net(planes), back(planes)).values()) == 0.0


def test_export_options(variant_nets, boards, tmp_path):
    net = variant_nets["t-pe-dense-gating"][0]
    planes = net.encode(boards[:8])
    reference = net(planes)
    for opset in (13, 18, 22):  # 13: decomposed LayerNorm, ReduceMean axes attribute; 18: Mish
        path = export_onnx(net, tmp_path / f"o{opset}.onnx", opset=opset)
        assert max(max_errors(reference, OnnxRuntimeNet(path)(planes)).values()) <= TOL
        assert max(max_errors(reference, load_onnx(path)(planes)).values()) == 0.0
    path = export_onnx(net, tmp_path / "fixed.onnx", batch_dynamic=False, batch_size=8)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [8, 112, 8, 8]
    assert max(max_errors(reference, OnnxRuntimeNet(path)(planes)).values()) <= TOL
    with pytest.raises(ConfigError):
        export_onnx(net, tmp_path / "bad.onnx", opset=11)


OLD_STYLES = {
    "pre-2024 alpha on the skip": (_Style(alpha_on_skip=True), "DeepNorm"),
    "mish moves-left output": (_Style(mlh_default_activation=True), "moves-left"),
    "decomposed LayerNorm, alt mish": (_Style(layernorm="decomposed", mish="alt"), None),
    "gating reshapes of 2023": (_Style(gate_reshapes=True), None),
}
#: What each old convention computes unlike lc0 (left out of the comparison with lc0): the
#: LayerNorm epsilon (``test_old_alpha_export_differs_only_by_layernorm_epsilon``), mish
#: instead of relu on the moves-left output.
OLD_STYLE_DIFFERS = {"pre-2024 alpha on the skip": ("policy", "q", "d", "m"),
                     "mish moves-left output": ("m",)}


@pytest.mark.parametrize("style", OLD_STYLES)
@pytest.mark.parametrize("embedding", ["PE_MAP", "PE_DENSE"])
def test_older_converter_conventions_load(style, embedding, boards, tmp_path):
    """Graphs in the conventions of older leela2onnx versions read back to the same weights."""
    net = load_network(write_random_net(tmp_path / "n.pb.gz", seed=9, embedding=embedding,
                                        default_activation="mish", **_T))
    model = build_onnx_model(net, _style=OLD_STYLES[style][0])
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    back = load_onnx(path)
    for (k1, p1), (k2, p2) in zip(net.named_parameters(), back.named_parameters()):
        assert k1 == k2 and torch.equal(p1, p2), k1
    note = OLD_STYLES[style][1]
    notes = back.config.details["onnx.notes"]
    assert (len(notes) == 1 and note in notes[0]) if note else notes == [], notes


@pytest.mark.lc0
@pytest.mark.parametrize("style", [s for s in OLD_STYLES
                                   if len(OLD_STYLE_DIFFERS.get(s, ())) < 4])
@pytest.mark.parametrize("embedding", ["PE_MAP", "PE_DENSE"])
def test_older_converter_conventions_compute_what_lc0_computes(style, embedding, boards,
                                                                tmp_path, lc0):
    """The old-style graphs the reader is tested on are real: onnxruntime runs them to lc0's
    outputs on the .pb.gz, except where the convention itself differs (OLD_STYLE_DIFFERS)."""
    pb = write_random_net(tmp_path / "n.pb.gz", seed=9, embedding=embedding,
                          default_activation="mish", **_T)
    path = tmp_path / "old.onnx"
    onnx.save(build_onnx_model(load_network(pb), _style=OLD_STYLES[style][0]), str(path))
    ort_net = OnnxRuntimeNet(path, threads=1)
    errors = lc0_errors(ort_net(ort_net.encode(boards)), lc0_evaluate(pb, boards))
    kept = {k: e for k, e in errors.items() if k not in OLD_STYLE_DIFFERS.get(style, ())}
    assert kept and all(e <= TOL for e in kept.values()), errors


def test_old_alpha_export_differs_only_by_layernorm_epsilon(boards, tmp_path):
    """LN(s*x + f; eps) == LN(x + f/s; eps/s^2): the old convention is lc0's up to epsilon."""
    net = load_network(write_random_net(tmp_path / "n.pb.gz", seed=9, embedding="PE_DENSE",
                                        default_activation="mish", **_T))
    path = tmp_path / "old.onnx"
    onnx.save(build_onnx_model(net, _style=_Style(alpha_on_skip=True)), str(path))
    planes = net.encode(boards[:16])
    old = OnnxRuntimeNet(path)(planes)
    s2 = net.blocks[0].alpha ** -2  # s^2 = sqrt(2N)
    for block in net.blocks:
        block.ln1.eps, block.ln2.eps = block.ln1.eps / s2, block.ln2.eps / s2
    with torch.no_grad():
        assert max_errors(net(planes), old)["policy"] <= TOL


def test_float16_initializers_load(variant_nets, boards, tmp_path):
    net = variant_nets["t-pe-map-smolgen"][0]
    model = build_onnx_model(net)
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                                  init.name))
    path = tmp_path / "f16.onnx"
    onnx.save(model, str(path))
    back = load_onnx(path)
    for (k, p1), (_, p2) in zip(net.named_parameters(), back.named_parameters()):
        torch.testing.assert_close(p2, p1.half().float(), rtol=0, atol=0, msg=k)


# --- input format, runtime wrapper ---------------------------------------------------------------

def test_input_format_sources(variant_nets, tmp_path, caplog):
    net = variant_nets["t-pe-dense-gating"][0]  # input format 3
    model = build_onnx_model(net)
    del model.metadata_props[:]  # as lc0 writes it: no metadata
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with caplog.at_level(logging.WARNING, logger="leela_interp.network.onnx"):
        assert load_onnx(bare).config.input_format == 1
    assert "assuming 1" in caplog.text and str(bare) in caplog.text
    assert load_onnx(bare, input_format=4).config.input_format == 4
    pb = write_random_net(tmp_path / "other.pb.gz", input_format=5)
    assert load_onnx(bare, pb_path=pb).config.input_format == 5
    assert read_onnx_net(bare, pb_path=pb).format.network_format.input == 5
    write_random_net(tmp_path / "bare.pb.gz", input_format=132)  # same stem, next to it
    assert load_onnx(bare).config.input_format == 132
    assert load_onnx(export_onnx(net, tmp_path / "meta.onnx")).config.input_format == 3
    with pytest.raises(ConfigError, match="input_format 7"):
        load_onnx(bare, input_format=7)


def test_onnxruntime_net_interface(variant_nets, boards, tmp_path):
    net = variant_nets["cnn-conv-policy-wdl-mlh-se"][0]
    in_memory = OnnxRuntimeNet(net, threads=1)
    assert in_memory.sha256 == net.sha256 and in_memory.config.input_format == 1
    path = export_onnx(net, tmp_path / "n.onnx")
    from_file = OnnxRuntimeNet(path)
    assert len(from_file.sha256) == 64 and from_file.config.moves_left
    assert torch.equal(from_file.encode(boards), net.encode(boards))
    out = from_file(from_file.encode(boards))
    assert out.policy_logits.shape == (64, 1858) and out.wdl.shape == (64, 3)
    assert out.mlh.shape == (64, 1) and out.value.shape == (64, 1)
    native = net.move_probabilities(boards[:8])
    for ort_net in (in_memory, from_file):
        for ours, theirs in zip(ort_net.move_probabilities(boards[:8]), native):
            assert ours.keys() == theirs.keys()
            assert max(abs(ours[m] - theirs[m]) for m in ours) <= 1e-5


# --- errors ------------------------------------------------------------------------------------

def test_not_an_lc0_export_raises(tmp_path):
    relu = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    other = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(relu), str(other))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00 this is not an ONNX model")
    for path, reason in ((other, "not a supported lc0 leela2onnx export"),
                         (garbage, "not an ONNX model"),
                         (tmp_path / "missing.onnx", "cannot read")):
        with pytest.raises(WeightsFormatError, match=reason) as info:
            load_network(path)
        assert str(path) in str(info.value)
        with pytest.raises(WeightsFormatError):
            OnnxRuntimeNet(path)


def test_graph_that_departs_from_lc0_raises(variant_nets, tmp_path):
    """A known architecture with one op changed is refused, not silently misread."""
    net = variant_nets["cnn-conv-policy-wdl-mlh-se"][0]
    model = build_onnx_model(net)
    for node in model.graph.node:
        if node.name == "/block0/conv1/relu":
            node.op_type = "Sigmoid"
    path = tmp_path / "changed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(WeightsFormatError, match="sigmoid") as info:
        load_onnx(path)
    assert str(path) in str(info.value)
