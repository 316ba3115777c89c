"""Build a :class:`~leela_interp.network.net.LeelaNet` from a decoded lc0 network file, and load
one from an lc0 file (:func:`load_network`) or an ONNX export (:func:`load_onnx`).

Every size is read from the weights; every tensor is checked against the size the architecture
implies, and a missing or mis-sized tensor raises :class:`WeightsFormatError` naming the file and
the tensor. Batch norm is folded into the convolutions exactly as lc0 does at load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leela_interp.errors import ConfigError, WeightsFormatError
from leela_interp.identity import sha256_file
from leela_interp.network.cnn import InputConv, ResidualBlock
from leela_interp.network.heads import (AttentionPolicyHead, ClassicalPolicyHead, ConvPolicyHead,
                                        ValueHead)
from leela_interp.network.lc0 import weights as lc0w
from leela_interp.network.net import LeelaNet, ModelConfig
from leela_interp.network.nonlinear import NONE, SELU, default_activation, resolve
from leela_interp.network.transformer import Embedding, EncoderBlock, Smolgen, deepnorm_alpha

log = logging.getLogger(__name__)

_BN_EPS = 1e-5
#: Policy head names lc0 accepts, and the PolicyHeads field each one reads.
POLICY_HEADS = {"vanilla": "vanilla", "optimistic": "optimistic_st", "soft": "soft",
                "opponent": "opponent"}
VALUE_HEADS = ("winner", "q", "st")
#: The dtypes a network can run in (``model.dtype``), by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Reader:
    """Decodes layers of one file, checking sizes; errors name the file and the tensor."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, message: str) -> WeightsFormatError:
        return WeightsFormatError(f"{self.path}: {message}")

    def get(self, layer, what: str, shape: tuple[int, ...] | None = None,
            required: bool = True) -> np.ndarray | None:
        try:
            values = lc0w.decode_layer(layer)
        except WeightsFormatError as e:
            raise self.error(f"{what}: {e}") from e
        if values.size == 0:
            if required:
                raise self.error(f"missing tensor {what}")
            return None
        if shape is not None:
            if values.size != int(np.prod(shape)):
                raise self.error(f"tensor {what} has {values.size} values, expected "
                                 f"{int(np.prod(shape))} for shape {list(shape)}")
            values = values.reshape(shape)
        return values

    def size(self, layer, what: str) -> int:
        return int(self.get(layer, what).size)

    def conv(self, block, what: str, in_channels: int, kernel: int,
             out_channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode a ConvBlock and fold its batch norm, as lc0's ``BaseWeights::ConvBlock``."""
        w = self.get(block.weights, f"{what}.weights")
        bias = self.get(block.biases, f"{what}.biases", required=False)
        means = self.get(block.bn_means, f"{what}.bn_means", required=False)
        var = self.get(block.bn_stddivs, f"{what}.bn_stddivs", required=False)
        gammas = self.get(block.bn_gammas, f"{what}.bn_gammas", required=False)
        betas = self.get(block.bn_betas, f"{what}.bn_betas", required=False)
        n = out_channels or next((len(a) for a in (bias, means, betas) if a is not None), None)
        if n is None:
            n = w.size // (in_channels * kernel * kernel)
        if w.size != n * in_channels * kernel * kernel:
            raise self.error(f"tensor {what}.weights has {w.size} values, expected "
                             f"{n * in_channels * kernel * kernel} for shape "
                             f"[{n}, {in_channels}, {kernel}, {kernel}]")
        w = w.reshape(n, in_channels, kernel, kernel).copy()
        bias = np.zeros(n, np.float32) if bias is None else bias.copy()
        for name, a in (("biases", bias), ("bn_means", means), ("bn_stddivs", var),
                        ("bn_gammas", gammas), ("bn_betas", betas)):
            if a is not None and len(a) != n:
                raise self.error(f"tensor {what}.{name} has {len(a)} values, expected {n}")
        if means is not None:
            if var is None:
                raise self.error(f"missing tensor {what}.bn_stddivs")
            if betas is None:
                betas, gammas = np.zeros(n, np.float32), np.ones(n, np.float32)
            elif gammas is None:
                gammas = np.ones(n, np.float32)
            g = (gammas * (np.float32(1.0) / np.sqrt(var + np.float32(_BN_EPS)))).astype(
                np.float32)
            w *= g[:, None, None, None]
            bias = (betas - g * (means - bias)).astype(np.float32)
        return w, bias


def _set(module: nn.Module, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
    with torch.no_grad():
        if module.weight.shape != weight.shape:
            weight = weight.reshape(module.weight.shape)
        module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        if bias is not None:
            module.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))


def _linear(r: _Reader, linear: nn.Linear, w_layer, b_layer, what: str) -> None:
    out_f, in_f = linear.weight.shape
    _set(linear, r.get(w_layer, f"{what}_w", (out_f, in_f)),
         r.get(b_layer, f"{what}_b", (out_f,)) if b_layer is not None else None)


def _layer_norm(r: _Reader, ln: nn.LayerNorm, gammas, betas, what: str) -> None:
    n = ln.weight.shape[0]
    _set(ln, r.get(gammas, f"{what}_gammas", (n,)), r.get(betas, f"{what}_betas", (n,)))


def _encoder(r: _Reader, enc, what: str, *, d_model: int, n_heads: int, alpha: float, eps: float,
             smolgen_act: int, ffn_act: int, gen_per_head: int | None) -> EncoderBlock:
    d_attn = r.size(enc.mha.q_b, f"{what}.mha.q_b")
    d_ff = r.size(enc.ffn.dense1_b, f"{what}.ffn.dense1_b")
    if n_heads <= 0 or d_attn % n_heads:
        raise r.error(f"{what}: {d_attn} attention channels do not split into {n_heads} heads")
    smolgen = None
    if enc.mha.HasField("smolgen"):
        if gen_per_head is None:
            raise r.error(f"{what} has smolgen weights but the file has no smolgen_w")
        sg = enc.mha.smolgen
        compress = r.size(sg.compress, f"{what}.smolgen.compress") // d_model
        hidden = r.size(sg.dense1_b, f"{what}.smolgen.dense1_b")
        gen = r.size(sg.dense2_b, f"{what}.smolgen.dense2_b")
        if gen != gen_per_head * n_heads:
            raise r.error(f"{what}.smolgen.dense2_b has {gen} values, expected "
                          f"{gen_per_head * n_heads} (smolgen_w width x heads)")
        smolgen = Smolgen(d_model, n_heads, compress, hidden, gen, smolgen_act)
        _set(smolgen.compress, r.get(sg.compress, f"{what}.smolgen.compress", (compress, d_model)))
        _linear(r, smolgen.dense1, sg.dense1_w, sg.dense1_b, f"{what}.smolgen.dense1")
        _layer_norm(r, smolgen.ln1, sg.ln1_gammas, sg.ln1_betas, f"{what}.smolgen.ln1")
        _linear(r, smolgen.dense2, sg.dense2_w, sg.dense2_b, f"{what}.smolgen.dense2")
        _layer_norm(r, smolgen.ln2, sg.ln2_gammas, sg.ln2_betas, f"{what}.smolgen.ln2")
    block = EncoderBlock(d_model=d_model, d_attn=d_attn, n_heads=n_heads, d_ff=d_ff,
                         ffn_act=ffn_act, smolgen=smolgen, alpha=alpha, eps=eps)
    mha = enc.mha
    _linear(r, block.attn.q, mha.q_w, mha.q_b, f"{what}.mha.q")
    _linear(r, block.attn.k, mha.k_w, mha.k_b, f"{what}.mha.k")
    _linear(r, block.attn.v, mha.v_w, mha.v_b, f"{what}.mha.v")
    _linear(r, block.attn.out, mha.dense_w, mha.dense_b, f"{what}.mha.dense")
    _layer_norm(r, block.ln1, enc.ln1_gammas, enc.ln1_betas, f"{what}.ln1")
    _linear(r, block.mlp.dense1, enc.ffn.dense1_w, enc.ffn.dense1_b, f"{what}.ffn.dense1")
    _linear(r, block.mlp.dense2, enc.ffn.dense2_w, enc.ffn.dense2_b, f"{what}.ffn.dense2")
    _layer_norm(r, block.ln2, enc.ln2_gammas, enc.ln2_betas, f"{what}.ln2")
    return block


def _select_heads(r: _Reader, w, policy_head: str, value_head: str):
    """The PolicyHead / ValueHead messages to use, with lc0's fallbacks and defaults."""
    if policy_head not in POLICY_HEADS:
        raise WeightsFormatError(f"unknown policy head {policy_head!r}; lc0's names are "
                                 f"{list(POLICY_HEADS)}")
    if value_head not in VALUE_HEADS:
        raise WeightsFormatError(f"unknown value head {value_head!r}; lc0's names are "
                                 f"{list(VALUE_HEADS)}")
    if w.HasField("policy_heads"):
        present = [n for n, f in POLICY_HEADS.items()
                   if n == "vanilla" or w.policy_heads.HasField(f)]
        if policy_head not in present:
            raise r.error(f"policy head {policy_head!r} is not in this net; it has {present}")
        ph = getattr(w.policy_heads, POLICY_HEADS[policy_head])
        shared = (w.policy_heads if w.policy_heads.HasField("ip_pol_w") else w)
        pol = dict(head=ph, encoders=ph.pol_encoder, headcount=ph.pol_headcount,
                   ip_pol_w=ph.ip_pol_w if ph.HasField("ip_pol_w") else shared.ip_pol_w,
                   ip_pol_b=ph.ip_pol_b if ph.HasField("ip_pol_b") else shared.ip_pol_b)
    else:
        if policy_head != "vanilla":
            raise r.error(f"policy head {policy_head!r} is not in this net; it has ['vanilla']")
        pol = dict(head=w, encoders=w.pol_encoder, headcount=w.pol_headcount,
                   ip_pol_w=w.ip_pol_w, ip_pol_b=w.ip_pol_b)
    if w.HasField("value_heads"):
        present = [n for n in VALUE_HEADS if n == "winner" or w.value_heads.HasField(n)]
        if value_head not in present:
            raise r.error(f"value head {value_head!r} is not in this net; it has {present}")
        val = getattr(w.value_heads, value_head)
    else:
        if value_head != "winner":
            raise r.error(f"value head {value_head!r} is not in this net; it has ['winner']")
        val = w
    return pol, val


def build_network(net, *, path: str = "", sha256: str = "", policy_head: str | None = None,
                  value_head: str | None = None) -> LeelaNet:
    """Build the PyTorch module for a decoded, normalised ``Net`` (see ``lc0.weights.read_net``).

    Args:
        net: the ``Net`` protobuf.
        path, sha256: recorded on the module and used in error messages.
        policy_head, value_head: multi-head nets only; None = lc0's defaults (vanilla, winner).
    """
    r = _Reader(path or "<network>")
    fmt = lc0w.net_format(net)
    w = net.weights
    policy_head = policy_head or "vanilla"
    value_head = value_head or "winner"
    pol, val = _select_heads(r, w, policy_head, value_head)
    act = default_activation(fmt.default_activation)
    attn_body = fmt.attention_body
    policy_kind = {1: "classical", 2: "convolution", 3: "attention"}.get(fmt.policy)
    if policy_kind is None:
        raise r.error(f"unsupported policy format {fmt.describe()['policy']}")
    if fmt.value not in (1, 2):
        raise r.error(f"unsupported value format {fmt.describe()['value']}")
    details: dict[str, object] = {f"format.{k}": v for k, v in fmt.describe().items()}
    details["format.weights_encoding"] = "LINEAR16" if net.format.weights_encoding <= 1 else str(
        net.format.weights_encoding)
    details["min_version"] = (f"{net.min_version.major}.{net.min_version.minor}."
                              f"{net.min_version.patch}")
    smolgen_w = None

    if attn_body:
        if len(w.residual) > 0:
            raise r.error("hybrid nets (residual tower + attention body) are not supported")
        if fmt.input_embedding not in (1, 2):
            raise r.error(f"unsupported input embedding {fmt.describe()['input_embedding']}")
        n_layers = len(w.encoder)
        d_model = r.size(w.ip_emb_b, "ip_emb_b")
        n_heads = int(w.headcount)
        smolgen_act = resolve(fmt.smolgen_activation, act)
        ffn_act = resolve(fmt.ffn_activation, act)
        alpha = deepnorm_alpha(n_layers) if n_layers else 1.0
        dense = fmt.input_embedding == 2
        dense_pos = r.size(w.ip_emb_preproc_b, "ip_emb_preproc_b") // 64 if dense else None
        gating = w.HasField("ip_mult_gate") and w.HasField("ip_add_gate")
        emb_ff = r.size(w.ip_emb_ffn.dense1_b, "ip_emb_ffn.dense1_b") if dense else None
        embed = Embedding(d_model=d_model, dense_pos=dense_pos, act=act, ffn_act=ffn_act,
                          d_ff=emb_ff, gating=gating, alpha=alpha)
        if dense:
            _linear(r, embed.preproc, w.ip_emb_preproc_w, w.ip_emb_preproc_b, "ip_emb_preproc")
            _layer_norm(r, embed.ln, w.ip_emb_ln_gammas, w.ip_emb_ln_betas, "ip_emb_ln")
            _linear(r, embed.ffn.dense1, w.ip_emb_ffn.dense1_w, w.ip_emb_ffn.dense1_b,
                    "ip_emb_ffn.dense1")
            _linear(r, embed.ffn.dense2, w.ip_emb_ffn.dense2_w, w.ip_emb_ffn.dense2_b,
                    "ip_emb_ffn.dense2")
            _layer_norm(r, embed.ffn_ln, w.ip_emb_ffn_ln_gammas, w.ip_emb_ffn_ln_betas,
                        "ip_emb_ffn_ln")
        _linear(r, embed.linear, w.ip_emb_w, w.ip_emb_b, "ip_emb")
        if gating:  # stored [d_model][64]; the module holds [64][d_model]
            _set_param(embed.mult_gate, r.get(w.ip_mult_gate, "ip_mult_gate", (d_model, 64)).T)
            _set_param(embed.add_gate, r.get(w.ip_add_gate, "ip_add_gate", (d_model, 64)).T)
        gen_per_head = None
        if w.HasField("smolgen_w"):
            sw = r.get(w.smolgen_w, "smolgen_w")
            if sw.size % 4096:
                raise r.error(f"tensor smolgen_w has {sw.size} values, not a multiple of 4096")
            gen_per_head = sw.size // 4096
            smolgen_w = nn.Linear(gen_per_head, 4096, bias=False)
            _set(smolgen_w, sw.reshape(4096, gen_per_head))
        blocks = [_encoder(r, enc, f"encoder[{i}]", d_model=d_model, n_heads=n_heads,
                           alpha=alpha, eps=1e-3 if dense else 1e-6, smolgen_act=smolgen_act,
                           ffn_act=ffn_act, gen_per_head=gen_per_head)
                  for i, enc in enumerate(w.encoder)]
        details.update({"d_ff": blocks[0].mlp.dense1.out_features if blocks else 0,
                        "smolgen": smolgen_w is not None, "embedding":
                        "PE_DENSE" if dense else "PE_MAP", "gating": gating})
        channels = d_model
    else:
        if len(w.encoder) > 0:
            raise r.error("encoder layers on a convolutional network format")
        channels = len(r.conv(w.input, "input", 112, 3)[1])
        n_layers, d_model, n_heads = len(w.residual), channels, 0
        embed = InputConv(channels, act)
        _set(embed.conv, *r.conv(w.input, "input", 112, 3))
        blocks = []
        for i, res in enumerate(w.residual):
            se = r.size(res.se.b1, f"residual[{i}].se.b1") if res.HasField("se") else None
            block = ResidualBlock(channels, se, act)
            _set(block.conv1, *r.conv(res.conv1, f"residual[{i}].conv1", channels, 3, channels))
            _set(block.conv2, *r.conv(res.conv2, f"residual[{i}].conv2", channels, 3, channels))
            if se is not None:
                s = res.se
                _set(block.se.fc1, r.get(s.w1, f"residual[{i}].se.w1", (se, channels)),
                     r.get(s.b1, f"residual[{i}].se.b1", (se,)))
                _set(block.se.fc2, r.get(s.w2, f"residual[{i}].se.w2", (2 * channels, se)),
                     r.get(s.b2, f"residual[{i}].se.b2", (2 * channels,)))
            blocks.append(block)
        details["se"] = any(res.HasField("se") for res in w.residual)

    # Policy head.
    head = pol["head"]
    if policy_kind == "attention":
        embed_p = r.size(pol["ip_pol_b"], "ip_pol_b")
        d_policy = r.size(head.ip2_pol_b, "ip2_pol_b")
        encoders = [_encoder(r, enc, f"pol_encoder[{i}]", d_model=embed_p,
                             n_heads=int(pol["headcount"]), alpha=1.0, eps=1e-6,
                             smolgen_act=resolve(fmt.smolgen_activation, act) if attn_body
                             else NONE,
                             ffn_act=resolve(fmt.ffn_activation, act) if attn_body else SELU,
                             gen_per_head=smolgen_w.in_features if smolgen_w else None)
                    for i, enc in enumerate(pol["encoders"])]
        policy = AttentionPolicyHead(channels=channels, embed=embed_p, d_policy=d_policy,
                                     act=act if attn_body else SELU, encoders=encoders,
                                     conv_body=not attn_body)
        _linear(r, policy.embed, pol["ip_pol_w"], pol["ip_pol_b"], "ip_pol")
        _linear(r, policy.q, head.ip2_pol_w, head.ip2_pol_b, "ip2_pol")
        _linear(r, policy.k, head.ip3_pol_w, head.ip3_pol_b, "ip3_pol")
        _set(policy.promotion, r.get(head.ip4_pol_w, "ip4_pol_w", (4, d_policy)))
    elif attn_body:
        raise r.error(f"{policy_kind} policy on an attention body is not supported by lc0")
    elif policy_kind == "convolution":
        w1, b1 = r.conv(head.policy1, "policy1", channels, 3, channels)
        w2, b2 = r.conv(head.policy, "policy", channels, 3)
        if w2.shape[0] < 73:
            raise r.error(f"convolution policy has {w2.shape[0]} planes, needs at least 73")
        policy = ConvPolicyHead(channels, w2.shape[0], act)
        _set(policy.conv1, w1, b1)
        _set(policy.conv2, w2, b2)
    else:
        wp, bp = r.conv(head.policy, "policy", channels, 1)
        policy = ClassicalPolicyHead(channels, wp.shape[0], act)
        _set(policy.conv, wp, bp)
        _linear(r, policy.dense, pol["ip_pol_w"], pol["ip_pol_b"], "ip_pol")

    # Value and moves-left heads.
    wdl = fmt.value == 2
    value = _value_like(r, val, "val", attn_body, channels, 3 if wdl else 1, act)
    mlh = _value_like(r, w, "mov", attn_body, channels, 1, act) if fmt.moves_left == 1 else None

    config = ModelConfig(
        body="transformer" if attn_body else "cnn", n_layers=n_layers, d_model=d_model,
        n_heads=n_heads, input_format=fmt.input_format, policy=policy_kind,
        value="wdl" if wdl else "classical", moves_left=mlh is not None,
        policy_head=policy_head, value_head=value_head, details=details)
    return LeelaNet(config=config, embed=embed, blocks=blocks, policy_head=policy,
                    value_head=value, mlh_head=mlh, smolgen_w=smolgen_w, sha256=sha256,
                    path=path)


def _set_param(param: nn.Parameter, values: np.ndarray) -> None:
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(values)))


def _value_like(r: _Reader, msg, kind: str, attn_body: bool, channels: int, outputs: int,
                act: int) -> ValueHead:
    """Value (``kind="val"``) or moves-left (``kind="mov"``) head from ``msg``'s fields."""
    what = "value" if kind == "val" else "moves_left"
    if attn_body:
        embed = r.size(getattr(msg, f"ip_{kind}_b"), f"ip_{kind}_b")
    else:
        ew, eb = r.conv(getattr(msg, what), what, channels, 1)
        embed = ew.shape[0]
    hidden = r.size(getattr(msg, f"ip1_{kind}_b"), f"ip1_{kind}_b")
    head = ValueHead(channels=channels, embed=embed, hidden=hidden, outputs=outputs, act=act,
                     conv_body=not attn_body)
    if attn_body:
        _linear(r, head.embed, getattr(msg, f"ip_{kind}_w"), getattr(msg, f"ip_{kind}_b"),
                f"ip_{kind}")
    else:
        _set(head.embed, ew, eb)
    _linear(r, head.dense1, getattr(msg, f"ip1_{kind}_w"), getattr(msg, f"ip1_{kind}_b"),
            f"ip1_{kind}")
    _linear(r, head.dense2, getattr(msg, f"ip2_{kind}_w"), getattr(msg, f"ip2_{kind}_b"),
            f"ip2_{kind}")
    return head


def load_network(path: str | Path, *, policy_head: str | None = None,
                 value_head: str | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype | str | None = None) -> LeelaNet:
    """Load an lc0 network file as a native PyTorch module (in eval mode, gradients off).

    Args:
        path: lc0 ``.pb.gz`` / ``.pb`` file, or an ``lc0 leela2onnx`` ``.onnx`` export.
        policy_head: ``vanilla`` (default), ``optimistic``, ``soft`` or ``opponent``.
        value_head: ``winner`` (default), ``q`` or ``st``.
        device: torch device; None = CPU.
        dtype: ``torch.float32`` (default), ``bfloat16`` or ``float16`` (or their names): the
            weights' and activations' dtype; the outputs (:class:`LeelaOutput`) are float32.

    Raises:
        WeightsFormatError: the file is unreadable, corrupt or unsupported (message names the
            file and the reason), or the requested head does not exist.
        ConfigError: ``dtype`` is not one of :data:`DTYPES`.
    """
    name = {v: k for k, v in DTYPES.items()}.get(dtype, dtype) if dtype is not None else "float32"
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not supported; choose one of {list(DTYPES)}")
    dtype = DTYPES[name]
    path = Path(path)
    if path.suffix == ".onnx":
        if policy_head not in (None, "vanilla") or value_head not in (None, "winner"):
            raise WeightsFormatError(
                f"{path}: an ONNX export holds one policy and one value head; choose heads "
                f"when exporting (got policy_head={policy_head!r}, value_head={value_head!r})")
        model = load_onnx(path)
    else:
        model = build_network(lc0w.read_net(path), path=str(path), sha256=sha256_file(path),
                              policy_head=policy_head, value_head=value_head)
    model = model.to(device=device or "cpu", dtype=dtype)
    if model.config.body == "cnn":
        # Channels-last conv weights (and inputs, see LeelaNet.forward): oneDNN runs these
        # small 8x8 convolutions about twice as fast, and token views of the maps are contiguous.
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    model.requires_grad_(False)
    return model


def load_onnx(path: str | Path, *, input_format: int | None = None,
              pb_path: str | Path | None = None) -> LeelaNet:
    """Load an ``lc0 leela2onnx`` export (or an :func:`~leela_interp.network.onnx.export_onnx` file)
    as a native module.

    The result is the module :func:`leela_interp.load_network` builds from the ``.pb.gz`` the
    export was made from (in eval mode, gradients off), with ``path`` and ``sha256`` those of
    the ``.onnx`` file. See :mod:`leela_interp.network.onnx` for how the graph is read and for the
    older converters' conventions (those that the native module computes as lc0 does, not as the
    export did, are logged and listed in ``net.config.details["onnx.notes"]``).

    Args:
        path: the ``.onnx`` file.
        input_format: the net's lc0 input format (1-5, 132, 133). ONNX exports do not record
            it; when None it is taken from ``pb_path``, else from the file's ``input_format``
            metadata (written by :func:`export_onnx`), else from a ``.pb.gz`` / ``.pb`` with
            the same stem next to the file, else 1 with a logged warning.
        pb_path: the lc0 network file the export was made from (only its input format is read).

    Raises:
        WeightsFormatError: the file is unreadable, not an ONNX model, or not an lc0 export of
            an architecture the native module supports; the message names the file.
        ConfigError: ``input_format`` is not an lc0 input format.
    """
    from leela_interp.network.onnx import reader

    path = Path(path)
    model = reader.read_model(path)
    net_proto, notes, source = reader.read_graph(model, path, input_format, pb_path)
    for note in notes:
        log.warning("%s: %s", path, note)
    net = build_network(net_proto, path=str(path), sha256=sha256_file(path))
    net.config.details.update({
        "source": "onnx",
        "format.weights_encoding": "FLOAT32 (read from ONNX)",
        "onnx.producer": f"{model.producer_name} {model.producer_version}".strip(),
        "onnx.opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          default=0),
        "onnx.input_format_from": source,
        "onnx.notes": notes,
    })
    net.eval()
    net.requires_grad_(False)
    return net
