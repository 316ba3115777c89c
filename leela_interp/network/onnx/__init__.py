"""ONNX in and out: ``lc0 leela2onnx`` exports as native modules, native modules as exports.

* :func:`~leela_interp.network.loading.load_onnx` (``leela_interp.network.load_onnx``, and
  :func:`leela_interp.load_network` on a ``.onnx`` path) reads an ``lc0 leela2onnx`` export (or one
  written by :func:`export_onnx`) back into the lc0 weights it was made from and builds the same
  native :class:`~leela_interp.network.net.LeelaNet` that :func:`leela_interp.load_network`
  builds from the ``.pb.gz``. :func:`read_onnx_net` stops at the ``Net`` protobuf (which
  :func:`leela_interp.network.lc0.weights.write_net` can save as an lc0 network file).
* :func:`export_onnx` writes a native module as the graph ``leela2onnx`` writes (same node and
  initializer names, same interface: input ``/input/planes`` ``[batch, 112, 8, 8]``, outputs
  ``/output/policy`` ``[batch, 1858]`` logits, ``/output/wdl`` softmax or ``/output/value``
  tanh, ``/output/mlh``), so the reader reads both.
* :class:`OnnxRuntimeNet` runs an export with onnxruntime behind the native module's
  ``__call__`` / ``encode`` / ``move_probabilities`` interface: a fast inference backend.

How the reader maps a graph back to weights. Nothing is taken from node names: the graph is
walked from ``/input/planes`` along the data flow, as ``leela2onnx``'s converter
(``src/neural/onnx/converter.cc``) lays it out, and each piece is recognised by its ops and
its constants' shapes (output names are used only to tell the heads apart, with the output
shapes as the fallback). Activations are recognised by evaluating the elementwise subgraph
after a layer on probe values, so every way the converter has written them (``Mish`` op,
softplus-tanh-mul, the two exp-based "alt mish" forms, ``Selu`` or elu-mul, swish, relu^2)
reads the same. LayerNorm is read from a ``LayerNormalization`` node or its decomposed form.
Batch norm arrives folded into the convolutions (the converter folds it), and is written as
plain weights and biases; ``MatMul`` weights ``[in, out]`` are transposed back to lc0's
``[out][in]``. Layers are stored FLOAT32, so nothing is re-quantised. ONNX files do not
record the input format (see :func:`~leela_interp.network.loading.load_onnx`).

Conventions of older converters, and what the native module does with them:

* DeepNorm scaling. lc0 computes ``LN(x + a*f(x))`` with ``a = (2N)^-0.25``; converters before
  lc0 PR #1992 (2024-03) wrote ``LN(s*x + f(x))`` with ``s = (2N)^+0.25`` (the scalar of the
  ``alpha*input`` node is > 1). Since ``LN(s*y; eps) = LN(y; eps/s^2)`` exactly,
  ``LN(s*x + f) = LN(x + f/s; eps/s^2)``: the same function as lc0's except that the
  epsilon is effectively divided by ``s^2 = sqrt(2N)``. The native module computes lc0's
  function (epsilon as lc0 uses it), so it differs from such an export's own outputs by that
  epsilon difference only: negligible for PE_MAP nets (epsilon 1e-6), up to roughly
  ``5e-4 * (1 - 1/sqrt(2N)) / var`` relative on a LayerNorm input of variance ``var`` for
  PE_DENSE nets (epsilon 1e-3).
* Moves-left head. Converters from lc0 PR #1825 (2022-12) to #2305 (2025-10) ended it with the
  default activation (mish on mish nets) instead of lc0's ReLU. The native module follows lc0
  (ReLU); on such an export's mish nets its ``mlh`` differs from the export's own output.
* Embedding FFN of PE_DENSE nets. Converters before #1992 used the default activation there
  instead of the net's FFN activation; the native module follows lc0 (the FFN activation).
* Gates. lc0's engine applies the input gates only when both exist, the converter each one that
  exists; a lone gate is read with an identity partner, which computes what the export does.

Every such case is logged as a warning and listed in ``net.config.details["onnx.notes"]``.

Modules: :mod:`~leela_interp.network.onnx.graph` (the data-flow view of a graph the reader walks),
:mod:`~leela_interp.network.onnx.reader`, :mod:`~leela_interp.network.onnx.writer`,
:mod:`~leela_interp.network.onnx.runtime`.

>>> import tempfile, torch
>>> from pathlib import Path
>>> from leela_interp import load_network
>>> from leela_interp.network import load_onnx
>>> from leela_interp.network.lc0.random_net import write_random_net
>>> tmp = Path(tempfile.mkdtemp())
>>> net = load_network(write_random_net(tmp / "t.pb.gz", body="transformer", policy="attention"))
>>> path = export_onnx(net, tmp / "t.onnx")
>>> back = load_onnx(path)
>>> planes = torch.rand(2, 112, 8, 8).round()
>>> bool((back(planes).policy_logits - net(planes).policy_logits).abs().max() < 1e-5)
True
>>> ort = OnnxRuntimeNet(path)
>>> bool((ort(planes).policy_logits - net(planes).policy_logits).abs().max() < 1e-4)
True
"""

from leela_interp.network.onnx.graph import INPUT_NAME, OUTPUT_NAMES
from leela_interp.network.onnx.reader import read_onnx_net
from leela_interp.network.onnx.runtime import OnnxRuntimeNet, RuntimeConfig
from leela_interp.network.onnx.writer import build_onnx_model, export_onnx

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OnnxRuntimeNet", "RuntimeConfig", "build_onnx_model",
           "export_onnx", "read_onnx_net"]
