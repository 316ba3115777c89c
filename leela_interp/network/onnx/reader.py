"""Reading an ``lc0 leela2onnx`` export back into lc0 weights and the native module."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from leela_interp.errors import ConfigError, WeightsFormatError
from leela_interp.network.lc0 import weights as lc0w
from leela_interp.network.lc0.proto import Net
from leela_interp.network.nonlinear import ACTIVATION_NAMES, MISH, RELU, SELU
from leela_interp.network.onnx.graph import _attr, _Graph

log = logging.getLogger("leela_interp.network.onnx")


@dataclass
class _Found:
    """What the reader saw beyond the weights: activations, LayerNorm eps, alpha placement."""

    default: int = 0
    ffn: list = field(default_factory=list)
    smolgen: list = field(default_factory=list)
    policy_ffn: list = field(default_factory=list)
    emb_ffn: int | None = None
    alphas: list = field(default_factory=list)
    eps: list = field(default_factory=list)
    notes: list = field(default_factory=list)


class _Reader:
    """Walks an lc0 export's graph and fills a ``Net`` protobuf with its weights."""

    def __init__(self, graph: _Graph) -> None:
        self.g = graph
        self.net = Net(magic=lc0w.MAGIC)
        self.w = self.net.weights
        self.seen = _Found()
        self.smolgen_w: np.ndarray | None = None
        self._heads = 0

    def put(self, layer, values: np.ndarray) -> None:
        layer.CopyFrom(lc0w.encode_layer(np.asarray(values, np.float32), "FLOAT32"))

    def act(self, t: str, expected: int | None, what: str) -> str:
        code, out = self.g.activation(t)
        if expected is not None and code != expected:
            raise self.g.fail(f"{what} uses {ACTIVATION_NAMES.get(code)}, where lc0 uses "
                              f"{ACTIVATION_NAMES.get(expected)}; the native module cannot "
                              "represent that", self.g.producer.get(t))
        return out

    # --- whole graph ----------------------------------------------------------------------

    def read(self) -> Net:
        g = self.g
        planes = g.planes_input()
        roles = g.output_roles()
        if "policy" not in roles or not ({"wdl", "value"} & set(roles)):
            raise g.fail(f"outputs {g.outputs} lack a policy [batch, 1858] and a value/wdl head")
        first = g.users(planes)
        convs = [n for n in first if n.op_type == "Conv"]
        if convs:
            body_out, attn_body = self.conv_body(convs[0]), False
        elif [n for n in first if n.op_type == "Transpose"]:
            body_out = self.attention_body(g.user(planes, "Transpose", "the input"))
            attn_body = True
        else:
            raise g.fail("the planes feed neither a convolution nor an attention body")
        heads = self.head_entries(body_out, roles)
        policy = self.policy(heads["policy"], roles["policy"], attn_body)
        wdl = "wdl" in heads
        self.value(heads["wdl" if wdl else "value"], roles.get("wdl") or roles["value"],
                   attn_body, wdl)
        has_mlh = "mlh" in heads
        if has_mlh:
            self.moves_left(heads["mlh"], roles["mlh"], attn_body)
        self.check_conventions()
        nf = self.net.format.network_format
        self.net.min_version.major, self.net.min_version.minor = 0, 33
        self.net.format.weights_encoding = 1
        nf.output = 2 if wdl else 1
        nf.value = 2 if wdl else 1
        nf.policy = policy
        nf.moves_left = 1 if has_mlh else 0
        nf.default_activation = 1 if self.seen.default == MISH else 0
        if attn_body:
            nf.network = lc0w.NETWORKS["NETWORK_ATTENTIONBODY_WITH_HEADFORMAT"]
            nf.input_embedding = 2 if self.w.HasField("ip_emb_preproc_w") else 1
            ffn = self.seen.ffn[0] if self.seen.ffn else self.seen.emb_ffn or self.seen.default
            nf.ffn_activation = 0 if ffn == self.seen.default else ffn
            if self.seen.smolgen and self.seen.smolgen[0] != self.seen.default:
                nf.smolgen_activation = self.seen.smolgen[0]
        else:
            se = any(r.HasField("se") for r in self.w.residual)
            nf.network = lc0w.NETWORKS["NETWORK_SE_WITH_HEADFORMAT" if se
                                       else "NETWORK_CLASSICAL_WITH_HEADFORMAT"]
        return self.net

    def head_entries(self, x: str, roles: dict[str, str]) -> dict[str, object]:
        """The first node of each head: the consumer of the body output leading to its output."""
        by_output = {name: role for role, name in roles.items()}
        entries: dict[str, object] = {}
        for node in self.g.users(x):
            reached = {by_output[o] for o in self.g.reaches(node.output[0]) if o in by_output}
            if len(reached) > 1:
                raise self.g.fail("the body continues after the residual tower (a hybrid "
                                  "conv + attention body?), which the native module does not "
                                  "support", node)
            for role in reached:
                if role in entries:
                    raise self.g.fail(f"two branches lead to the {role} output", node)
                entries[role] = node
        for role in roles:
            if role not in entries:
                raise self.g.fail(f"the {role} output does not depend on the body output")
        return entries

    # --- convolutional body ---------------------------------------------------------------

    def conv_body(self, conv) -> str:
        g = self.g
        w, b = g.conv(conv, "input convolution", 112, 3)
        channels = w.shape[0]
        self.put(self.w.input.weights, w)
        self.put(self.w.input.biases, b)
        code, x = g.activation(conv.output[0])
        if code not in (RELU, MISH):
            raise g.fail(f"default activation {ACTIVATION_NAMES.get(code)} (lc0 has relu or mish)",
                         conv)
        self.seen.default = code
        while g.users(x, "Add"):  # a residual block: its input also feeds the skip Add
            i = len(self.w.residual)
            res = self.w.residual.add()
            conv1 = g.user(x, "Conv", f"block {i} input")
            w1, b1 = g.conv(conv1, f"block {i} conv1", channels, 3)
            self.put(res.conv1.weights, w1)
            self.put(res.conv1.biases, b1)
            y = self.act(conv1.output[0], code, f"block {i} conv1")
            conv2 = g.user(y, "Conv", f"block {i} conv1")
            w2, b2 = g.conv(conv2, f"block {i} conv2", channels, 3)
            self.put(res.conv2.weights, w2)
            self.put(res.conv2.biases, b2)
            z = conv2.output[0]
            pools = [n for n in g.users(z) if n.op_type in ("ReduceMean", "GlobalAveragePool")]
            if pools:
                z = self.squeeze_excite(res.se, pools[0], z, channels, f"block {i}")
            mix = [n for n in g.users(z, "Add") if set(n.input) == {z, x}]
            if len(mix) != 1:
                raise g.fail(f"block {i}: no skip connection", conv2)
            x = self.act(mix[0].output[0], code, f"block {i} output")
        return x

    def squeeze_excite(self, se, pool, z: str, channels: int, what: str) -> str:
        g = self.g
        t = g.through(pool.output[0], ("Squeeze", "Reshape", "Flatten"))
        w1, b1, h = g.linear(g.matmul(t, f"{what} SE"), f"{what} SE dense1")
        h = self.act(h, self.seen.default, f"{what} SE")
        w2, b2, e = g.linear(g.matmul(h, f"{what} SE"), f"{what} SE dense2")
        if w2.shape[0] != 2 * channels:
            raise g.fail(f"{what} SE has {w2.shape[0]} outputs for {channels} channels")
        split = g.user(g.through(e, ("Reshape",)), "Split", f"{what} SE")
        gate = g.user(split.output[0], "Sigmoid", f"{what} SE gate")
        mul = g.user(gate.output[0], "Mul", f"{what} SE gate")
        add = g.user(mul.output[0], "Add", f"{what} SE")
        if z not in mul.input or split.output[1] not in add.input:
            raise g.fail(f"{what}: SE gate and bias are not applied as lc0 does", mul)
        for field, values in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            self.put(getattr(se, field), values)
        return add.output[0]

    # --- attention body -------------------------------------------------------------------

    def attention_body(self, transpose) -> str:
        g = self.g
        if list(_attr(transpose, "perm", [])) != [0, 2, 3, 1]:
            raise g.fail("the planes are not transposed to squares x features", transpose)
        tokens = g.user(transpose.output[0], "Reshape", "the input transpose").output[0]
        if g.users(tokens, "Conv"):
            raise g.fail("unexpected convolution in the attention body")
        concat = g.user(tokens, "Concat", "the input tokens")
        other = [i for i in concat.input if i != tokens]
        if len(other) != 1:
            raise g.fail("the embedding concatenates an unexpected number of tensors", concat)
        before = g.upstream(other[0], stop={tokens})
        pre = [n for n in before if n.op_type == "MatMul" and g.is_const(n.input[1])
               and g.const(n.input[1]).shape[0] == 64 * 12]
        if pre:  # PE_DENSE: a dense layer on the 12 piece planes of all squares
            pw, pb, _ = g.linear(pre[0], "PE_DENSE preprocessing")
            self.put(self.w.ip_emb_preproc_w, pw)
            self.put(self.w.ip_emb_preproc_b, pb)
            dense = True
        else:  # PE_MAP: lc0's fixed 64x64 table
            from leela_interp.network.transformer import pos_encoding_table

            tables = [g.const(i) for n in before for i in n.input
                      if g.is_const(i) and i and g.const(i).size == 4096]
            if not tables:
                raise g.fail("the embedding has neither PE_DENSE weights nor a PE_MAP table",
                             concat)
            if not np.array_equal(tables[0].reshape(64, 64), pos_encoding_table().numpy()):
                raise g.fail("the positional table is not lc0's PE_MAP table (an early "
                             "attention test net?)", concat)
            dense = False
        flat = g.through(concat.output[0], ("Reshape",))
        ew, eb, x = g.linear(g.matmul(flat, "input embedding"), "input embedding")
        self.put(self.w.ip_emb_w, ew)
        self.put(self.w.ip_emb_b, eb)
        d_model = eb.size
        code, x = g.activation(x)
        if code not in (RELU, MISH):
            raise g.fail(f"default activation {ACTIVATION_NAMES.get(code)} (lc0 has relu or mish)")
        self.seen.default = code
        if dense:
            gamma, beta, eps, x = g.layer_norm(x, "embedding LayerNorm")
            self.put(self.w.ip_emb_ln_gammas, gamma)
            self.put(self.w.ip_emb_ln_betas, beta)
            self.seen.eps.append(("embedding LayerNorm", eps, 1e-3))
        x = self.gating(x, d_model)
        if dense:
            x = self.embedding_ffn(x)
        while self.is_encoder(x):
            x = self.encoder(self.w.encoder.add(), x, f"encoder {len(self.w.encoder) - 1}",
                             body=True, dense=dense)
            if len(self.w.encoder) == 1:
                self.w.headcount = self._heads
            elif self._heads != self.w.headcount:
                raise g.fail("encoder layers with different head counts")
        if self.smolgen_w is not None:
            self.put(self.w.smolgen_w, self.smolgen_w)
        return x

    def gating(self, x: str, d_model: int) -> str:
        g = self.g
        x = g.through(x, ("Reshape",))
        gates = {}
        for op, field in (("Mul", "ip_mult_gate"), ("Add", "ip_add_gate")):
            found = g.users(x)
            if len(found) == 1 and found[0].op_type == op:
                c, _ = g.const_in(found[0])
                if c.size != 64 * d_model:
                    raise g.fail(f"gate of {c.size} values for {d_model} channels", found[0])
                gates[field] = c.reshape(64, d_model).T  # lc0 stores [d_model][64]
                x = found[0].output[0]
        if len(gates) == 1:
            missing = "ip_add_gate" if "ip_mult_gate" in gates else "ip_mult_gate"
            gates[missing] = np.full((d_model, 64), 1.0 if missing == "ip_mult_gate" else 0.0)
            self.note(f"only one input gate; read the other as identity ({missing})")
        for field, values in gates.items():
            self.put(getattr(self.w, field), values)
        return g.through(x, ("Reshape",))

    def embedding_ffn(self, x: str) -> str:
        g = self.g
        w1, b1, f = g.linear(g.matmul(x, "embedding FFN"), "embedding FFN dense1")
        self.seen.emb_ffn, f = g.activation(f)
        w2, b2, f = g.linear(g.matmul(f, "embedding FFN"), "embedding FFN dense2")
        kind, value, s = self.residual(f, x, "embedding FFN")
        self.seen.alphas.append(("embedding FFN", kind, value))
        gamma, beta, eps, out = g.layer_norm(s, "embedding FFN LayerNorm")
        self.seen.eps.append(("embedding FFN LayerNorm", eps, 1e-3))
        ffn = self.w.ip_emb_ffn
        for field, values in (("dense1_w", w1), ("dense1_b", b1), ("dense2_w", w2),
                              ("dense2_b", b2)):
            self.put(getattr(ffn, field), values)
        self.put(self.w.ip_emb_ffn_ln_gammas, gamma)
        self.put(self.w.ip_emb_ffn_ln_betas, beta)
        return out

    def _projections(self, x: str) -> list:
        """Q/K/V-like projections of ``x``: dense, reshape to [-1, 64, heads, depth], transpose."""
        g, found = self.g, []
        for m in g.matmuls(x):
            adds = g.users(m.output[0], "Add")
            if len(adds) != 1:
                continue
            y = adds[0].output[0]
            reshapes = g.users(y, "Reshape")
            shape = g.const(reshapes[0].input[1]) if len(reshapes) == 1 else None
            if shape is None or shape.size != 4:
                continue
            transposes = g.users(reshapes[0].output[0], "Transpose")
            if len(transposes) == 1:
                found.append((m, [int(s) for s in shape],
                              list(_attr(transposes[0], "perm", [])), transposes[0].output[0]))
        return found

    def is_encoder(self, x: str) -> bool:
        return len(self._projections(x)) >= 3

    def residual(self, f: str, skip: str, what: str) -> tuple[str, float, str]:
        """How sublayer output ``f`` joins the skip ``skip``: (kind, scalar, sum).

        kind ``"output"``: ``alpha * f + skip`` (lc0), ``"skip"``: ``f + s * skip`` (converters
        before lc0 #1992), ``"none"``: ``f + skip``.
        """
        g = self.g
        found = g.users(f)
        if len(found) == 1 and found[0].op_type == "Mul" and g.scalar(found[0]) is not None:
            add = g.user(found[0].output[0], "Add", f"{what} scale")
            if skip not in add.input:
                raise g.fail(f"{what}: scaled output is not added to the skip", add)
            return "output", g.scalar(found[0]), add.output[0]
        if len(found) == 1 and found[0].op_type == "Add":
            other = [i for i in found[0].input if i != f]
            if other == [skip]:
                return "none", 1.0, found[0].output[0]
            src = g.producer.get(other[0]) if other else None
            if (src is not None and src.op_type == "Mul" and skip in src.input
                    and g.scalar(src) is not None):
                return "skip", g.scalar(src), found[0].output[0]
        raise g.fail(f"{what}: no residual connection", g.producer.get(f))

    def encoder(self, enc, x: str, what: str, *, body: bool, dense: bool) -> str:
        g = self.g
        projs = self._projections(x)
        by_input = {}
        for m, shape, perm, out in projs:
            for n in g.users(out, "MatMul"):
                by_input.setdefault(id(n), {})[list(n.input).index(out)] = (m, shape, perm, out, n)
        q = k = v = None
        for pair in by_input.values():
            if (0 in pair and 1 in pair and pair[0][2] == [0, 2, 1, 3]
                    and pair[1][2] == [0, 2, 3, 1]):
                q, k = pair[0], pair[1]
            elif list(pair) == [1] and pair[1][2] == [0, 2, 1, 3]:
                v = pair[1]
        if q is None or v is None:
            raise g.fail(f"{what}: cannot find the query, key and value projections",
                         g.producer.get(x))
        heads, depth = q[1][2], q[1][3]
        self._heads = heads
        for field, (m, *_rest) in (("q", q), ("k", k), ("v", v)):
            w, b, _ = g.linear(m, f"{what} {field.upper()}")
            self.put(getattr(enc.mha, f"{field}_w"), w)
            self.put(getattr(enc.mha, f"{field}_b"), b)
        qk = q[4]
        scale = g.user(qk.output[0], "Mul", f"{what} QK")
        s = scale.output[0]
        if not math.isclose(g.scalar(scale) or 0.0, 1 / math.sqrt(depth), rel_tol=4e-3):
            self.note(f"{what}: attention scale {g.scalar(scale)} is not 1/sqrt({depth}) "
                      "(converter before lc0 #1808?); the native module uses lc0's")
        adds = g.users(s, "Add")
        if adds:
            bias = [i for i in adds[0].input if i != s][0]
            compress = [m for m in g.matmuls(x) if not g.users(m.output[0], "Add")]
            if len(compress) != 1:
                raise g.fail(f"{what}: attention bias without a smolgen network", adds[0])
            self.smolgen(enc.mha.smolgen, compress[0], heads, bias, what)
            s = adds[0].output[0]
        softmax = g.user(s, "Softmax", f"{what} attention scores")
        av = g.user(softmax.output[0], "MatMul", f"{what} attention")
        if v[3] not in av.input:
            raise g.fail(f"{what}: attention does not weight the values", av)
        o = g.through(av.output[0], ("Transpose", "Reshape"))
        wo, bo, o = g.linear(g.matmul(o, f"{what} output"), f"{what} output projection")
        self.put(enc.mha.dense_w, wo)
        self.put(enc.mha.dense_b, bo)
        kind, value, h = self.residual(o, x, f"{what} attention")
        self.seen.alphas.append((what if body else "policy encoder", kind, value))
        gamma, beta, eps, h1 = g.layer_norm(h, f"{what} ln1")
        self.put(enc.ln1_gammas, gamma)
        self.put(enc.ln1_betas, beta)
        self.seen.eps.append((f"{what} ln1", eps, (1e-3 if dense else 1e-6) if body else 1e-6))
        w1, b1, f = g.linear(g.matmul(h1, f"{what} FFN"), f"{what} FFN dense1")
        code, f = g.activation(f)
        (self.seen.ffn if body else self.seen.policy_ffn).append(code)
        w2, b2, f = g.linear(g.matmul(f, f"{what} FFN"), f"{what} FFN dense2")
        kind2, value2, h = self.residual(f, h1, f"{what} FFN")
        if (kind2, value2) != (kind, value):
            raise g.fail(f"{what}: attention and FFN skips are scaled differently")
        gamma2, beta2, eps2, out = g.layer_norm(h, f"{what} ln2")
        self.seen.eps.append((f"{what} ln2", eps2, (1e-3 if dense else 1e-6) if body else 1e-6))
        for field, values in (("dense1_w", w1), ("dense1_b", b1), ("dense2_w", w2),
                              ("dense2_b", b2)):
            self.put(getattr(enc.ffn, field), values)
        self.put(enc.ln2_gammas, gamma2)
        self.put(enc.ln2_betas, beta2)
        return out

    def smolgen(self, sg, compress, heads: int, target: str, what: str) -> None:
        g = self.g
        wc, _, t = g.linear(compress, f"{what} smolgen compress", bias=False)
        self.put(sg.compress, wc)
        t = g.through(t, ("Reshape",))
        codes = []
        for i in (1, 2):
            w, b, t = g.linear(g.matmul(t, f"{what} smolgen"), f"{what} smolgen dense{i}")
            code, t = g.activation(t)
            codes.append(code)
            gamma, beta, eps, t = g.layer_norm(t, f"{what} smolgen ln{i}")
            self.seen.eps.append((f"{what} smolgen ln{i}", eps, 1e-3))
            self.put(getattr(sg, f"dense{i}_w"), w)
            self.put(getattr(sg, f"dense{i}_b"), b)
            self.put(getattr(sg, f"ln{i}_gammas"), gamma)
            self.put(getattr(sg, f"ln{i}_betas"), beta)
        if codes[0] != codes[1]:
            raise g.fail(f"{what}: smolgen layers use different activations")
        self.seen.smolgen.append(codes[0])
        t = g.through(t, ("Reshape",))
        gen = g.user(t, "MatMul", f"{what} smolgen generator")
        sw = g.const(gen.input[1])
        if sw is None or sw.ndim != 2 or sw.shape[1] != 4096:
            raise g.fail(f"{what}: smolgen weight generator is not a [gen, 4096] constant", gen)
        if self.smolgen_w is None:
            self.smolgen_w = np.ascontiguousarray(sw.T)
        elif not np.array_equal(self.smolgen_w, sw.T):
            raise g.fail(f"{what}: smolgen layers use different global weights", gen)
        if g.through(gen.output[0], ("Reshape",)) != target:
            raise g.fail(f"{what}: smolgen output is not added to the attention scores", gen)

    # --- heads ----------------------------------------------------------------------------

    def _check_gather(self, output: str, policy_map, what: str) -> None:
        from leela_interp.network.heads import gather_index

        node = self.g.producer.get(output)
        table = self.g.const(node.input[1]) if node is not None and node.op_type == "Gather" \
            else None
        if table is None or not np.array_equal(table.reshape(-1).astype(np.int64),
                                               gather_index(np.asarray(policy_map)).numpy()):
            raise self.g.fail(f"the {what} policy is not gathered with lc0's policy map", node)

    def policy(self, entry, output: str, attn_body: bool) -> int:
        from leela_interp.board.policy import ATTENTION_POLICY_MAP, CONV_POLICY_MAP

        g = self.g
        if entry.op_type == "Conv":
            kernel = g.const(entry.input[1])
            channels = kernel.shape[1]
            if kernel.shape[2:] == (3, 3):  # convolution policy
                w1, b1 = g.conv(entry, "policy conv1", channels, 3)
                y = self.act(entry.output[0], self.seen.default, "policy conv1")
                conv2 = g.user(y, "Conv", "policy conv1")
                w2, b2 = g.conv(conv2, "policy conv2", channels, 3)
                for block, (w, b) in ((self.w.policy1, (w1, b1)), (self.w.policy, (w2, b2))):
                    self.put(block.weights, w)
                    self.put(block.biases, b)
                self._check_gather(output, CONV_POLICY_MAP, "convolution")
                return 2
            w, b = g.conv(entry, "policy conv", channels, 1)  # classical policy
            self.put(self.w.policy.weights, w)
            self.put(self.w.policy.biases, b)
            y = g.through(self.act(entry.output[0], self.seen.default, "policy conv"),
                          ("Reshape", "Flatten"))
            pw, pb, out = g.linear(g.matmul(y, "policy"), "policy dense")
            if out != output:
                raise g.fail("the classical policy does not end at the policy output")
            self.put(self.w.ip_pol_w, pw)
            self.put(self.w.ip_pol_b, pb)
            return 1
        # Attention policy: on a conv body the NCHW output is first turned into tokens.
        if entry.op_type == "Transpose":
            t = g.through(entry.output[0], ("Reshape",))
            entry = g.matmul(t, "attention policy embedding")
        act = self.seen.default if attn_body else SELU
        pw, pb, e = g.linear(entry, "attention policy embedding")
        self.put(self.w.ip_pol_w, pw)
        self.put(self.w.ip_pol_b, pb)
        e = self.act(e, act, "attention policy embedding")
        while self.is_encoder(e):
            e = self.encoder(self.w.pol_encoder.add(), e,
                             f"policy encoder {len(self.w.pol_encoder) - 1}", body=False,
                             dense=False)
            self.w.pol_headcount = self._heads
        expect_ffn = ((self.seen.ffn[0] if self.seen.ffn else self.seen.default)
                      if attn_body else SELU)
        if any(c != expect_ffn for c in self.seen.policy_ffn):
            raise g.fail("policy encoder FFN activation differs from the one lc0 uses there")
        qk = {}
        for m in g.matmuls(e):
            w, b, y = g.linear(m, "attention policy Q/K")
            r = g.user(y, "Reshape", "attention policy Q/K").output[0]
            qk["k" if g.users(r, "Transpose") else "q"] = (w, b, r)
        if set(qk) != {"q", "k"}:
            raise g.fail("attention policy: cannot find the query and key projections")
        d_policy = qk["q"][1].size
        for field, key in (("ip2_pol", "q"), ("ip3_pol", "k")):
            self.put(getattr(self.w, f"{field}_w"), qk[key][0])
            self.put(getattr(self.w, f"{field}_b"), qk[key][1])
        kt = g.user(qk["k"][2], "Transpose", "policy keys").output[0]
        scores = [n for n in g.users(kt, "MatMul") if qk["q"][2] in n.input]
        scale = g.user(scores[0].output[0], "Mul", "policy scores") if scores else None
        if scale is None or not math.isclose(g.scalar(scale) or 0, 1 / math.sqrt(d_policy),
                                             rel_tol=4e-3):
            raise g.fail("attention policy scores are not scaled by 1/sqrt(d)", scale)
        promo = g.matmuls(g.user(qk["k"][2], "Slice", "policy keys").output[0])
        if len(promo) != 1:
            raise g.fail("attention policy: no promotion weights")
        p4, _, _ = g.linear(promo[0], "promotion offsets", bias=False)
        if p4.shape != (4, d_policy):
            raise g.fail(f"promotion weights of shape {list(p4.shape)}", promo[0])
        self.put(self.w.ip4_pol_w, p4)
        self._check_gather(output, ATTENTION_POLICY_MAP, "attention")
        return 3

    def _embed(self, entry, field_conv: str, field_ip: str, attn_body: bool, what: str) -> str:
        g = self.g
        if attn_body:
            if entry.op_type != "MatMul":
                raise g.fail(f"{what} does not start with a dense layer", entry)
            w, b, y = g.linear(entry, f"{what} embedding")
            self.put(getattr(self.w, f"{field_ip}_w"), w)
            self.put(getattr(self.w, f"{field_ip}_b"), b)
        else:
            if entry.op_type != "Conv":
                raise g.fail(f"{what} does not start with a convolution", entry)
            channels = g.const(entry.input[1]).shape[1]
            w, b = g.conv(entry, f"{what} convolution", channels, 1)
            self.put(getattr(self.w, field_conv).weights, w)
            self.put(getattr(self.w, field_conv).biases, b)
            y = entry.output[0]
        y = g.through(self.act(y, self.seen.default, what), ("Reshape", "Flatten"))
        return y

    def value(self, entry, output: str, attn_body: bool, wdl: bool) -> None:
        g = self.g
        y = self._embed(entry, "value", "ip_val", attn_body, "value head")
        w1, b1, h = g.linear(g.matmul(y, "value head"), "value dense1")
        h = self.act(h, self.seen.default, "value dense1")
        w2, b2, o = g.linear(g.matmul(h, "value head"), "value dense2")
        if b2.size != (3 if wdl else 1):
            raise g.fail(f"value head has {b2.size} outputs")
        end = g.producer.get(output)
        if o != output and (end is None or end.op_type not in ("Softmax", "Tanh")
                            or end.input[0] != o):
            raise g.fail("the value head does not end at the value output", end)
        for field, values in (("ip1_val_w", w1), ("ip1_val_b", b1), ("ip2_val_w", w2),
                              ("ip2_val_b", b2)):
            self.put(getattr(self.w, field), values)

    def moves_left(self, entry, output: str, attn_body: bool) -> None:
        g = self.g
        y = self._embed(entry, "moves_left", "ip_mov", attn_body, "moves-left head")
        w1, b1, h = g.linear(g.matmul(y, "moves-left head"), "moves-left dense1")
        h = self.act(h, self.seen.default, "moves-left dense1")
        w2, b2, o = g.linear(g.matmul(h, "moves-left head"), "moves-left dense2")
        code, end = g.activation(o)
        if end != output:
            raise g.fail("the moves-left head does not end at its output", g.producer.get(o))
        if code == MISH:
            self.note("moves-left output ends in mish (converters from lc0 #1825 to #2305); "
                      "the native module ends it in ReLU, as lc0 does")
        elif code != RELU:
            self.note(f"moves-left output ends in {ACTIVATION_NAMES.get(code)}; the native module "
                      "ends it in ReLU, as lc0 does")
        for field, values in (("ip1_mov_w", w1), ("ip1_mov_b", b1), ("ip2_mov_w", w2),
                              ("ip2_mov_b", b2)):
            self.put(getattr(self.w, field), values)

    # --- conventions ----------------------------------------------------------------------

    def note(self, message: str) -> None:
        self.seen.notes.append(message)

    def check_conventions(self) -> None:
        from leela_interp.network.transformer import deepnorm_alpha

        seen, g = self.seen, self.g
        n = len(self.w.encoder)
        alpha = deepnorm_alpha(n) if n else 1.0
        old = False
        for what, kind, value in seen.alphas:
            if what == "policy encoder":
                if kind != "none":
                    raise g.fail(f"policy encoder skip scaled by {value} (lc0 uses 1)")
            elif kind == "output" and math.isclose(value, alpha, rel_tol=4e-3):
                continue
            elif kind == "skip" and math.isclose(value, 1 / alpha, rel_tol=4e-3):
                old = True
            else:
                raise g.fail(f"{what}: residual scaling ({kind}, {value}) is not lc0's "
                             f"(2N)^-0.25 = {alpha} for N = {n} encoder layers")
        if old:
            self.note("pre-2024 DeepNorm convention LN(s*x + f), s = (2N)^0.25 (converter "
                      "before lc0 #1992); read as lc0's LN(x + f/s): equal up to LayerNorm "
                      "epsilon, which the export effectively divides by sqrt(2N)")
        if len(set(seen.ffn)) > 1 or len(set(seen.smolgen)) > 1:
            raise g.fail("encoder layers use different FFN or smolgen activations")
        if seen.emb_ffn is not None and seen.ffn and seen.emb_ffn != seen.ffn[0]:
            self.note(f"embedding FFN uses {ACTIVATION_NAMES.get(seen.emb_ffn)}, the encoders "
                      f"{ACTIVATION_NAMES.get(seen.ffn[0])} (converter before lc0 #1992); the "
                      "native module uses the encoders' FFN activation in both, as lc0 does")
        for what, eps, expected in seen.eps:
            if not math.isclose(eps, expected, rel_tol=1e-3):
                self.note(f"{what}: LayerNorm epsilon {eps:g}; the native module uses lc0's "
                          f"{expected:g}")


def read_model(path: Path) -> onnx.ModelProto:
    """The ONNX model in ``path`` (the reader and :class:`OnnxRuntimeNet` both start here).

    Raises:
        WeightsFormatError: the file is missing or not an ONNX model (message names the file).
    """
    try:
        return onnx.load(str(path))
    except FileNotFoundError as e:
        raise WeightsFormatError(f"{path}: cannot read ONNX file ({e.strerror})") from e
    except Exception as e:  # onnx raises DecodeError or ValueError by version
        raise WeightsFormatError(f"{path}: not an ONNX model ({e})") from e


def resolve_input_format(path: Path, model: onnx.ModelProto, input_format: int | None,
                         pb_path: str | Path | None) -> tuple[int, str]:
    """The net's lc0 input format and where it came from, by the rule of
    :func:`~leela_interp.network.loading.load_onnx` (``input_format``, else ``pb_path``, else
    the file's metadata, else a sibling ``.pb.gz`` / ``.pb``, else 1 with a logged warning).

    Raises:
        ConfigError: the format found is not an lc0 input format (message names its source).
    """
    from leela_interp.board.encoding import INPUT_FORMATS

    if input_format is not None:
        source = "the input_format argument"
    elif pb_path is not None:
        input_format, source = lc0w.net_format(lc0w.read_net(pb_path)).input_format, str(pb_path)
    else:
        meta = {p.key: p.value for p in model.metadata_props}
        siblings = [path.with_name(path.stem + s) for s in (".pb.gz", ".pb")]
        sibling = next((p for p in siblings if p.exists()), None)
        if "input_format" in meta:
            input_format, source = int(meta["input_format"]), "the file's metadata"
        elif sibling is not None:
            input_format = lc0w.net_format(lc0w.read_net(sibling)).input_format
            source = str(sibling)
        else:
            log.warning("%s: ONNX exports do not record the input format and no %s is next to "
                        "it; assuming 1 (INPUT_CLASSICAL_112_PLANE). Pass input_format= (or "
                        "pb_path=) if the net uses another.", path, siblings[0].name)
            return 1, "the default (not recorded in the file)"
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"input_format {input_format!r} (from {source}) is not one of "
                          f"{list(INPUT_FORMATS)}")
    return int(input_format), source


def read_onnx_net(path: str | Path, *, input_format: int | None = None,
                  pb_path: str | Path | None = None) -> Net:
    """The lc0 ``Net`` protobuf an ``lc0 leela2onnx`` export was made from.

    Weights are stored FLOAT32 (batch norm folded); the format fields are inferred from the
    graph. Arguments as for :func:`~leela_interp.network.loading.load_onnx`.
    ``write_net(read_onnx_net(p), "x.pb.gz")`` gives a network file lc0 >= 0.33 reads.

    Raises:
        WeightsFormatError: the file is not an ONNX model, or not a graph ``leela2onnx``
            writes for an architecture the native module supports (message names the file).
    """
    path = Path(path)
    return read_graph(read_model(path), path, input_format, pb_path)[0]


def read_graph(model: onnx.ModelProto, path: Path, input_format: int | None,
               pb_path: str | Path | None) -> tuple[Net, list[str], str]:
    """``(net, notes, source)``: the ``Net`` protobuf of ``model`` (read from ``path``), the
    notes on the older converters' conventions it found (see the package docstring) and where
    the input format came from (:func:`resolve_input_format`).

    Raises:
        WeightsFormatError: as :func:`read_onnx_net`.
        ConfigError: as :func:`resolve_input_format`.
    """
    graph = _Graph(model, str(path))
    reader = _Reader(graph)
    net = reader.read()
    fmt, source = resolve_input_format(path, model, input_format, pb_path)
    net.format.network_format.input = fmt
    return net, reader.seen.notes, source

