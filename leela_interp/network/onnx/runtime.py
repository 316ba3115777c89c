"""Running an lc0 ONNX export with onnxruntime behind the native module's interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leela_interp.errors import WeightsFormatError
from leela_interp.identity import sha256_file
from leela_interp.network.net import LeelaNet, LeelaOutput
from leela_interp.network.onnx.graph import _last_dims, _output_roles
from leela_interp.network.onnx.reader import read_model, resolve_input_format
from leela_interp.network.onnx.writer import build_onnx_model


@dataclass(frozen=True)
class RuntimeConfig:
    """What :class:`OnnxRuntimeNet` knows of its network."""

    input_format: int
    """lc0 input format: how :meth:`OnnxRuntimeNet.encode` builds the planes."""
    value: str
    """``"wdl"`` or ``"classical"``."""
    moves_left: bool
    """Whether the export has a moves-left output."""


class OnnxRuntimeNet:
    """An lc0 ONNX export run by onnxruntime, with the native module's calling interface.

    ``net(planes)`` returns a :class:`~leela_interp.network.net.LeelaOutput` (CPU tensors);
    :meth:`encode` and :meth:`move_probabilities` are :class:`LeelaNet`'s own. No hooks: use it
    where only outputs are needed (e.g. filtering puzzles), the native module elsewhere.

    Args:
        source: an ``.onnx`` file (``lc0 leela2onnx`` export or :func:`export_onnx` output), or
            a :class:`LeelaNet`, which is exported in memory.
        input_format: the net's lc0 input format; None = the module's, or for a file as in
            :func:`~leela_interp.network.loading.load_onnx` (metadata, a sibling ``.pb.gz``,
            else 1 with a warning).
        threads: onnxruntime intra-op threads (None = onnxruntime's default).
        providers: onnxruntime execution providers (default CPU).

    Attributes:
        config: a :class:`RuntimeConfig` (``config.input_format`` drives :meth:`encode`).
        sha256: the weights' identity: the module's ``sha256`` (of its source file), or the
            ``.onnx`` file's.
        path: the source file.
    """

    encode = LeelaNet.encode
    move_probabilities = LeelaNet.move_probabilities

    def __init__(self, source: LeelaNet | str | Path, *, input_format: int | None = None,
                 threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        if isinstance(source, LeelaNet):
            model = build_onnx_model(source)
            if input_format is None:
                input_format = source.config.input_format
            self.path, self.sha256 = source.path, source.sha256
            data: bytes | str = model.SerializeToString()
        else:
            path = Path(source)
            model = read_model(path)
            input_format, _ = resolve_input_format(path, model, input_format, None)
            self.path, self.sha256 = str(path), sha256_file(path)
            data = str(path)
        producers = {o: n for n in model.graph.node for o in n.output}
        self._roles = _output_roles([o.name for o in model.graph.output], producers,
                                    _last_dims(model))
        if "policy" not in self._roles or not ({"wdl", "value"} & set(self._roles)):
            raise WeightsFormatError(f"{self.path}: outputs {[o.name for o in model.graph.output]}"
                                     " lack an lc0 policy and value/wdl output")
        wdl_node = producers.get(self._roles.get("wdl", ""))
        self._wdl_logits = "wdl" in self._roles and (wdl_node is None
                                                     or wdl_node.op_type != "Softmax")
        self._input = model.graph.input[0].name
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.config = RuntimeConfig(input_format=int(input_format),
                                    value="wdl" if "wdl" in self._roles else "classical",
                                    moves_left="mlh" in self._roles)

    def __call__(self, planes: torch.Tensor) -> LeelaOutput:
        """Evaluate ``[B, 112, 8, 8]`` planes; every output from the side to move's view."""
        feed = np.ascontiguousarray(planes.detach().to("cpu", torch.float32).numpy())
        names = list(self._roles.values())
        got = dict(zip(self._roles, (torch.from_numpy(a) for a in
                                     self.session.run(names, {self._input: feed}))))
        wdl = got.get("wdl")
        if wdl is not None:
            if self._wdl_logits:
                wdl = torch.softmax(wdl, dim=1)
            value = (wdl[:, 0] - wdl[:, 2]).unsqueeze(1)
        else:
            value = got["value"]
        return LeelaOutput(policy_logits=got["policy"], value=value, wdl=wdl, mlh=got.get("mlh"))

    def __repr__(self) -> str:
        return f"OnnxRuntimeNet({self.path!r}, input_format={self.config.input_format})"
