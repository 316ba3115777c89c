"""Seeded random networks in lc0's own file format, in every architecture variant.

They are the test suite's fixtures (checked against lc0's engine), the random-initialised
baseline of the probes, and the full-size shapes for benchmarks. The same spec and seed always
give the same file.

>>> spec = RandomNetSpec(body="transformer", d_model=32, layers=2, heads=4, d_ff=48)
>>> net = random_net(spec, seed=0)
>>> len(net.weights.encoder), net.weights.headcount
(2, 4)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leela_interp.errors import ConfigError
from leela_interp.network.lc0.proto import ENUMS, Net
from leela_interp.network.lc0.weights import MAGIC, encode_layer, write_net

_ACT = ENUMS["NetworkFormat.ActivationFunction"]
_NETWORKS = ENUMS["NetworkFormat.NetworkStructure"]


@dataclass(frozen=True)
class RandomNetSpec:
    """Architecture of a random network. Defaults give a small SE-CNN with conv policy and WDL.

    Transformer defaults follow the BT-style (PE_DENSE + smolgen) layout at a small size; set
    ``d_model=768, layers=15, heads=24, d_ff=1024`` for the T82 / BT3 shape.
    """

    body: str = "cnn"
    """``"cnn"`` or ``"transformer"``."""
    input_format: int = 1
    """lc0 ``InputFormat`` value (1-5, 132, 133)."""
    policy: str = "convolution"
    """``"convolution"``, ``"classical"`` (cnn only) or ``"attention"``."""
    value: str = "wdl"
    """``"wdl"`` or ``"classical"``."""
    moves_left: bool = True
    """Write a moves-left head."""
    default_activation: str = "relu"
    """``"relu"`` or ``"mish"``."""
    # CNN
    channels: int = 16
    blocks: int = 2
    se_channels: int = 4
    """SE unit width; 0 = no SE units."""
    batch_norm: bool = True
    """Write un-folded batch-norm statistics (as old training code did)."""
    # Transformer
    d_model: int = 32
    layers: int = 2
    heads: int = 4
    d_ff: int = 48
    embedding: str = "PE_DENSE"
    """``"PE_MAP"`` or ``"PE_DENSE"``."""
    dense_pos: int = 4
    """PE_DENSE: positional channels per square (``ip_emb_preproc_b`` has 64x this)."""
    emb_ffn: int = 0
    """PE_DENSE embedding FFN width; 0 = ``d_ff``."""
    gating: bool = True
    smolgen: bool = True
    smolgen_compress: int = 4
    smolgen_hidden: int = 32
    smolgen_gen: int = 16
    """Smolgen generator width per head (``smolgen_w`` is ``[4096, smolgen_gen]``)."""
    smolgen_activation: str = "DEFAULT"
    """``ActivationFunction`` name without the prefix, e.g. ``"SWISH"``; DEFAULT = default act."""
    ffn_activation: str = "DEFAULT"
    network: str = "ATTENTIONBODY_WITH_HEADFORMAT"
    """Structure written for transformers: ``ATTENTIONBODY_WITH_HEADFORMAT``,
    ``ATTENTIONBODY_WITH_MULTIHEADFORMAT`` or ``AB_LEGACY_WITH_MULTIHEADFORMAT``."""
    multihead: bool = False
    """Write ``policy_heads`` (vanilla, optimistic, soft) and ``value_heads`` (winner, q, st)."""
    # Heads
    policy_embed: int = 0
    """Attention policy embedding width; 0 = d_model (or channels)."""
    policy_d: int = 16
    policy_encoders: int = 0
    """Encoder layers inside the attention policy head."""
    policy_heads_count: int = 2
    value_channels: int = 8
    value_hidden: int = 32
    mlh_channels: int = 4
    mlh_hidden: int = 16
    encoding: str = "LINEAR16"
    """Layer encoding: ``LINEAR16``, ``FLOAT16``, ``BFLOAT16`` or ``FLOAT32``."""


class _Writer:
    def __init__(self, spec: RandomNetSpec, seed: int) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(seed)

    def put(self, layer, values: np.ndarray) -> None:
        layer.CopyFrom(encode_layer(values, self.spec.encoding))

    def dense(self, msg, w_field: str, b_field: str | None, out_f: int, in_f: int) -> None:
        self.put(getattr(msg, w_field), self.rng.normal(0, 1 / np.sqrt(in_f), (out_f, in_f)))
        if b_field:
            self.put(getattr(msg, b_field), self.rng.normal(0, 0.1, out_f))

    def norm(self, msg, prefix: str, n: int) -> None:
        self.put(getattr(msg, f"{prefix}_gammas"), 1 + self.rng.normal(0, 0.1, n))
        self.put(getattr(msg, f"{prefix}_betas"), self.rng.normal(0, 0.1, n))

    def conv(self, block, out_c: int, in_c: int, k: int) -> None:
        fan_in = in_c * k * k
        self.put(block.weights, self.rng.normal(0, 1 / np.sqrt(fan_in), (out_c, in_c, k, k)))
        if self.spec.batch_norm:
            self.put(block.bn_means, self.rng.normal(0, 0.1, out_c))
            self.put(block.bn_stddivs, self.rng.uniform(0.5, 1.5, out_c))
            self.put(block.bn_gammas, 1 + self.rng.normal(0, 0.1, out_c))
            self.put(block.bn_betas, self.rng.normal(0, 0.1, out_c))
        else:
            self.put(block.biases, self.rng.normal(0, 0.1, out_c))

    def encoder(self, enc, d_model: int, d_ff: int, heads: int, smolgen: bool) -> None:
        s = self.spec
        for name in ("q", "k", "v"):
            self.dense(enc.mha, f"{name}_w", f"{name}_b", d_model, d_model)
        self.dense(enc.mha, "dense_w", "dense_b", d_model, d_model)
        self.norm(enc, "ln1", d_model)
        self.dense(enc.ffn, "dense1_w", "dense1_b", d_ff, d_model)
        self.dense(enc.ffn, "dense2_w", "dense2_b", d_model, d_ff)
        self.norm(enc, "ln2", d_model)
        if smolgen:
            sg = enc.mha.smolgen
            self.put(sg.compress, self.rng.normal(0, 1 / np.sqrt(d_model),
                                                  (s.smolgen_compress, d_model)))
            self.dense(sg, "dense1_w", "dense1_b", s.smolgen_hidden, 64 * s.smolgen_compress)
            self.norm(sg, "ln1", s.smolgen_hidden)
            self.dense(sg, "dense2_w", "dense2_b", s.smolgen_gen * heads, s.smolgen_hidden)
            self.norm(sg, "ln2", s.smolgen_gen * heads)

    def value_like(self, msg, kind: str, conv_body: bool, channels: int, embed: int,
                   hidden: int, outputs: int) -> None:
        if conv_body:
            self.conv(getattr(msg, "value" if kind == "val" else "moves_left"), embed, channels, 1)
        else:
            self.dense(msg, f"ip_{kind}_w", f"ip_{kind}_b", embed, channels)
        self.dense(msg, f"ip1_{kind}_w", f"ip1_{kind}_b", hidden, 64 * embed)
        self.dense(msg, f"ip2_{kind}_w", f"ip2_{kind}_b", outputs, hidden)

    def attention_policy(self, head, shared, channels: int, with_embedding: bool) -> None:
        s = self.spec
        embed = s.policy_embed or channels
        if with_embedding:
            self.dense(shared, "ip_pol_w", "ip_pol_b", embed, channels)
        for _ in range(s.policy_encoders):
            self.encoder(head.pol_encoder.add(), embed, embed, s.policy_heads_count, False)
        if s.policy_encoders:
            head.pol_headcount = s.policy_heads_count
        self.dense(head, "ip2_pol_w", "ip2_pol_b", s.policy_d, embed)
        self.dense(head, "ip3_pol_w", "ip3_pol_b", s.policy_d, embed)
        self.put(head.ip4_pol_w, self.rng.normal(0, 1 / np.sqrt(s.policy_d), (4, s.policy_d)))


def random_net(spec: RandomNetSpec, seed: int = 0) -> Net:
    """A ``Net`` protobuf with seeded random weights of architecture ``spec``.

    Raises:
        ConfigError: an inconsistent spec (e.g. a classical policy on a transformer).
    """
    s = spec
    if s.body not in ("cnn", "transformer"):
        raise ConfigError(f"body must be 'cnn' or 'transformer', got {s.body!r}")
    if s.body == "transformer" and s.policy != "attention":
        raise ConfigError(f"a transformer needs policy='attention', got {s.policy!r}")
    if s.body == "transformer" and s.d_model % s.heads:
        raise ConfigError(f"d_model={s.d_model} does not split into heads={s.heads}")
    wr = _Writer(spec, seed)
    net = Net(magic=MAGIC)
    minor = 33 if s.encoding != "LINEAR16" else (30 if s.body == "transformer" else 21)
    net.min_version.major, net.min_version.minor, net.min_version.patch = 0, minor, 0
    net.format.weights_encoding = 1
    nf = net.format.network_format
    nf.input = s.input_format
    nf.output = 2 if s.value == "wdl" else 1
    nf.policy = {"classical": 1, "convolution": 2, "attention": 3}[s.policy]
    nf.value = 2 if s.value == "wdl" else 1
    nf.moves_left = 1 if s.moves_left else 0
    nf.default_activation = 1 if s.default_activation == "mish" else 0
    w = net.weights
    conv_body = s.body == "cnn"
    if conv_body:
        nf.network = _NETWORKS["NETWORK_SE_WITH_HEADFORMAT" if s.se_channels else
                               "NETWORK_CLASSICAL_WITH_HEADFORMAT"]
        c = s.channels
        wr.conv(w.input, c, 112, 3)
        for _ in range(s.blocks):
            res = w.residual.add()
            wr.conv(res.conv1, c, c, 3)
            wr.conv(res.conv2, c, c, 3)
            if s.se_channels:
                wr.dense(res.se, "w1", "b1", s.se_channels, c)
                wr.dense(res.se, "w2", "b2", 2 * c, s.se_channels)
    else:
        nf.network = _NETWORKS[f"NETWORK_{s.network}"]
        nf.smolgen_activation = _ACT[f"ACTIVATION_{s.smolgen_activation}"]
        nf.ffn_activation = _ACT[f"ACTIVATION_{s.ffn_activation}"]
        nf.input_embedding = {"PE_MAP": 1, "PE_DENSE": 2}[s.embedding]
        c = s.d_model
        if s.embedding == "PE_DENSE":
            wr.dense(w, "ip_emb_preproc_w", "ip_emb_preproc_b", 64 * s.dense_pos, 64 * 12)
            wr.dense(w, "ip_emb_w", "ip_emb_b", c, 112 + s.dense_pos)
            wr.norm(w, "ip_emb_ln", c)
            emb_ff = s.emb_ffn or s.d_ff
            wr.dense(w.ip_emb_ffn, "dense1_w", "dense1_b", emb_ff, c)
            wr.dense(w.ip_emb_ffn, "dense2_w", "dense2_b", c, emb_ff)
            wr.norm(w, "ip_emb_ffn_ln", c)
        else:
            wr.dense(w, "ip_emb_w", "ip_emb_b", c, 112 + 64)
        if s.gating:
            wr.put(w.ip_mult_gate, 1 + wr.rng.normal(0, 0.1, (c, 64)))
            wr.put(w.ip_add_gate, wr.rng.normal(0, 0.1, (c, 64)))
        w.headcount = s.heads
        for _ in range(s.layers):
            wr.encoder(w.encoder.add(), c, s.d_ff, s.heads, s.smolgen)
        if s.smolgen:
            wr.put(w.smolgen_w, wr.rng.normal(0, 1 / np.sqrt(s.smolgen_gen),
                                              (4096, s.smolgen_gen)))
    # Heads.
    wdl_out = 3 if s.value == "wdl" else 1
    if s.multihead:
        if s.policy != "attention":
            raise ConfigError("multi-head nets need an attention policy")
        wr.dense(w.policy_heads, "ip_pol_w", "ip_pol_b", s.policy_embed or c, c)
        for name in ("vanilla", "optimistic_st", "soft"):
            wr.attention_policy(getattr(w.policy_heads, name), None, c, with_embedding=False)
        for name in ("winner", "q", "st"):
            wr.value_like(getattr(w.value_heads, name), "val", conv_body, c, s.value_channels,
                          s.value_hidden, wdl_out)
    else:
        if s.policy == "attention":
            wr.attention_policy(w, w, c, with_embedding=True)
        elif s.policy == "convolution":
            wr.conv(w.policy1, c, c, 3)
            wr.conv(w.policy, 80, c, 3)
        else:
            wr.conv(w.policy, s.value_channels, c, 1)
            wr.dense(w, "ip_pol_w", "ip_pol_b", 1858, 64 * s.value_channels)
        wr.value_like(w, "val", conv_body, c, s.value_channels, s.value_hidden, wdl_out)
    if s.moves_left:
        wr.value_like(w, "mov", conv_body, c, s.mlh_channels, s.mlh_hidden, 1)
    return net


def write_random_net(path: str | Path, spec: RandomNetSpec | None = None, seed: int = 0,
                     **overrides) -> Path:
    """Write ``random_net(spec, seed)`` to ``path`` (``.pb.gz``; ``.pb`` for uncompressed).

    Keyword overrides replace fields of ``spec`` (or of the default spec).
    """
    spec = dataclasses.replace(spec or RandomNetSpec(), **overrides)
    return write_net(random_net(spec, seed), path)
