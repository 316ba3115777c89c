"""Native PyTorch modules for lc0 networks (see :func:`load_network`)."""

from leela_interp.network.loading import build_network, load_network
from leela_interp.network.net import LeelaNet, LeelaOutput, ModelConfig

__all__ = ["LeelaNet", "LeelaOutput", "ModelConfig", "build_network", "load_network"]
