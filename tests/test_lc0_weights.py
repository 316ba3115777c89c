"""Reading, writing and validating lc0 network files (no lc0 engine needed)."""

import gzip

import numpy as np
import pytest

from leela_interp import WeightsFormatError, load_network
from leela_interp.network.lc0.proto import Net
from leela_interp.network.lc0.random_net import RandomNetSpec, random_net, write_random_net
from leela_interp.network.lc0.weights import (decode_layer, encode_layer, net_format, read_net,
                                              write_net)


@pytest.fixture()
def cnn_path(tmp_path):
    return write_random_net(tmp_path / "cnn.pb.gz", seed=1)


def _rewrite(src, dst, edit):
    net = Net.FromString(gzip.decompress(src.read_bytes()))
    edit(net)
    return write_net(net, dst)


# --- layer encodings ------------------------------------------------------------------------

@pytest.mark.parametrize("encoding,tol", [("FLOAT16", 1e-3), ("BFLOAT16", 4e-3),
                                          ("FLOAT32", 0.0)])
def test_layer_round_trip(encoding, tol):
    values = np.random.default_rng(0).normal(0, 1, 1000).astype(np.float32)
    decoded = decode_layer(encode_layer(values, encoding))
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    assert np.max(np.abs(decoded - values) / np.maximum(1, np.abs(values))) <= tol


def test_linear16_round_trip_within_half_a_step():
    values = np.random.default_rng(0).normal(0, 1, 1000).astype(np.float32)
    decoded = decode_layer(encode_layer(values, "LINEAR16"))
    step = (values.max() - values.min()) / 65535
    assert np.max(np.abs(decoded - values)) <= 0.5 * step + 1e-6


def test_float_encodings_are_exact_for_representable_values():
    halves = np.array([0.5, -2.0, 1.25, 0.0, 256.0, -0.09375], np.float32)
    assert np.array_equal(decode_layer(encode_layer(halves, "FLOAT16")), halves)
    assert np.array_equal(decode_layer(encode_layer(halves, "BFLOAT16")), halves)


def test_linear16_decodes_constant_layers_exactly():
    for c in (0.0, 1.5, -3.0):
        assert np.array_equal(decode_layer(encode_layer(np.full(7, c), "LINEAR16")),
                              np.full(7, c, np.float32))


def test_linear16_uses_lc0_formula():
    layer = encode_layer(np.array([0.0, 1.0]), "LINEAR16")
    layer.min_val, layer.max_val = -1.0, 3.0
    layer.params = np.array([0, 65535, 32768], "<u2").tobytes()
    expected = np.float32([0, 65535, 32768]) / np.float32(65535) * np.float32(4) + np.float32(-1)
    assert np.array_equal(decode_layer(layer), expected)


@pytest.mark.parametrize("encoding", ["FLOAT16", "BFLOAT16", "FLOAT32"])
def test_nets_in_every_encoding_load_and_agree(tmp_path, encoding):
    import torch

    spec = RandomNetSpec(body="transformer", policy="attention", d_model=16, layers=1, heads=2,
                         d_ff=16)
    ref = load_network(write_random_net(tmp_path / "a.pb.gz", spec, encoding="FLOAT32"))
    other = load_network(write_random_net(tmp_path / "b.pb.gz", spec, encoding=encoding))
    planes = torch.rand(3, 112, 8, 8).round()
    a, b = ref(planes), other(planes)
    tol = {"FLOAT16": 2e-2, "BFLOAT16": 2e-1, "FLOAT32": 0}[encoding]
    assert torch.allclose(a.policy_logits, b.policy_logits, atol=tol, rtol=0)


def test_uncompressed_pb_reads_like_gzip(tmp_path):
    net = random_net(RandomNetSpec(), seed=3)
    a, b = write_net(net, tmp_path / "n.pb.gz"), write_net(net, tmp_path / "n.pb")
    assert read_net(a) == read_net(b)
    assert b.read_bytes()[:2] != b"\x1f\x8b"


def test_random_nets_are_reproducible():
    spec = RandomNetSpec(body="transformer", policy="attention")
    assert random_net(spec, 5).SerializeToString() == random_net(spec, 5).SerializeToString()
    assert random_net(spec, 5).SerializeToString() != random_net(spec, 6).SerializeToString()


# --- format normalisation (lc0's FixOlderWeightsFile) -------------------------------------

def test_missing_network_format_becomes_classical(cnn_path, tmp_path):
    p = _rewrite(cnn_path, tmp_path / "old.pb.gz", lambda n: n.format.ClearField("network_format"))
    fmt = net_format(read_net(p))
    assert (fmt.input_format, fmt.network, fmt.policy, fmt.value) == (1, 3, 1, 1)


@pytest.mark.parametrize("old,new", [(1, 3), (2, 4)])
def test_old_network_structures_are_rewritten(cnn_path, tmp_path, old, new):
    def edit(n):
        n.format.network_format.network = old

    fmt = net_format(read_net(_rewrite(cnn_path, tmp_path / "old.pb.gz", edit)))
    assert (fmt.network, fmt.policy, fmt.value) == (new, 1, 1)


def test_old_protobuf_smolgen_net_gets_lc0_activations(tmp_path):
    spec = RandomNetSpec(body="transformer", policy="attention", smolgen=True)
    src = write_random_net(tmp_path / "t.pb.gz", spec)

    def edit(n):
        nf = n.format.network_format
        nf.network = 4  # SE_WITH_HEADFORMAT, as attention nets were saved before the enum
        nf.ClearField("input_embedding")
        nf.ClearField("ffn_activation")
        nf.ClearField("smolgen_activation")

    fmt = net_format(read_net(_rewrite(src, tmp_path / "o.pb.gz", edit)))
    assert fmt.network == 6 and fmt.ffn_activation == 8 and fmt.smolgen_activation == 7
    assert fmt.input_embedding == 1  # PE_MAP when unset


def test_ab_legacy_and_flagged_multihead_are_rewritten(tmp_path):
    legacy = write_random_net(tmp_path / "l.pb.gz", body="transformer", policy="attention",
                              multihead=True, network="AB_LEGACY_WITH_MULTIHEADFORMAT")
    assert net_format(read_net(legacy)).network == 7
    flagged = write_random_net(tmp_path / "f.pb.gz", body="transformer", policy="attention",
                               multihead=True, embedding="PE_MAP")
    fmt = net_format(read_net(flagged))
    assert fmt.network == 7 and fmt.input_embedding == 2


# --- bad input: every error names the file and the reason ---------------------------------

def _raises(path, *fragments):
    with pytest.raises(WeightsFormatError) as info:
        load_network(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_truncated_gzip(cnn_path, tmp_path):
    bad = tmp_path / "truncated.pb.gz"
    bad.write_bytes(cnn_path.read_bytes()[:-100])
    _raises(bad, "truncated or corrupt gzip")


def test_corrupt_gzip(cnn_path, tmp_path):
    raw = bytearray(cnn_path.read_bytes())
    raw[40:60] = b"\x00" * 20
    bad = tmp_path / "corrupt.pb.gz"
    bad.write_bytes(bytes(raw))
    _raises(bad, "corrupt gzip")


def test_wrong_magic(cnn_path, tmp_path):
    def edit(n):
        n.magic = 0x1234

    _raises(_rewrite(cnn_path, tmp_path / "magic.pb.gz", edit), "bad magic 0x1234")


def test_text_format(tmp_path):
    bad = tmp_path / "text.txt.gz"
    bad.write_bytes(gzip.compress(b"2\n0.1 0.2 0.3\n"))
    _raises(bad, "text-format weights")


def test_not_a_protobuf(tmp_path):
    bad = tmp_path / "junk.pb"
    bad.write_bytes(b"\xff\xff\xff\xff garbage that is no protobuf")
    _raises(bad, "not an lc0 protobuf network")


def test_newer_min_version(cnn_path, tmp_path):
    def edit(n):
        n.min_version.minor = 99

    _raises(_rewrite(cnn_path, tmp_path / "new.pb.gz", edit), "needs lc0 >= 0.99.0")


def test_rpe_weights(tmp_path):
    src = write_random_net(tmp_path / "t.pb.gz", body="transformer", policy="attention")

    def edit(n):
        n.weights.encoder[1].mha.rpe_q.CopyFrom(encode_layer(np.ones(8)))

    _raises(_rewrite(src, tmp_path / "rpe.pb.gz", edit), "encoder layer 1 has RPE weights")


def test_missing_tensor(tmp_path):
    src = write_random_net(tmp_path / "t.pb.gz", body="transformer", policy="attention")

    def edit(n):
        n.weights.encoder[0].mha.ClearField("k_w")

    _raises(_rewrite(src, tmp_path / "missing.pb.gz", edit), "missing tensor encoder[0].mha.k_w")


def test_mis_sized_tensor(cnn_path, tmp_path):
    def edit(n):
        n.weights.residual[1].conv2.bn_means.CopyFrom(encode_layer(np.ones(5)))

    _raises(_rewrite(cnn_path, tmp_path / "size.pb.gz", edit),
            "residual[1].conv2.bn_means has 5 values, expected 16")


def test_mis_sized_dense_tensor(tmp_path):
    src = write_random_net(tmp_path / "t.pb.gz", body="transformer", policy="attention")

    def edit(n):
        n.weights.encoder[0].ffn.dense2_w.CopyFrom(encode_layer(np.ones(10)))

    _raises(_rewrite(src, tmp_path / "size.pb.gz", edit),
            "tensor encoder[0].ffn.dense2_w has 10 values, expected 1536")

    def bias(n):
        n.weights.encoder[0].ffn.dense2_b.CopyFrom(encode_layer(np.ones(10)))

    _raises(_rewrite(src, tmp_path / "bias.pb.gz", bias),
            "tensor encoder[0].ffn.dense2_b has 10 values, expected 32")


def test_onnx_only_net(tmp_path):
    net = Net(magic=0x1C0)
    net.onnx_model.model = b"onnx"
    _raises(write_net(net, tmp_path / "onnx.pb.gz"), "ONNX model")


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.pb.gz", "cannot read network file")


def test_unknown_heads(tmp_path):
    p = write_random_net(tmp_path / "m.pb.gz", body="transformer", policy="attention",
                         multihead=True)
    with pytest.raises(WeightsFormatError, match="unknown policy head 'greedy'"):
        load_network(p, policy_head="greedy")
    plain = write_random_net(tmp_path / "p.pb.gz", body="transformer", policy="attention")
    with pytest.raises(WeightsFormatError, match=r"value head 'q' is not in this net"):
        load_network(plain, value_head="q")
