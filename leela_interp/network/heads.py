"""Output heads: policy (convolution, classical, attention), value (WDL or tanh), moves left.

Body output arrives as NCHW ``[B, C, 8, 8]`` from a conv body and as tokens ``[B, 64, C]`` from
an attention body; each head takes what its kind of body gives. Every head ends in
``hook_logits`` (``hook_out`` for moves-left).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from leela_interp.network.hooks import HookPoint
from leela_interp.network.nonlinear import Activation
from leela_interp.network.transformer import EncoderBlock


def gather_index(policy_map: np.ndarray) -> torch.Tensor:
    """For each of the 1858 policy indices, the position in a head's raw output that holds it.

    Args:
        policy_map: raw output position -> policy index (-1 where none), as
            :data:`~leela_interp.board.policy.CONV_POLICY_MAP` and ``ATTENTION_POLICY_MAP``.

    Raises:
        RuntimeError: the map leaves a policy index without a position.
    """
    index = np.full(1858, -1, dtype=np.int64)
    used = np.nonzero(policy_map >= 0)[0]
    index[policy_map[used]] = used
    if (index < 0).any():
        raise RuntimeError("policy map does not cover all 1858 moves")
    return torch.from_numpy(index)


class ConvPolicyHead(nn.Module):
    """AlphaZero-style head: two 3x3 convolutions -> 73 move planes (of 80) -> 1858 logits."""

    def __init__(self, channels: int, policy_planes: int, act: int) -> None:
        super().__init__()
        from leela_interp.board.policy import CONV_POLICY_MAP

        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = Activation(act)
        self.conv2 = nn.Conv2d(channels, policy_planes, 3, padding=1)
        # lc0's map indexes plane*64 + square (``gather``, as the ONNX writer reads it); the
        # forward pass reads square*planes + plane, the order of the channels-last maps, which
        # then flatten without a copy.
        gather = gather_index(np.asarray(CONV_POLICY_MAP))
        self.register_buffer("gather", gather, persistent=False)
        self.register_buffer("_gather_by_square", gather % 64 * policy_planes + gather // 64,
                             persistent=False)
        self.hook_logits = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act(self.conv1(x), inplace=True))
        flat = out.permute(0, 2, 3, 1).reshape(out.shape[0], -1)  # square*planes + plane
        return self.hook_logits(flat[:, self._gather_by_square])


class ClassicalPolicyHead(nn.Module):
    """1x1 convolution + activation, flattened channel-major, then a dense layer to 1858."""

    def __init__(self, channels: int, policy_channels: int, act: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, policy_channels, 1)
        self.act = Activation(act)
        self.dense = nn.Linear(policy_channels * 64, 1858)
        self.hook_logits = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_logits(self.dense(self.act(self.conv(x), inplace=True).flatten(1)))


class AttentionPolicyHead(nn.Module):
    """Attention policy: logit(from, to) = q[from].k[to] / sqrt(d), plus promotion offsets.

    Hooks: ``hook_in`` [B, 64, C] (the head's input tokens), ``hook_scores`` [B, 64 from, 64 to]
    (scaled q.k), ``hook_logits`` [B, 1858].
    """

    def __init__(self, *, channels: int, embed: int, d_policy: int, act: int,
                 encoders: list[EncoderBlock], conv_body: bool) -> None:
        super().__init__()
        from leela_interp.board.policy import ATTENTION_POLICY_MAP

        self.conv_body = conv_body
        self.hook_in = HookPoint()
        self.embed = nn.Linear(channels, embed)
        self.act = Activation(act)
        self.encoders = nn.ModuleList(encoders)
        self.q = nn.Linear(embed, d_policy)
        self.k = nn.Linear(embed, d_policy)
        self.promotion = nn.Linear(d_policy, 4, bias=False)
        self.scale = 1.0 / math.sqrt(d_policy)
        self.register_buffer("gather", gather_index(np.asarray(ATTENTION_POLICY_MAP)),
                             persistent=False)
        self.hook_scores, self.hook_logits = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, smolgen_w: nn.Linear | None = None) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2) if self.conv_body else x
        e = self.act(self.embed(self.hook_in(tokens)), inplace=True)
        for encoder in self.encoders:
            e = encoder(e, smolgen_w)
        q, k = self.q(e), self.k(e)
        scores = self.hook_scores(torch.matmul(q, k.transpose(1, 2)) * self.scale)
        # Promotion offsets from the keys of the last rank: [B, 8 files, 4] (q, r, b, knight).
        offsets = self.promotion(k[:, 56:64])
        offsets = offsets[:, :, :3] + offsets[:, :, 3:4]
        # promo[b, from_file, to_file, piece] = scores[48 + from_file, 56 + to_file] + offset.
        promo = scores[:, 48:56, 56:64, None] + offsets[:, None, :, :]
        flat = torch.cat([scores.flatten(1), promo.flatten(1)], dim=1)
        return self.hook_logits(flat[:, self.gather])


class ValueHead(nn.Module):
    """Value or moves-left head: per-square embedding -> dense + act -> dense.

    On a conv body the embedding is a 1x1 convolution flattened channel-major; on an attention
    body a dense layer on the tokens flattened square-major (as lc0 does). Hook: ``hook_in``
    [B, 64, C] (the head's input) and ``hook_logits`` (WDL logits [B, 3], or the pre-tanh /
    pre-ReLU scalar [B, 1]).
    """

    def __init__(self, *, channels: int, embed: int, hidden: int, outputs: int, act: int,
                 conv_body: bool) -> None:
        super().__init__()
        self.conv_body = conv_body
        self.hook_in = HookPoint()
        self.embed = nn.Conv2d(channels, embed, 1) if conv_body else nn.Linear(channels, embed)
        self.act = Activation(act)
        self.dense1 = nn.Linear(embed * 64, hidden)
        self.dense2 = nn.Linear(hidden, outputs)
        self.hook_logits = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_body:
            x = x.flatten(2).transpose(1, 2)
        x = self.hook_in(x)
        if self.conv_body:
            h = self.act(self.embed(x.transpose(1, 2).reshape(x.shape[0], -1, 8, 8)), inplace=True)
            h = h.flatten(1)
        else:
            h = self.act(self.embed(x), inplace=True).flatten(1)
        return self.hook_logits(self.dense2(self.act(self.dense1(h), inplace=True)))
