"""Writing a native module as the ONNX graph ``lc0 leela2onnx`` writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from leela_interp.errors import ConfigError
from leela_interp.identity import __version__
from leela_interp.network.net import LeelaNet
from leela_interp.network.nonlinear import (MISH, RELU, RELU_2, SELU, SELU_ALPHA, SELU_SCALE,
                                            SIGMOID, SWISH, TANH)
from leela_interp.network.onnx.graph import INPUT_NAME, OUTPUT_NAMES


@dataclass(frozen=True)
class _Style:
    """Graph conventions to write. The defaults are lc0 0.32's; the others reproduce older
    converters' graphs (for tests of the reader)."""

    alpha_on_skip: bool = False
    """Pre-#1992: ``LN(s*x + f)`` with ``s = (2N)^0.25``."""
    mlh_default_activation: bool = False
    """#1825..#2305: moves-left output = default activation, then Identity."""
    layernorm: str = "op"
    """``"op"`` (LayerNormalization) or ``"decomposed"`` (leela2onnx's alt_layernorm)."""
    mish: str = "auto"
    """``"auto"`` (Mish op at opset >= 18, else softplus-tanh-mul), ``"softplus"``, ``"alt"``."""
    gate_reshapes: bool = False
    """Before #2311: the token reshapes around the gates only when there are gates."""


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


class _Writer:
    """Builds a leela2onnx-style graph, node by node (each node's output is named after it)."""

    def __init__(self, opset: int, batch: int | None, style: _Style) -> None:
        self.opset, self.batch, self.style = opset, batch, style
        self.nodes: list = []
        self.inits: dict[str, onnx.TensorProto] = {}

    def const(self, name: str, values, dtype=np.float32) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(values, dtype), name)
        return name

    def shape(self, name: str, dims: Sequence[int]) -> str:
        return self.const(name, np.array(dims, np.int64), np.int64)

    def op(self, op: str, name: str, inputs: Sequence[str], outputs: int = 1, **attrs):
        outs = [name] if outputs == 1 else [f"{name}/out{i + 1}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def matmul(self, name: str, x: str, w_in_out: np.ndarray) -> str:
        return self.op("MatMul", name, [x, self.const(name + "/w", w_in_out)])

    def binary(self, op: str, name: str, x: str, c) -> str:
        return self.op(op, name, [x, self.const(name + "/w", np.asarray(c, np.float32))])

    def dense(self, mm: str, add: str, x: str, linear: torch.nn.Linear) -> str:
        y = self.matmul(mm, x, _np(linear.weight).T)
        return self.binary("Add", add, y, _np(linear.bias)) if linear.bias is not None else y

    def conv(self, name: str, x: str, conv: torch.nn.Conv2d) -> str:
        k = conv.kernel_size[0]
        return self.op("Conv", name, [x, self.const(name + "/w/kernel", _np(conv.weight)),
                                      self.const(name + "/w/bias", _np(conv.bias))],
                       pads=[(k - 1) // 2] * 4, kernel_shape=[k, k])

    def reshape(self, name: str, x: str, shape_name: str, dims: Sequence[int]) -> str:
        return self.op("Reshape", name, [x, self.shape(shape_name, dims)])

    def act(self, name: str, x: str, code: int) -> str:
        if code == RELU:
            return self.op("Relu", name + "/relu", [x])
        if code == MISH:
            name += "/mish"
            style = self.style.mish
            if style == "auto" and self.opset >= 18:
                return self.op("Mish", name, [x])
            if style == "alt":
                e = self.op("Exp", name + "/e", [x])
                f = self.binary("Add", name + "/e+2", e, [2.0])
                f = self.op("Mul", name + "/e*e+2e", [e, f])
                f = self.op("Div", name + "/2/(e*e+2e)", [self.const(name + "/two", [2.0]), f])
                f = self.binary("Add", name + "/1+2/(e*e+2e)", f, [1.0])
                return self.op("Div", name + "/in/(1+2/(e*e+2e))", [x, f])
            f = self.op("Softplus", name + "/softplus", [x])
            f = self.op("Tanh", name + "/tanh", [f])
            return self.op("Mul", name, [f, x])
        if code == SELU:
            return self.op("Selu", name + "/selu/selu", [x], alpha=SELU_ALPHA, gamma=SELU_SCALE)
        if code == SWISH:
            s = self.op("Sigmoid", name + "/swish/sigmoid", [x])
            return self.op("Mul", name + "/swish", [s, x])
        if code == RELU_2:
            r = self.op("Relu", name + "/sqrrelu/relu", [x])
            return self.op("Mul", name + "/sqrrelu/sqr", [r, r])
        if code == TANH:
            return self.op("Tanh", name + "/tanh", [x])
        if code == SIGMOID:
            return self.op("Sigmoid", name + "/sigmoid", [x])
        return x

    def layer_norm(self, name: str, x: str, ln: torch.nn.LayerNorm) -> str:
        gamma, beta = _np(ln.weight), _np(ln.bias)
        if self.style.layernorm == "op" and self.opset >= 17:
            return self.op("LayerNormalization", name,
                           [x, self.const(name + "/w/scale", gamma),
                            self.const(name + "/w/bias", beta)], axis=1, epsilon=ln.eps)
        mean = self.reduce_mean(name + "/mean", x, [1], keepdims=1)
        c = self.op("Sub", name + "/centered", [x, mean])
        var = self.reduce_mean(name + "/var", self.op("Mul", name + "/squared", [c, c]), [1], 1)
        var = self.binary("Add", name + "/var_eps", var, [ln.eps])
        inv = self.op("Reciprocal", name + "/inv_std", [self.op("Sqrt", name + "/std", [var])])
        y = self.op("Mul", name + "/normalized", [c, inv])
        return self.binary("Add", name + "/betas", self.binary("Mul", name + "/gammas", y, gamma),
                           beta)

    def reduce_mean(self, name: str, x: str, axes: list[int], keepdims: int) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", name, [x, self.shape(name + "/axes", axes)],
                           keepdims=keepdims)
        return self.op("ReduceMean", name, [x], axes=axes, keepdims=keepdims)

    def split(self, name: str, x: str, sizes: list[int], axis: int) -> list[str]:
        if self.opset >= 13:
            return self.op("Split", name, [x, self.shape(name + "/split", sizes)], len(sizes),
                           axis=axis)
        return self.op("Split", name, [x], len(sizes), axis=axis, split=sizes)

    def slice(self, name: str, x: str, starts: list[int], ends: list[int]) -> str:
        return self.op("Slice", name, [x, self.shape(name + "/starts", starts),
                                       self.shape(name + "/ends", ends)])

    # --- blocks ---------------------------------------------------------------------------

    def residual_sum(self, name: str, f: str, skip: str, alpha: float, tag: str) -> str:
        """``alpha * f + skip``, or pre-#1992 ``f + skip / alpha``."""
        if alpha == 1.0:
            return self.op("Add", f"{name}/{tag}/skip", [f, skip])
        if self.style.alpha_on_skip:
            label = "alpha*input" if tag == "mha/out" else "alpha*out1"
            s = self.binary("Mul", f"{name}/{label}", skip, [np.float32((1 / alpha))])
            return self.op("Add", f"{name}/{tag}/skip", [f, s])
        label = "alpha*input" if tag == "mha/out" else "ffn/alpha"
        f = self.binary("Mul", f"{name}/{label}", f, [alpha])
        return self.op("Add", f"{name}/{tag}/skip", [f, skip])

    def ffn(self, name: str, x: str, mlp, alpha: float, embedding: bool = False) -> str:
        f = self.dense(f"{name}/ffn/dense1/w", f"{name}/ffn/dense1/b", x, mlp.dense1)
        f = self.act(f"{name}/ffn/dense1", f, mlp.act.code)
        f = self.dense(f"{name}/ffn/dense2/w", f"{name}/ffn/dense2/b", f, mlp.dense2)
        if embedding:  # every converter scales the embedding FFN's output, not its skip
            f = self.binary("Mul", f"{name}/ffn/alpha", f, [alpha]) if alpha != 1.0 else f
            return self.op("Add", f"{name}/ffn/skip", [f, x])
        return self.residual_sum(name, f, x, alpha, "ffn")

    def smolgen(self, name: str, x: str, sg, heads: int) -> str:
        hc = sg.compress.out_features
        f = self.matmul(f"{name}/smolgen/compress", x, _np(sg.compress.weight).T)
        f = self.reshape(f"{name}/smolgen/compress/reshape", f,
                         f"/const{name}/smolgen/compress/shape", [-1, 64 * hc])
        for i, (dense, ln) in enumerate(((sg.dense1, sg.ln1), (sg.dense2, sg.ln2)), 1):
            f = self.dense(f"{name}/smolgen/dense{i}/w", f"{name}/smolgen/dense{i}/b", f, dense)
            f = self.act(f"{name}/smolgen/dense{i}", f, sg.act.code)
            f = self.layer_norm(f"{name}/smolgen/ln{i}", f, ln)
        gen = sg.dense2.out_features // heads
        f = self.reshape(f"{name}/smolgen/gen_from/reshape", f,
                         f"/const{name}/smolgen/gen_from/shape", [-1, heads, gen])
        f = self.op("MatMul", f"{name}/smolgen/smol_weight_gen", [f, "/const/smolgen_w"])
        return self.reshape(f"{name}/smolgen/out/reshape", f, f"/const{name}/smolgen/out/shape",
                            [-1, heads, 64, 64])

    def encoder(self, name: str, x: str, block) -> str:
        attn = block.attn
        heads, depth = attn.n_heads, attn.d_head
        shape = f"/const{name}/mha/shape"
        self.shape(shape, [-1, 64, heads, depth])
        qkv = {}
        for tag, linear, perm in (("Q", attn.q, [0, 2, 1, 3]), ("K", attn.k, [0, 2, 3, 1]),
                                  ("V", attn.v, [0, 2, 1, 3])):
            t = self.dense(f"{name}/mha/{tag}/w", f"{name}/mha/{tag}/b", x, linear)
            t = self.op("Reshape", f"{name}/mha/{tag}/reshape", [t, shape])
            qkv[tag] = self.op("Transpose", f"{name}/mha/{tag}/transpose", [t], perm=perm)
        s = self.op("MatMul", f"{name}/mha/QK/matmul", [qkv["Q"], qkv["K"]])
        s = self.binary("Mul", f"{name}/mha/QK/scale", s, [attn.scale])
        if attn.smolgen is not None:
            s = self.op("Add", f"{name}/smolgen_weights",
                        [s, self.smolgen(name, x, attn.smolgen, heads)])
        s = self.op("Softmax", f"{name}/mha/QK/softmax", [s], axis=3)
        o = self.op("MatMul", f"{name}/mha/QKV/matmul", [s, qkv["V"]])
        if heads > 1:
            o = self.op("Transpose", f"{name}/mha/out/transpose", [o], perm=[0, 2, 1, 3])
        o = self.reshape(f"{name}/mha/out/reshape", o, f"/const{name}/mha/out/shape",
                         [-1, heads * depth])
        o = self.dense(f"{name}/mha/out/dense/w", f"{name}/mha/out/dense/b", o, attn.out)
        h = self.residual_sum(name, o, x, block.alpha, "mha/out")
        h = self.layer_norm(f"{name}/ln1", h, block.ln1)
        h = self.ffn(name, h, block.mlp, block.alpha)
        return self.layer_norm(f"{name}/ln2", h, block.ln2)

    def embedding(self, x: str, emb) -> str:
        d_model = emb.linear.out_features
        x = self.op("Transpose", "/attn_body/transpose", [x], perm=[0, 2, 3, 1])
        x = self.reshape("/attn_body/reshape", x, "/const/att_body_shape", [-1, 64, 112])
        if emb.dense_pos is None:
            table = self.const("/const/pos_encoding", _np(emb.pos_table).reshape(1, 64, 64))
            if self.batch is None:
                b = self.op("Shape", "/attn_body/shape", [x])
                b = self.slice("/attn_body/batch", b, [0], [1])
                b = self.op("Concat", "/attn_body/pos_encoding_shape",
                            [b, self.shape("/const/pos_encoding_shape", [64, 64])], axis=0)
            else:
                b = self.shape("/const/pos_encoding_shape", [self.batch, 64, 64])
            pos = self.op("Expand", "/attn_body/expand", [table, b])
            x = self.op("Concat", "/attn_body/padded_input", [x, pos], axis=2)
            x = self.reshape("/attn_body/reshape2", x, "/const/att_body_shape2", [-1, 176])
        else:
            d = emb.dense_pos
            p = self.slice("/attn_body/embedding/slice", x, [0, 0, 0], [2**31 - 1, 64, 12])
            p = self.reshape("/attn_body/embedding/reshape", p, "/const/pos_info_shape",
                             [-1, 64 * 12])
            p = self.dense("/attn_body/embedding/preprocess/matmul",
                           "/attn_body/embedding/preprocess/add", p, emb.preproc)
            p = self.reshape("/attn_body/embedding/preprocess/reshape", p,
                             "/const/pos_info_processed_shape", [-1, 64, d])
            x = self.op("Concat", "/attn_body/embedding/concat", [x, p], axis=2)
            x = self.reshape("/attn_body/embedding/out/reshape", x, "/const/embedding/out_shape",
                             [-1, 112 + d])
        x = self.dense("/attn_body/matmul", "/attn_body/add", x, emb.linear)
        x = self.act("/attn_body", x, emb.act.code)
        if emb.ln is not None:
            x = self.layer_norm("/attn_body/ln", x, emb.ln)
        gated = emb.mult_gate is not None
        if gated:
            x = self.reshape("/attn_body/ma_gating/rehape" + ("1" if self.style.gate_reshapes
                                                               else ""),
                             x, "/const/ma_gating/shape1", [-1, 64, d_model])
            x = self.binary("Mul", "/ip_mul_gate", x, _np(emb.mult_gate))
            x = self.binary("Add", "/ip_add_gate", x, _np(emb.add_gate))
        if gated or not self.style.gate_reshapes:
            x = self.reshape("/attn_body/ma_gating/rehape2" if self.style.gate_reshapes
                             else "/attn_body/rehape", x, "/const/ma_gating/shape2",
                             [-1, d_model])
        if emb.ffn is not None:
            x = self.ffn("/attn_body", x, emb.ffn, emb.alpha, embedding=True)
            x = self.layer_norm("/attn_body/ln2", x, emb.ffn_ln)
        return x

    def attention_policy(self, x: str, head, conv_body: bool, channels: int) -> str:
        if conv_body:
            x = self.op("Transpose", "/policy/dense1/transpose", [x], perm=[0, 2, 3, 1])
            x = self.reshape("/policy/dense1/reshape", x, "/const/policy_shape", [-1, channels])
        e = self.dense("/policy/dense1/matmul", "/policy/dense1/add", x, head.embed)
        e = self.act("/policy/dense1", e, head.act.code)
        for i, block in enumerate(head.encoders):
            e = self.encoder(f"/policy/enc_layer_{i}", e, block)
        pd = head.q.out_features
        q = self.dense("/policy/Q/matmul", "/policy/Q/add", e, head.q)
        q = self.reshape("/policy/Q/reshape", q, "/const/QK_shape", [-1, 64, pd])
        k = self.dense("/policy/K/matmul", "/policy/K/add", e, head.k)
        k = self.op("Reshape", "/policy/K/reshape", [k, "/const/QK_shape"])
        s = self.op("MatMul", "/policy/matmul",
                    [q, self.op("Transpose", "/policy/K/transpose", [k], perm=[0, 2, 1])])
        s = self.binary("Mul", "/policy/scale", s, [head.scale])
        prom = self.slice("/policy/promotion/slice", k, [0, 56, 0], [2**31 - 1, 64, pd])
        prom = self.matmul("/policy/promotion/matmul", prom, _np(head.promotion.weight).T)
        prom = self.op("Transpose", "/policy/promotion/transpose", [prom], perm=[0, 2, 1])
        parts = self.split("/policy/promotion/split", prom, [3, 1], axis=1)
        prom = self.op("Add", "/policy/promotion/add", parts)
        prom = self.op("Transpose", "/policy/promotion/transpose2", [prom], perm=[0, 2, 1])
        prom = self.reshape("/policy/promotion/reshape", prom, "/const/policy_promotion_shape",
                            [-1, 1, 24])
        sl = self.slice("/policy/promotion/slice2", s, [0, 48, 56], [2**31 - 1, 56, 64])
        sl = self.reshape("/policy/promotion/reshape2", sl, "/const/policy_promotion_shape2",
                          [-1, 64, 1])
        sl = self.op("Concat", "/policy/promotion/concat", [sl, sl, sl], axis=2)
        sl = self.reshape("/policy/promotion/reshape3", sl, "/const/policy_promotion_shape3",
                          [-1, 8, 24])
        prom = self.op("Add", "/policy/promotion/add2", [sl, prom])
        prom = self.reshape("/policy/promotion/reshape4", prom, "/const/policy_promotion_shape4",
                            [-1, 3, 64])
        flat = self.op("Concat", "/policy/concat", [s, prom], axis=1)
        flat = self.reshape("/policy/reshape", flat, "/const/policy_out_shape", [-1, 67 * 64])
        return self.gather(flat, head.gather)

    def gather(self, x: str, index: torch.Tensor) -> str:
        table = self.const("/const/mapping_table", index.numpy().astype(np.int32), np.int32)
        return self.op("Gather", OUTPUT_NAMES["policy"], [x, table], axis=1)

    def value_like(self, prefix: str, x: str, head, conv_body: bool) -> str:
        if conv_body:
            y = self.conv(f"/{prefix}/conv", x, head.embed)
            y = self.act(f"/{prefix}/conv", y, head.act.code)
        else:
            y = self.dense(f"/{prefix}/embed/matmul", f"/{prefix}/embed/add", x, head.embed)
            y = self.act(f"/{prefix}/embed", y, head.act.code)
        y = self.reshape(f"/{prefix}/reshape", y, f"/const/{prefix}_shape",
                         [-1, head.dense1.in_features])
        y = self.dense(f"/{prefix}/dense1/matmul", f"/{prefix}/dense1/add", y, head.dense1)
        y = self.act(f"/{prefix}/dense1", y, head.act.code)
        return self.dense(f"/{prefix}/dense2/matmul", f"/{prefix}/dense2/add", y, head.dense2)


def build_onnx_model(net: LeelaNet, *, opset: int = 17, batch_dynamic: bool = True,
                     batch_size: int = 1, _style: _Style = _Style()) -> onnx.ModelProto:
    """The ONNX model :func:`export_onnx` writes, in memory (see there)."""
    if not 13 <= opset <= 22:
        raise ConfigError(f"opset {opset!r} is not supported; choose 13..22 (default 17)")
    if not batch_dynamic and batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size!r}")
    batch = None if batch_dynamic else int(batch_size)
    w = _Writer(opset, batch, _style)
    cfg = net.config
    cnn = cfg.body == "cnn"
    x = INPUT_NAME
    if cnn:
        x = w.conv("/inputconv", x, net.embed.conv)
        x = w.act("/inputconv", x, net.embed.act.code)
        for i, block in enumerate(net.blocks):
            name = f"/block{i}"
            y = w.act(f"{name}/conv1", w.conv(f"{name}/conv1", x, block.conv1), block.act.code)
            z = w.conv(f"{name}/conv2", y, block.conv2)
            if block.se is not None:
                se, c = block.se, block.conv1.out_channels
                s = w.reduce_mean(f"{name}/conv2/se/reduce_mean", z, [2, 3], keepdims=0)
                s = w.dense(f"{name}/conv2/se/matmul1", f"{name}/conv2/se/add1", s, se.fc1)
                s = w.act(f"{name}/conv2/se", s, se.act.code)
                s = w.dense(f"{name}/conv2/se/matmul2", f"{name}/conv2/se/add2", s, se.fc2)
                s = w.reshape(f"{name}/conv2/se/reshape", s, "/const/se_reshape",
                              [-1, 2 * c, 1, 1])
                gamma, beta = w.split(f"{name}/conv2/se/split", s, [c, c], axis=1)
                g = w.op("Sigmoid", f"{name}/conv2/se/sigmoid", [gamma])
                z = w.op("Add", f"{name}/conv2/se/add3",
                         [w.op("Mul", f"{name}/conv2/se/mul", [g, z]), beta])
            x = w.act(f"{name}/conv2", w.op("Add", f"{name}/conv2/mixin", [z, x]),
                      block.act.code)
        channels = net.embed.conv.out_channels
    else:
        if net.smolgen_w is not None:
            w.const("/const/smolgen_w", _np(net.smolgen_w.weight).T)
        x = w.embedding(x, net.embed)
        for i, block in enumerate(net.blocks):
            x = w.encoder(f"/encoder{i}", x, block)
        channels = cfg.d_model
    # Policy.
    head = net.policy_head
    if cfg.policy == "attention":
        policy = w.attention_policy(x, head, cnn, channels)
    elif cfg.policy == "convolution":
        p = w.act("/policy/conv1", w.conv("/policy/conv1", x, head.conv1), head.act.code)
        p = w.conv("/policy/conv2", p, head.conv2)
        p = w.reshape("/policy/flatten", p, "/const/policy_shape",
                      [-1, head.conv2.out_channels * 64])
        policy = w.gather(p, head.gather)
    else:
        p = w.act("/policy/conv", w.conv("/policy/conv", x, head.conv), head.act.code)
        p = w.reshape("/policy/reshape", p, "/const/policy_shape", [-1, head.dense.in_features])
        p = w.matmul("/policy/dense/matmul", p, _np(head.dense.weight).T)
        policy = w.binary("Add", OUTPUT_NAMES["policy"], p, _np(head.dense.bias))
    dim = "batch" if batch is None else batch
    outputs = [helper.make_tensor_value_info(policy, TensorProto.FLOAT, [dim, 1858])]
    # Value.
    v = w.value_like("value", x, net.value_head, cnn)
    if cfg.value == "wdl":
        v = w.op("Softmax", OUTPUT_NAMES["wdl"], [v], axis=1)
        outputs.append(helper.make_tensor_value_info(v, TensorProto.FLOAT, [dim, 3]))
    else:
        v = w.op("Tanh", OUTPUT_NAMES["value"], [v])
        outputs.append(helper.make_tensor_value_info(v, TensorProto.FLOAT, [dim, 1]))
    # Moves left.
    if net.mlh_head is not None:
        m = w.value_like("mlh", x, net.mlh_head, cnn)
        if _style.mlh_default_activation:
            m = w.op("Identity", OUTPUT_NAMES["mlh"],
                     [w.act("/mlh/dense2", m, net.mlh_head.act.code)])
        else:
            m = w.op("Relu", OUTPUT_NAMES["mlh"], [m])
        outputs.append(helper.make_tensor_value_info(m, TensorProto.FLOAT, [dim, 1]))
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [dim, 112, 8, 8])]
    graph = helper.make_graph(w.nodes, "org.lczero/converted", inputs, outputs,
                              list(w.inits.values()))
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="leela_interp",
                              producer_version=__version__)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(model, {"input_format": str(cfg.input_format),
                                   "sha256": net.sha256,
                                   "policy_head": cfg.policy_head,
                                   "value_head": cfg.value_head})
    return model


def export_onnx(net: LeelaNet, path: str | Path, *, opset: int = 17, batch_dynamic: bool = True,
                batch_size: int = 1) -> Path:
    """Write ``net`` as the ONNX graph ``lc0 leela2onnx`` would write for its weights.

    Interface: input ``/input/planes`` ``[batch, 112, 8, 8]`` float32; outputs
    ``/output/policy`` ``[batch, 1858]`` raw logits, ``/output/wdl`` ``[batch, 3]``
    probabilities (WDL nets) or ``/output/value`` ``[batch, 1]`` tanh (classical-value nets),
    and ``/output/mlh`` ``[batch, 1]`` (nets with a moves-left head). Nodes and initializers
    are named as lc0 0.32's converter names them; the graph computes what the native module
    computes (lc0's DeepNorm and moves-left conventions). A multi-head net is written with the
    heads the module computes. Unlike leela2onnx, the file's metadata records the input format
    (key ``input_format``), which :func:`~leela_interp.network.loading.load_onnx` then reads.

    The graph is built node by node rather than traced with ``torch.onnx.export``, so that
    ``load_onnx`` (which reads leela2onnx's layout) reads it back and so that hooks play no part.

    Args:
        net: the module to export (its current weights; any dtype or device).
        path: the ``.onnx`` file to write.
        opset: ONNX opset, 13..22. Below 17 LayerNorm is written decomposed; from 18 mish is
            the ``Mish`` op.
        batch_dynamic: a symbolic batch dimension ``batch``; False fixes it to ``batch_size``.
        batch_size: the batch size when ``batch_dynamic`` is False.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: an unsupported ``opset`` or a non-positive ``batch_size``.
    """
    path = Path(path)
    model = build_onnx_model(net, opset=opset, batch_dynamic=batch_dynamic, batch_size=batch_size)
    onnx.save(model, str(path))
    return path
