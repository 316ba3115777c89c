"""Data-flow view of an ONNX graph, for reading lc0 exports: constants, producers, consumers.

Matchers follow the flow from a tensor and raise :class:`WeightsFormatError` naming the file and
the node where the graph stops looking like an lc0 export. Activations are recognised by value:
the elementwise subgraph after a layer is evaluated on probe inputs and compared with lc0's
activation functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from leela_interp.errors import WeightsFormatError
from leela_interp.network.nonlinear import (MISH, NONE, RELU, RELU_2, SELU, SELU_ALPHA, SELU_SCALE,
                                            SIGMOID, SWISH, TANH)

INPUT_NAME = "/input/planes"
"""Name of the planes input, as ``leela2onnx`` writes it."""
OUTPUT_NAMES = {"policy": "/output/policy", "wdl": "/output/wdl", "value": "/output/value",
                "mlh": "/output/mlh"}
"""Output names ``leela2onnx`` writes (and :func:`export_onnx` writes), by role."""


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _tensor_array(t: onnx.TensorProto) -> np.ndarray:
    a = numpy_helper.to_array(t)
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        return a.astype(np.float32)
    return a


_ELEMENTWISE = {"Relu", "Add", "Sub", "Mul", "Div", "Exp", "Softplus", "Tanh", "Sigmoid", "Mish",
                "Selu", "Elu", "Greater", "Where", "Cast", "Identity", "Neg"}


def _eval_elementwise(node, args: list[np.ndarray]) -> np.ndarray:
    op, a = node.op_type, args
    if op == "Relu":
        return np.maximum(a[0], 0.0)
    if op == "Add":
        return a[0] + a[1]
    if op == "Sub":
        return a[0] - a[1]
    if op == "Mul":
        return a[0] * a[1]
    if op == "Div":
        return a[0] / a[1]
    if op == "Exp":
        return np.exp(a[0])
    if op == "Softplus":
        return np.logaddexp(0.0, a[0])
    if op == "Tanh":
        return np.tanh(a[0])
    if op == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-a[0]))
    if op == "Mish":
        return a[0] * np.tanh(np.logaddexp(0.0, a[0]))
    if op == "Selu":
        alpha = _attr(node, "alpha", 1.67326319217681884765625)
        gamma = _attr(node, "gamma", 1.05070102214813232421875)
        return gamma * np.where(a[0] > 0, a[0], alpha * np.expm1(a[0]))
    if op == "Elu":
        return np.where(a[0] > 0, a[0], _attr(node, "alpha", 1.0) * np.expm1(a[0]))
    if op == "Greater":
        return a[0] > a[1]
    if op == "Where":
        return np.where(a[0], a[1], a[2])
    if op == "Neg":
        return -a[0]
    return a[0]  # Cast, Identity


def _reference_activation(code: int, x: np.ndarray) -> np.ndarray:
    if code == RELU:
        return np.maximum(x, 0.0)
    if code == MISH:
        return x * np.tanh(np.logaddexp(0.0, x))
    if code == SWISH:
        return x / (1.0 + np.exp(-x))
    if code == SELU:
        return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x))
    if code == RELU_2:
        return np.maximum(x, 0.0) ** 2
    if code == TANH:
        return np.tanh(x)
    if code == SIGMOID:
        return 1.0 / (1.0 + np.exp(-x))
    return x


class _Graph:
    """Data-flow view of an ONNX graph: constants, producers, consumers, small matchers.

    Matchers raise :class:`WeightsFormatError` naming the file and the node where the graph
    stops looking like an lc0 export.
    """

    def __init__(self, model: onnx.ModelProto, path: str) -> None:
        self.path = path
        graph = model.graph
        self.nodes = list(graph.node)
        self.order = {id(n): i for i, n in enumerate(self.nodes)}
        self._raw = {t.name: t for t in graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        for n in self.nodes:
            if n.op_type == "Constant" and _attr(n, "value") is not None:
                self._arrays[n.output[0]] = _tensor_array(_attr(n, "value"))
        self.producer = {o: n for n in self.nodes for o in n.output}
        self._users: dict[str, list] = {}
        for n in self.nodes:
            for name in dict.fromkeys(n.input):
                self._users.setdefault(name, []).append(n)
        self.outputs = [o.name for o in graph.output]
        self.output_dims = _last_dims(model)
        self.inputs = list(graph.input)
        self._reach: dict[str, frozenset[str]] = {}

    # --- basics ---------------------------------------------------------------------------

    def fail(self, message: str, node=None) -> WeightsFormatError:
        where = f" (at node {node.name or node.op_type!r})" if node is not None else ""
        return WeightsFormatError(f"{self.path}: not a supported lc0 leela2onnx export: "
                                  f"{message}{where}")

    def is_const(self, name: str) -> bool:
        return name == "" or name in self._raw or name in self._arrays

    def const(self, name: str) -> np.ndarray | None:
        if name not in self._arrays:
            if name not in self._raw:
                return None
            self._arrays[name] = _tensor_array(self._raw[name])
        return self._arrays[name]

    def users(self, t: str, op: str | None = None) -> list:
        found = self._users.get(t, [])
        return [n for n in found if op is None or n.op_type == op]

    def user(self, t: str, op: str, what: str):
        found = self.users(t, op)
        if len(found) != 1:
            raise self.fail(f"expected one {op} after {what}, found {len(found)}",
                            self.producer.get(t))
        return found[0]

    def const_in(self, node) -> tuple[np.ndarray, str]:
        """The constant operand of a binary node, and the other operand."""
        a, b = node.input[0], node.input[1]
        if self.is_const(b) and not self.is_const(a):
            return self.const(b), a
        if self.is_const(a) and not self.is_const(b):
            return self.const(a), b
        raise self.fail("expected a constant operand", node)

    def scalar(self, node) -> float | None:
        """The value of a binary node's constant operand if it is a single number."""
        try:
            c, _ = self.const_in(node)
        except WeightsFormatError:
            return None
        return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None

    def through(self, t: str, ops: Sequence[str]) -> str:
        """Follow ``t`` through single-consumer nodes of the given (shape-only) kinds."""
        while True:
            found = self.users(t)
            if len(found) != 1 or found[0].op_type not in ops:
                return t
            t = found[0].output[0]

    def reaches(self, t: str) -> frozenset[str]:
        """The graph outputs that depend on tensor ``t``."""
        if t not in self._reach:
            stack, seen, found = [t], {t}, set()
            while stack:
                cur = stack.pop()
                if cur in self.outputs:
                    found.add(cur)
                for n in self.users(cur):
                    for o in n.output:
                        if o not in seen:
                            seen.add(o)
                            stack.append(o)
            self._reach[t] = frozenset(found)
        return self._reach[t]

    def upstream(self, t: str, stop: set[str]) -> list:
        """Nodes that ``t`` depends on, back to (not including) the tensors in ``stop``."""
        found, stack, seen = [], [t], {t}
        while stack:
            node = self.producer.get(stack.pop())
            if node is None or id(node) in {id(n) for n in found}:
                continue
            found.append(node)
            for i in node.input:
                if i and i not in stop and i not in seen:
                    seen.add(i)
                    stack.append(i)
        return found

    # --- layers ---------------------------------------------------------------------------

    def matmuls(self, t: str) -> list:
        """MatMul nodes computing ``t @ constant``."""
        return [n for n in self.users(t, "MatMul") if n.input[0] == t and self.is_const(n.input[1])]

    def matmul(self, t: str, what: str):
        found = self.matmuls(t)
        if len(found) != 1:
            raise self.fail(f"expected one dense layer ({what}), found {len(found)}",
                            self.producer.get(t))
        return found[0]

    def linear(self, node, what: str, bias: bool = True):
        """``MatMul`` (+ ``Add``) -> weight ``[out, in]``, bias ``[out]`` (or None), output."""
        w = self.const(node.input[1])
        if w is None or w.ndim != 2:
            raise self.fail(f"{what}: weight is not a constant matrix", node)
        out, b = node.output[0], None
        if bias:
            add = self.user(out, "Add", what)
            b, _ = self.const_in(add)
            b = b.reshape(-1)
            if b.size != w.shape[1]:
                raise self.fail(f"{what}: bias has {b.size} values for {w.shape[1]} outputs", add)
            out = add.output[0]
        return np.ascontiguousarray(w.T), b, out

    def conv(self, node, what: str, in_channels: int, kernel: int):
        w = self.const(node.input[1])
        if w is None or w.ndim != 4 or w.shape[1:] != (in_channels, kernel, kernel):
            raise self.fail(f"{what}: expected a [out, {in_channels}, {kernel}, {kernel}] "
                            f"kernel, got {None if w is None else list(w.shape)}", node)
        b = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        b = np.zeros(w.shape[0], np.float32) if b is None else b.reshape(-1)
        return w, b

    def activation(self, t: str) -> tuple[int, str]:
        """The activation applied to ``t``: (lc0 code, output tensor); (``NONE``, t) if none.

        The elementwise subgraph fed only by ``t`` and constants is evaluated on probe values
        and compared with each lc0 activation.
        """
        region, tensors, changed = [], {t}, True
        while changed:
            changed = False
            for cur in list(tensors):
                for n in self.users(cur):
                    if (n.op_type in _ELEMENTWISE and id(n) not in {id(r) for r in region}
                            and all(i in tensors or self.is_const(i) for i in n.input)):
                        region.append(n)
                        tensors.update(n.output)
                        changed = True
        if not region:
            return NONE, t
        ids = {id(r) for r in region}
        exits = [o for r in region for o in r.output
                 if o in self.outputs or any(id(u) not in ids for u in self.users(o))]
        if len(exits) != 1:
            raise self.fail(f"cannot tell where the activation after {t!r} ends", region[0])
        x = np.concatenate([np.linspace(-6, 6, 241), [-20.0, -0.125, 0.0, 0.125, 20.0]])
        values = {t: x}
        with np.errstate(all="ignore"):
            for n in sorted(region, key=lambda r: self.order[id(r)]):
                args = [values[i] if i in values else self.const(i).astype(np.float64)
                        for i in n.input]
                values[n.output[0]] = _eval_elementwise(n, args)
            y = values[exits[0]]
            for code in (RELU, MISH, SWISH, SELU, RELU_2, TANH, SIGMOID, NONE):
                ref = _reference_activation(code, x)
                if np.all(np.abs(y - ref) <= 1e-4 * (1 + np.abs(ref))):
                    return code, exits[0]
        raise self.fail(f"the function applied after {t!r} is not an lc0 activation", region[0])

    def layer_norm(self, t: str, what: str) -> tuple[np.ndarray, np.ndarray, float, str]:
        """A LayerNorm of ``t`` over its last axis: (gammas, betas, epsilon, output)."""
        found = self.users(t, "LayerNormalization")
        if found:
            n = found[0]
            if _attr(n, "axis", -1) not in (-1, 1):
                raise self.fail(f"{what}: LayerNorm over axis {_attr(n, 'axis')}", n)
            gamma = self.const(n.input[1]).reshape(-1)
            beta = self.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            beta = np.zeros_like(gamma) if beta is None else beta.reshape(-1)
            return gamma, beta, float(_attr(n, "epsilon", 1e-5)), n.output[0]
        # Decomposed: mean, centre, variance + eps, sqrt, reciprocal, scale, shift.
        src = t if self.users(t, "Sub") else self.through(t, ("Cast",))
        subs = [n for n in self.users(src, "Sub") if n.input[0] == src]
        if len(subs) != 1:
            raise self.fail(f"expected a LayerNorm ({what})", self.producer.get(t))
        c = subs[0].output[0]
        squares = [n for n in self.users(c, "Mul") if n.input[0] == n.input[1] == c]
        others = [n for n in self.users(c) if n.op_type in ("Mul", "Div") and n not in squares]
        if len(squares) != 1 or len(others) != 1:
            raise self.fail(f"expected a decomposed LayerNorm ({what})", subs[0])
        var = self.user(squares[0].output[0], "ReduceMean", f"{what} variance")
        eps = self.scalar(self.user(var.output[0], "Add", f"{what} epsilon"))
        y = self.through(others[0].output[0], ("Cast",))
        scale = self.user(y, "Mul", f"{what} gammas")
        gamma, _ = self.const_in(scale)
        shift = self.user(scale.output[0], "Add", f"{what} betas")
        beta, _ = self.const_in(shift)
        return gamma.reshape(-1), beta.reshape(-1), float(eps), shift.output[0]

    def output_roles(self) -> dict[str, str]:
        return _output_roles(self.outputs, self.producer, self.output_dims)

    def planes_input(self) -> str:
        """The planes input: ``/input/planes``, else the one input of shape [*, 112, 8, 8]."""
        names = [i.name for i in self.inputs if i.name not in self._raw]
        if INPUT_NAME in names:
            return INPUT_NAME
        shaped = [i.name for i in self.inputs if i.name not in self._raw
                  and [d.dim_value for d in i.type.tensor_type.shape.dim][1:] == [112, 8, 8]]
        if len(shaped) != 1:
            raise self.fail(f"no input named {INPUT_NAME!r} or of shape [batch, 112, 8, 8] "
                            f"(inputs: {names})")
        return shaped[0]


def _output_roles(outputs: list[str], producer: dict, dims: dict[str, int]) -> dict[str, str]:
    """Role (policy, wdl, value, mlh) -> output name: lc0's names, else the last dimension."""
    roles: dict[str, str] = {}
    for role, name in OUTPUT_NAMES.items():
        if name in outputs:
            roles[role] = name
    for name in outputs:
        if name in roles.values():
            continue
        d = dims.get(name)
        node = producer.get(name)
        role = {1858: "policy", 3: "wdl"}.get(d)
        if d == 1:
            role = "value" if node is not None and node.op_type == "Tanh" else "mlh"
        if role is not None and role not in roles:
            roles[role] = name
    return roles


def _last_dims(model: onnx.ModelProto) -> dict[str, int]:
    dims = {}
    for o in model.graph.output:
        shape = o.type.tensor_type.shape.dim
        if shape and shape[-1].HasField("dim_value"):
            dims[o.name] = shape[-1].dim_value
    return dims
