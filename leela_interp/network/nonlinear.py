"""lc0's activation functions, by ``NetworkFormat.ActivationFunction`` value.

The codes, their names and lc0's SELU constants are defined here once; the native modules and
the ONNX reader and writer (:mod:`leela_interp.network.onnx`) share them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leela_interp.errors import WeightsFormatError

MISH, RELU, NONE, TANH, SIGMOID, SELU, SWISH, RELU_2 = 1, 2, 3, 4, 5, 6, 7, 8
"""lc0's ``ActivationFunction`` codes (0, ``ACTIVATION_DEFAULT``, is resolved by
:func:`resolve`)."""
SELU_ALPHA, SELU_SCALE = 1.67326324, 1.05070098
"""lc0's SELU constants (``activation.cc``), not torch's longer ones."""


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x).square()


def _selu(x: torch.Tensor) -> torch.Tensor:
    return SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * torch.expm1(x))


def _relu2_(x: torch.Tensor) -> torch.Tensor:
    return torch.relu_(x).square_()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# code: (label, function, in-place function or None when there is none)
_FUNCTIONS = {
    MISH: ("mish", F.mish, lambda x: F.mish(x, inplace=True)),
    RELU: ("relu", torch.relu, torch.relu_),
    NONE: ("none", _identity, _identity),
    TANH: ("tanh", torch.tanh, torch.tanh_),
    SIGMOID: ("sigmoid", torch.sigmoid, torch.sigmoid_),
    SELU: ("selu", _selu, None),
    SWISH: ("swish", F.silu, lambda x: F.silu(x, inplace=True)),
    RELU_2: ("relu_2", _relu2, _relu2_),
}
ACTIVATION_NAMES: dict[int, str] = {code: name for code, (name, _, _) in _FUNCTIONS.items()}
"""Code -> lc0's name (``mish``, ``relu``, ..., ``relu_2``)."""


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
        self.label, self.fn, self.fn_ = _FUNCTIONS[code]

    def forward(self, x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """The activation of ``x``.

        Args:
            inplace: overwrite ``x`` with the result (saving an allocation) when the function
                has an in-place kernel and autograd does not track ``x``. Only for a fresh
                tensor that nothing else holds: never one a hook has seen.
        """
        if inplace and self.fn_ is not None and not x.requires_grad:
            return self.fn_(x)
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.label


def resolve(code: int, default: int) -> int:
    """lc0's rule: ``ACTIVATION_DEFAULT`` (0) means the net's default activation."""
    return default if code == 0 else code


def default_activation(default_activation_field: int) -> int:
    """``DefaultActivation`` (0 relu, 1 mish) -> ``ActivationFunction`` code."""
    return 1 if default_activation_field == 1 else 2
