"""The network: lc0 files (:mod:`~leela_interp.network.lc0`) and ONNX exports
(:mod:`~leela_interp.network.onnx`) in, native PyTorch modules out (see :func:`load_network`).
"""

from leela_interp.network.loading import build_network, load_network, load_onnx
from leela_interp.network.net import LeelaNet, LeelaOutput, ModelConfig

__all__ = ["LeelaNet", "LeelaOutput", "ModelConfig", "build_network", "load_network", "load_onnx"]
