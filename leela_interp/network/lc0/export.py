"""Write a native :class:`~leela_interp.network.net.LeelaNet` back as an lc0 network file.

The inverse of :func:`leela_interp.network.loading.build_network`: every module parameter goes
to the ``Net`` field the loader read it from, in lc0's layout (dense weights ``[out][in]``,
convolutions OIHW, gates ``[d_model][64]``, ``smolgen_w`` ``[4096][gen]``). A trained module
(e.g. from ``scripts/train.py``) thus becomes a file that lc0 itself can play with.

What is written:

* attention body (PE_MAP or PE_DENSE embedding, optional gating, smolgen, embedding FFN) as
  ``ATTENTIONBODY_WITH_HEADFORMAT``; convolutional body (with or without SE units) as
  ``SE_WITH_HEADFORMAT`` / ``CLASSICAL_WITH_HEADFORMAT``, with batch norm already folded
  (biases only, no statistics);
* one policy head (attention, convolution or classical) and one value head (WDL or
  classical), and the moves-left head if present. A module built from a multi-head file holds
  only its selected heads, so its export is a single-head file with those heads;
* activations as explicit ``ActivationFunction`` values (smolgen and FFN), the body's default
  activation as ``DefaultActivation`` (only ReLU and Mish exist there).

Round trip: with ``encoding="FLOAT32"`` ``build_network(network_to_proto(net))`` reproduces the
module bit for bit; ``LINEAR16`` (lc0's usual encoding, half the size) quantises every tensor
to 16 bits between its own min and max.

>>> from leela_interp.network.lc0.random_net import RandomNetSpec, random_net
>>> from leela_interp.network.loading import build_network
>>> net = build_network(random_net(RandomNetSpec(body="transformer", policy="attention")))
>>> proto = network_to_proto(net, encoding="FLOAT32")
>>> len(proto.weights.encoder), proto.weights.headcount
(2, 4)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from leela_interp.errors import WeightsFormatError
from leela_interp.network.lc0.proto import Net
from leela_interp.network.lc0.weights import (ACTIVATIONS, EMBEDDINGS, MAGIC, NETWORKS, POLICIES,
                                              VALUES, encode_layer, write_net)
from leela_interp.network.nonlinear import MISH, RELU


class _Writer:
    def __init__(self, encoding: str) -> None:
        self.encoding = encoding

    def put(self, layer, values: torch.Tensor | np.ndarray) -> None:
        if isinstance(values, torch.Tensor):
            values = values.detach().to(device="cpu", dtype=torch.float32).numpy()
        layer.CopyFrom(encode_layer(np.asarray(values, dtype=np.float32), self.encoding))

    def linear(self, msg, w_field: str, b_field: str | None, linear: nn.Linear) -> None:
        self.put(getattr(msg, w_field), linear.weight)
        if b_field is not None:
            self.put(getattr(msg, b_field), linear.bias)

    def norm(self, msg, prefix: str, ln: nn.LayerNorm) -> None:
        self.put(getattr(msg, f"{prefix}_gammas"), ln.weight)
        self.put(getattr(msg, f"{prefix}_betas"), ln.bias)

    def conv(self, block, conv: nn.Conv2d) -> None:
        self.put(block.weights, conv.weight)
        self.put(block.biases, conv.bias)

    def encoder(self, enc, block) -> None:
        attn, mha = block.attn, enc.mha
        self.linear(mha, "q_w", "q_b", attn.q)
        self.linear(mha, "k_w", "k_b", attn.k)
        self.linear(mha, "v_w", "v_b", attn.v)
        self.linear(mha, "dense_w", "dense_b", attn.out)
        self.norm(enc, "ln1", block.ln1)
        self.linear(enc.ffn, "dense1_w", "dense1_b", block.mlp.dense1)
        self.linear(enc.ffn, "dense2_w", "dense2_b", block.mlp.dense2)
        self.norm(enc, "ln2", block.ln2)
        if attn.smolgen is not None:
            sg, msg = attn.smolgen, mha.smolgen
            self.put(msg.compress, sg.compress.weight)
            self.linear(msg, "dense1_w", "dense1_b", sg.dense1)
            self.norm(msg, "ln1", sg.ln1)
            self.linear(msg, "dense2_w", "dense2_b", sg.dense2)
            self.norm(msg, "ln2", sg.ln2)

    def value_like(self, msg, kind: str, head, conv_body: bool) -> None:
        if conv_body:
            self.conv(getattr(msg, "value" if kind == "val" else "moves_left"), head.embed)
        else:
            self.linear(msg, f"ip_{kind}_w", f"ip_{kind}_b", head.embed)
        self.linear(msg, f"ip1_{kind}_w", f"ip1_{kind}_b", head.dense1)
        self.linear(msg, f"ip2_{kind}_w", f"ip2_{kind}_b", head.dense2)


def _default_activation(code: int) -> int:
    if code not in (MISH, RELU):
        raise WeightsFormatError(
            f"the body's activation {code!r} cannot be lc0's default activation "
            "(only relu=2 and mish=1 can)")
    return 1 if code == MISH else 0


def network_to_proto(net, *, encoding: str = "LINEAR16") -> Net:
    """The lc0 ``Net`` protobuf holding ``net``'s weights (see the module docstring).

    Args:
        net: a :class:`~leela_interp.network.net.LeelaNet` (any device or dtype; weights are
            written as float32 values in ``encoding``).
        encoding: layer encoding, ``LINEAR16`` (lc0's default), ``FLOAT16``, ``BFLOAT16`` or
            ``FLOAT32`` (exact).

    Raises:
        WeightsFormatError: the module cannot be expressed in lc0's format (e.g. a body
            activation other than ReLU or Mish).
        ValueError: an unknown ``encoding``.
    """
    cfg = net.config
    wr = _Writer(encoding)
    proto = Net(magic=MAGIC)
    attn_body = cfg.body == "transformer"
    minor = 33 if encoding != "LINEAR16" else (30 if attn_body else 21)
    proto.min_version.major, proto.min_version.minor, proto.min_version.patch = 0, minor, 0
    proto.format.weights_encoding = 1
    nf = proto.format.network_format
    nf.input = cfg.input_format
    wdl = cfg.value == "wdl"
    nf.output = 2 if wdl else 1
    nf.value = VALUES["VALUE_WDL" if wdl else "VALUE_CLASSICAL"]
    nf.policy = POLICIES[{"classical": "POLICY_CLASSICAL", "convolution": "POLICY_CONVOLUTION",
                          "attention": "POLICY_ATTENTION"}[cfg.policy]]
    nf.moves_left = 1 if net.mlh_head is not None else 0
    nf.default_activation = _default_activation(net.embed.act.code)
    w = proto.weights

    if attn_body:
        embed = net.embed
        nf.network = NETWORKS["NETWORK_ATTENTIONBODY_WITH_HEADFORMAT"]
        dense = embed.dense_pos is not None
        nf.input_embedding = EMBEDDINGS["INPUT_EMBEDDING_PE_DENSE" if dense else
                                        "INPUT_EMBEDDING_PE_MAP"]
        ffn_act = net.blocks[0].mlp.act.code if len(net.blocks) else embed.act.code
        nf.ffn_activation = ffn_act
        smolgens = [b.attn.smolgen for b in net.blocks if b.attn.smolgen is not None]
        nf.smolgen_activation = smolgens[0].act.code if smolgens else 0
        if dense:
            wr.linear(w, "ip_emb_preproc_w", "ip_emb_preproc_b", embed.preproc)
            wr.norm(w, "ip_emb_ln", embed.ln)
        if embed.ffn is not None:
            wr.linear(w.ip_emb_ffn, "dense1_w", "dense1_b", embed.ffn.dense1)
            wr.linear(w.ip_emb_ffn, "dense2_w", "dense2_b", embed.ffn.dense2)
            wr.norm(w, "ip_emb_ffn_ln", embed.ffn_ln)
        wr.linear(w, "ip_emb_w", "ip_emb_b", embed.linear)
        if embed.mult_gate is not None:  # module [64][d_model]; file [d_model][64]
            wr.put(w.ip_mult_gate, embed.mult_gate.detach().T)
            wr.put(w.ip_add_gate, embed.add_gate.detach().T)
        w.headcount = cfg.n_heads
        for block in net.blocks:
            wr.encoder(w.encoder.add(), block)
        if net.smolgen_w is not None:
            wr.put(w.smolgen_w, net.smolgen_w.weight)
    else:
        has_se = any(b.se is not None for b in net.blocks)
        nf.network = NETWORKS["NETWORK_SE_WITH_HEADFORMAT" if has_se else
                              "NETWORK_CLASSICAL_WITH_HEADFORMAT"]
        wr.conv(w.input, net.embed.conv)
        for block in net.blocks:
            res = w.residual.add()
            wr.conv(res.conv1, block.conv1)
            wr.conv(res.conv2, block.conv2)
            if block.se is not None:
                wr.linear(res.se, "w1", "b1", block.se.fc1)
                wr.linear(res.se, "w2", "b2", block.se.fc2)

    head = net.policy_head
    if cfg.policy == "attention":
        wr.linear(w, "ip_pol_w", "ip_pol_b", head.embed)
        for block in head.encoders:
            wr.encoder(w.pol_encoder.add(), block)
        if len(head.encoders):
            w.pol_headcount = head.encoders[0].attn.n_heads
        wr.linear(w, "ip2_pol_w", "ip2_pol_b", head.q)
        wr.linear(w, "ip3_pol_w", "ip3_pol_b", head.k)
        wr.put(w.ip4_pol_w, head.promotion.weight)
    elif cfg.policy == "convolution":
        wr.conv(w.policy1, head.conv1)
        wr.conv(w.policy, head.conv2)
    else:
        wr.conv(w.policy, head.conv)
        wr.linear(w, "ip_pol_w", "ip_pol_b", head.dense)

    wr.value_like(w, "val", net.value_head, not attn_body)
    if net.mlh_head is not None:
        wr.value_like(w, "mov", net.mlh_head, not attn_body)
    return proto


def save_network(net, path: str | Path, encoding: str = "LINEAR16") -> Path:
    """Write ``net`` as an lc0 network file (gzip ``.pb.gz``; plain protobuf if ``.pb``).

    Args:
        net: the module to save (see :func:`network_to_proto`).
        path: output file; its directory must exist.
        encoding: layer encoding (``LINEAR16`` is what lc0's training code writes).

    Returns:
        ``path``.
    """
    return write_net(network_to_proto(net, encoding=encoding), path)
