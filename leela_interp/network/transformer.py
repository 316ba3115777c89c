"""Attention-body ("transformer") components: embedding, smolgen, attention, MLP, encoder block.

Tokens are the 64 squares in the planes' order (side-to-move view, rank*8+file), shape
``[batch, 64, d_model]``. Every block is post-LayerNorm with lc0's DeepNorm scaling:
``x = LN(x + alpha * sublayer(x))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from leela_interp.network.hooks import HookPoint
from leela_interp.network.nonlinear import Activation


def deepnorm_alpha(n_layers: int) -> float:
    """lc0's skip scale ``(2N)^-0.25``, computed in double and rounded to float32 like lc0."""
    return float(torch.tensor(math.pow(2.0 * n_layers, -0.25), dtype=torch.float32))


def pos_encoding_table() -> torch.Tensor:
    """lc0's fixed PE_MAP positional encoding, ``[64 squares, 64 channels]``.

    Entry (s, c) is -1 when c == s, 1 when square c is a queen or knight move away from square s,
    else 0 (the rule that generates lc0's ``kPosEncoding`` table; checked entry by entry against
    lc0's own outputs by the test suite).
    """
    sq = torch.arange(64)
    dr = (sq[None, :] // 8 - sq[:, None] // 8).abs()
    df = (sq[None, :] % 8 - sq[:, None] % 8).abs()
    queen = (dr == 0) | (df == 0) | (dr == df)
    knight = ((dr == 1) & (df == 2)) | ((dr == 2) & (df == 1))
    table = (queen | knight).float()
    table[sq, sq] = -1.0
    return table


class Embedding(nn.Module):
    """Planes -> initial residual stream ``[B, 64, d_model]`` (PE_MAP or PE_DENSE).

    Hook: ``hook_out`` (after gating and, for PE_DENSE, the embedding FFN).
    """

    def __init__(self, *, d_model: int, dense_pos: int | None, act: int, ffn_act: int,
                 d_ff: int | None, gating: bool, alpha: float) -> None:
        super().__init__()
        self.dense_pos = dense_pos  # channels per square of the PE_DENSE encoding; None = PE_MAP
        if dense_pos is None:
            self.register_buffer("pos_table", pos_encoding_table(), persistent=False)
            n_in = 112 + 64
        else:
            self.preproc = nn.Linear(64 * 12, 64 * dense_pos)
            n_in = 112 + dense_pos
        self.linear = nn.Linear(n_in, d_model)
        self.act = Activation(act)
        self.ln = nn.LayerNorm(d_model, eps=1e-3) if dense_pos is not None else None
        if gating:
            self.mult_gate = nn.Parameter(torch.ones(64, d_model))
            self.add_gate = nn.Parameter(torch.zeros(64, d_model))
        else:
            self.mult_gate = self.add_gate = None
        if d_ff is not None:
            self.ffn = MLP(d_model, d_ff, ffn_act)
            self.ffn_ln = nn.LayerNorm(d_model, eps=1e-3)
        else:
            self.ffn = None
        self.alpha = alpha
        self.hook_out = HookPoint()

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        b = planes.shape[0]
        tokens = planes.reshape(b, 112, 64).transpose(1, 2)  # [B, 64 squares, 112]
        if self.dense_pos is None:
            pos = self.pos_table.to(tokens.dtype).expand(b, 64, 64)
        else:
            pieces = tokens[:, :, :12].reshape(b, 64 * 12)  # square-major, 12 piece planes
            pos = self.preproc(pieces).reshape(b, 64, self.dense_pos)
        x = self.act(self.linear(torch.cat([tokens, pos], dim=2)), inplace=True)
        if self.ln is not None:
            x = self.ln(x)
        if self.mult_gate is not None:
            x = x * self.mult_gate + self.add_gate
        if self.ffn is not None:
            x = self.ffn_ln(torch.add(x, self.ffn(x), alpha=self.alpha))
        return self.hook_out(x)


class MLP(nn.Module):
    """Two dense layers with an activation between them. Hooks [B, 64, d_ff]: ``hook_pre``
    (first dense layer's output, before the activation) and ``hook_post`` (after it)."""

    def __init__(self, d_model: int, d_ff: int, act: int) -> None:
        super().__init__()
        self.dense1 = nn.Linear(d_model, d_ff)
        self.hook_pre = HookPoint()
        self.act = Activation(act)
        self.dense2 = nn.Linear(d_ff, d_model)
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(self.dense1(x))  # in place only when no hook may hold it
        return self.dense2(self.hook_post(self.act(pre, inplace=not self.hook_pre.has_hooks())))


class Smolgen(nn.Module):
    """Per-layer smolgen: a position-dependent additive attention bias ``[B, H, 64, 64]``.

    ``global_w`` is the network-wide ``smolgen_w`` (shared by every layer), passed in at forward.
    """

    def __init__(self, d_model: int, n_heads: int, compress: int, hidden: int, gen: int,
                 act: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.compress = nn.Linear(d_model, compress, bias=False)
        self.dense1 = nn.Linear(64 * compress, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=1e-3)
        self.dense2 = nn.Linear(hidden, gen)
        self.ln2 = nn.LayerNorm(gen, eps=1e-3)
        self.act = Activation(act)

    def forward(self, x: torch.Tensor, global_w: nn.Linear) -> torch.Tensor:
        b = x.shape[0]
        c = self.compress(x).reshape(b, -1)
        z = self.ln1(self.act(self.dense1(c), inplace=True))
        g = self.ln2(self.act(self.dense2(z), inplace=True)).reshape(b, self.n_heads, -1)
        return global_w(g).reshape(b, self.n_heads, 64, 64)


class Attention(nn.Module):
    """Multi-head self-attention over the 64 square tokens, with optional smolgen.

    Hooks (``q``/``k``/``v``/``z`` are ``[B, H, 64, d_head]``, the others ``[B, H, 64 query,
    64 key]``): ``hook_q``, ``hook_k``, ``hook_v``, ``hook_smolgen`` (the additive bias),
    ``hook_scores`` (pre-softmax: ``q.k / sqrt(d_head)`` plus smolgen), ``hook_pattern``
    (post-softmax), ``hook_z`` (per-head output before the output projection), ``hook_result``
    (``[B, H, 64, d_model]``: each head's output in residual space, ``z_h W_O,h^T``; they sum,
    with the projection's bias, to the output).

    Two paths compute the same function. While a hook is registered on ``hook_scores`` or
    ``hook_pattern`` (:meth:`HookPoint.has_hooks`, asked on every forward pass),
    :meth:`attend`, the definition, materialises both; otherwise one fused
    ``scaled_dot_product_attention`` call, with the smolgen bias as its additive mask, goes
    from ``q``, ``k``, ``v`` to ``z`` without them (equal within float32 rounding; the speed is
    in docs/benchmarks.md). ``hook_q``, ``hook_k``, ``hook_v``, ``hook_smolgen`` and ``hook_z``
    run on both paths, so hooks there see and may replace the tensors the fused call uses.
    Likewise the output projection is one matmul unless ``hook_result`` is hooked; then the
    per-head results are materialised and summed.
    """

    def __init__(self, d_model: int, d_attn: int, n_heads: int,
                 smolgen: Smolgen | None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_attn // n_heads
        self.scale = 1.0 / math.sqrt(self.d_head)
        self.q = nn.Linear(d_model, d_attn)
        self.k = nn.Linear(d_model, d_attn)
        self.v = nn.Linear(d_model, d_attn)
        self.out = nn.Linear(d_attn, d_model)
        self.smolgen = smolgen
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        if smolgen is not None:
            self.hook_smolgen = HookPoint()
        self.hook_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()
        self.hook_result = HookPoint()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], 64, self.n_heads, self.d_head).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        """``z = softmax(q.k / sqrt(d_head) + bias) v`` through ``hook_scores``/``hook_pattern``."""
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(self.scale)
        if bias is not None:
            scores.add_(bias)
        pattern = self.hook_pattern(torch.softmax(self.hook_scores(scores), dim=-1))
        return torch.matmul(pattern, v)

    def forward(self, x: torch.Tensor, smolgen_w: nn.Linear | None = None) -> torch.Tensor:
        q = self.hook_q(self._heads(self.q(x)))
        k = self.hook_k(self._heads(self.k(x)))
        v = self.hook_v(self._heads(self.v(x)))
        bias = None
        if self.smolgen is not None:
            bias = self.hook_smolgen(self.smolgen(x, smolgen_w))
        if self.hook_scores.has_hooks() or self.hook_pattern.has_hooks():
            z = self.attend(q, k, v, bias)
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        z = self.hook_z(z)
        if self.hook_result.has_hooks():
            w_o = self.out.weight.reshape(-1, self.n_heads, self.d_head)  # [d_model, H, d_head]
            result = self.hook_result(torch.einsum("bhqe,dhe->bhqd", z, w_o))
            return result.sum(1) + self.out.bias
        return self.out(z.transpose(1, 2).reshape(x.shape[0], 64, -1))


class EncoderBlock(nn.Module):
    """One post-LN encoder layer: ``x = LN1(x + a*attn(x)); x = LN2(x + a*mlp(x))``.

    Hooks (all ``[B, 64, d_model]``): ``hook_resid_pre``, ``hook_attn_out`` (output projection,
    before the alpha scale), ``hook_resid_mid`` (after LN1), ``hook_mlp_out``,
    ``hook_resid_post`` (after LN2); sub-modules ``attn`` and ``mlp`` have their own.
    """

    def __init__(self, *, d_model: int, d_attn: int, n_heads: int, d_ff: int, ffn_act: int,
                 smolgen: Smolgen | None, alpha: float, eps: float) -> None:
        super().__init__()  # modules in forward order, so hook names list in that order
        self.hook_resid_pre = HookPoint()
        self.attn = Attention(d_model, d_attn, n_heads, smolgen)
        self.hook_attn_out = HookPoint()
        self.ln1 = nn.LayerNorm(d_model, eps=eps)
        self.hook_resid_mid = HookPoint()
        self.mlp = MLP(d_model, d_ff, ffn_act)
        self.hook_mlp_out = HookPoint()
        self.ln2 = nn.LayerNorm(d_model, eps=eps)
        self.hook_resid_post = HookPoint()
        self.alpha = alpha

    def forward(self, x: torch.Tensor, smolgen_w: nn.Linear | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(x, smolgen_w))
        x = self.hook_resid_mid(self.ln1(torch.add(x, attn_out, alpha=self.alpha)))
        x = self.ln2(torch.add(x, self.hook_mlp_out(self.mlp(x)), alpha=self.alpha))
        return self.hook_resid_post(x)
