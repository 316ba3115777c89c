"""lc0's activation functions, by ``NetworkFormat.ActivationFunction`` value."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leela_interp.errors import WeightsFormatError

# lc0's SELU constants (activation.cc), not torch's longer ones.
_SELU_ALPHA, _SELU_SCALE = 1.67326324, 1.05070098


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x).square()


def _selu(x: torch.Tensor) -> torch.Tensor:
    return _SELU_SCALE * torch.where(x > 0, x, _SELU_ALPHA * torch.expm1(x))


_FUNCTIONS = {
    1: ("mish", F.mish),
    2: ("relu", torch.relu),
    3: ("none", lambda x: x),
    4: ("tanh", torch.tanh),
    5: ("sigmoid", torch.sigmoid),
    6: ("selu", _selu),
    7: ("swish", F.silu),
    8: ("relu_2", _relu2),
}


class Activation(nn.Module):
    """An lc0 activation function as a module (so it shows in ``print(net)``).

    Args:
        code: lc0 ``ActivationFunction`` value (1 mish, 2 relu, 3 none, 4 tanh, 5 sigmoid,
            6 selu, 7 swish, 8 relu_2).
    """

    def __init__(self, code: int) -> None:
        super().__init__()
        if code not in _FUNCTIONS:
            raise WeightsFormatError(f"unsupported activation function {code!r}")
        self.code = code
        self.label, self.fn = _FUNCTIONS[code]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.label


def resolve(code: int, default: int) -> int:
    """lc0's rule: ``ACTIVATION_DEFAULT`` (0) means the net's default activation."""
    return default if code == 0 else code


def default_activation(default_activation_field: int) -> int:
    """``DefaultActivation`` (0 relu, 1 mish) -> ``ActivationFunction`` code."""
    return 1 if default_activation_field == 1 else 2
