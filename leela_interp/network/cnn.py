"""Convolutional-body components: input convolution and (SE-)residual blocks.

Inside the body the stream is NCHW ``[B, C, 8, 8]``; every hook point sees it as square tokens
``[B, 64, C]`` (square = rank*8+file in the side-to-move view, like the transformer's tokens), a
view that costs no copy. A hook may return a replacement of the same token shape.
"""

from __future__ import annotations

import torch
from torch import nn

from leela_interp.network.hooks import HookPoint
from leela_interp.network.nonlinear import Activation


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, 8, 8]`` -> ``[B, 64, C]`` (a view; contiguous when ``x`` is channels-last)."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(t: torch.Tensor) -> torch.Tensor:
    """``[B, 64, C]`` -> ``[B, C, 8, 8]`` (a view when ``t`` came from :func:`to_tokens`)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], 8, 8)


def hooked(hook: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """Pass NCHW ``x`` through ``hook`` as tokens and return the (maybe replaced) NCHW tensor."""
    return from_tokens(hook(to_tokens(x)))


class InputConv(nn.Module):
    """3x3 convolution of the 112 planes + activation. Hook: ``hook_out`` [B, 64, C]."""

    def __init__(self, channels: int, act: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(112, channels, 3, padding=1)
        self.act = Activation(act)
        self.hook_out = HookPoint()

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return hooked(self.hook_out, self.act(self.conv(planes), inplace=True))


class SqueezeExcite(nn.Module):
    """lc0's SE unit: per-channel gate and bias from the pooled conv2 output.

    Hook: ``hook_gate`` [B, C], the sigmoid gate (``hook_bias`` [B, C], the additive part).
    """

    def __init__(self, channels: int, se_channels: int, act: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, se_channels)
        self.act = Activation(act)
        self.fc2 = nn.Linear(se_channels, 2 * channels)
        self.hook_gate, self.hook_bias = HookPoint(), HookPoint()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.fc2(self.act(self.fc1(z.mean(dim=(2, 3))), inplace=True))
        gamma, beta = e.chunk(2, dim=1)
        return self.hook_gate(torch.sigmoid(gamma)), self.hook_bias(beta)


class ResidualBlock(nn.Module):
    """``x = act(se(conv2(act(conv1(x)))) + x)``, BN folded into the convolutions.

    Hooks ([B, 64, C]): ``hook_resid_pre``, ``hook_conv1`` (after its activation), ``hook_conv2``
    (conv2 output with bias, before SE), ``hook_resid_post``; ``se.hook_gate`` [B, C].
    """

    def __init__(self, channels: int, se_channels: int | None, act: int) -> None:
        super().__init__()  # modules in forward order, so hook names list in that order
        self.hook_resid_pre = HookPoint()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = Activation(act)
        self.hook_conv1 = HookPoint()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.hook_conv2 = HookPoint()
        self.se = SqueezeExcite(channels, se_channels, act) if se_channels else None
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = hooked(self.hook_resid_pre, x)
        y = hooked(self.hook_conv1, self.act(self.conv1(x), inplace=True))
        z = hooked(self.hook_conv2, self.conv2(y))
        # The sum overwrites z when nothing else can hold it (no hook on hook_conv2, no
        # autograd), else it is one new tensor; the rest is in place. Hooks may hold x.
        into = None if self.hook_conv2.has_hooks() or z.requires_grad else z
        if self.se is not None:
            gamma, beta = self.se(z)
            out = torch.addcmul(x, gamma[:, :, None, None], z, out=into)
            out.add_(beta[:, :, None, None])
        else:
            out = torch.add(z, x, out=into)
        return hooked(self.hook_resid_post, self.act(out, inplace=True))
