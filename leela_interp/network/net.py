"""The native Leela network module and its output type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import chess
import torch
from torch import nn

from leela_interp.network.cnn import from_tokens, to_tokens
from leela_interp.network.hooks import HookedModule


@dataclass
class LeelaOutput:
    """What a forward pass returns. Every value is from the side to move's point of view."""

    policy_logits: torch.Tensor
    """Raw policy logits ``[B, 1858]`` in lc0's move order (no mask, no temperature)."""
    value: torch.Tensor
    """Expected score ``[B, 1]`` in [-1, 1]: ``W - L`` for a WDL net, ``tanh`` output otherwise."""
    wdl: torch.Tensor | None = None
    """Win/draw/loss probabilities ``[B, 3]``, or None for a classical-value net."""
    mlh: torch.Tensor | None = None
    """Moves-left estimate ``[B, 1]`` (plies), or None when the net has no moves-left head."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a loaded network, read from its weights (nothing is assumed)."""

    body: str
    """``"cnn"`` or ``"transformer"``."""
    n_layers: int
    """Residual blocks (cnn) or encoder layers (transformer)."""
    d_model: int
    """Channels (cnn) or embedding size (transformer)."""
    n_heads: int
    """Attention heads per encoder layer (0 for a cnn)."""
    input_format: int
    """lc0 input format (1-5, 132, 133): how :meth:`LeelaNet.encode` builds the planes."""
    policy: str
    """``"convolution"``, ``"classical"`` or ``"attention"``."""
    value: str
    """``"wdl"`` or ``"classical"``."""
    moves_left: bool
    """Whether the net has a moves-left head."""
    policy_head: str = "vanilla"
    """Which policy head of a multi-head net this module computes."""
    value_head: str = "winner"
    """Which value head of a multi-head net this module computes."""
    details: dict = field(default_factory=dict, compare=False)
    """Everything else worth printing (d_ff, smolgen sizes, activations, lc0 format names)."""


class LeelaNet(HookedModule):
    """A Leela Chess Zero network as a native PyTorch module with hook points.

    Build one with :func:`leela_interp.load_network`. ``net(planes)`` takes ``[B, 112, 8, 8]``
    planes (see :meth:`encode`) and returns a :class:`LeelaOutput`.

    Layers are counted from 0; ``blocks[l]`` is residual block / encoder layer ``l``. The
    residual stream is always presented as square tokens ``[B, 64, d_model]``.
    """

    def __init__(self, *, config: ModelConfig, embed: nn.Module, blocks: Sequence[nn.Module],
                 policy_head: nn.Module, value_head: nn.Module, mlh_head: nn.Module | None,
                 smolgen_w: nn.Linear | None, sha256: str = "", path: str = "") -> None:
        super().__init__()
        self.config = config
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.policy_head = policy_head
        self.value_head = value_head
        self.mlh_head = mlh_head
        self.smolgen_w = smolgen_w
        self.sha256 = sha256
        self.path = path
        self.setup_hooks()

    @property
    def _cnn(self) -> bool:
        return self.config.body == "cnn"

    def forward(self, planes: torch.Tensor | None = None, *, start_at_layer: int | None = None,
                resid: torch.Tensor | None = None,
                stop_at_layer: int | None = None) -> LeelaOutput | torch.Tensor:
        """Run the network.

        Args:
            planes: ``[B, 112, 8, 8]`` input planes (ignored when ``start_at_layer`` is given).
            start_at_layer: skip the embedding and blocks ``0 .. l-1``; ``resid`` is the residual
                stream entering block ``l`` (``blocks.{l}.hook_resid_pre``), ``[B, 64, d_model]``.
                ``start_at_layer=n_layers`` runs only the heads.
            resid: see ``start_at_layer``.
            stop_at_layer: return the residual stream entering block ``l`` (``[B, 64, d_model]``)
                instead of running blocks ``l ..`` and the heads.

        Returns:
            A :class:`LeelaOutput`, or the residual tensor when ``stop_at_layer`` is given.
        """
        param = self.embed.linear.weight if hasattr(self.embed, "linear") else \
            self.embed.conv.weight
        if start_at_layer is None:
            if planes is None:
                raise ValueError("give planes, or start_at_layer and resid")
            planes = planes.to(device=param.device, dtype=param.dtype)
            if self._cnn:  # oneDNN's convolutions are ~2x faster on channels-last maps
                planes = planes.contiguous(memory_format=torch.channels_last)
            x = self.embed(planes)
            start_at_layer = 0
        else:
            if resid is None:
                raise ValueError("start_at_layer needs resid, the residual stream [B, 64, d]")
            x = resid.to(device=param.device, dtype=param.dtype)
            if self._cnn:
                x = from_tokens(x)
        stop = len(self.blocks) if stop_at_layer is None else stop_at_layer
        for block in self.blocks[start_at_layer:stop]:
            x = block(x) if self._cnn else block(x, self.smolgen_w)
        if stop_at_layer is not None:
            return to_tokens(x) if self._cnn else x
        return self._heads(x)

    def _heads(self, x: torch.Tensor) -> LeelaOutput:
        if self.config.policy == "attention":
            policy = self.policy_head(x, self.smolgen_w)
        else:
            policy = self.policy_head(x)
        v = self.value_head(x)
        if self.config.value == "wdl":
            wdl = torch.softmax(v, dim=-1)
            value = (wdl[:, 0] - wdl[:, 2]).unsqueeze(1)
        else:
            wdl, value = None, torch.tanh(v)
        mlh = torch.relu(self.mlh_head(x)) if self.mlh_head is not None else None
        return LeelaOutput(policy_logits=policy, value=value, wdl=wdl, mlh=mlh)

    # --- boards in, probabilities out -------------------------------------------------------

    def encode(self, boards: Sequence[chess.Board], *,
               history_fill: str = "fen_only") -> torch.Tensor:
        """Input planes ``[B, 112, 8, 8]`` for ``boards`` in this net's input format.

        Each board's move stack is its history (``board.root()`` is the FEN lc0 would be given).
        """
        from leela_interp.board.encoding import encode

        return encode(boards, input_format=self.config.input_format, history_fill=history_fill)

    @torch.no_grad()
    def move_probabilities(self, boards: Sequence[chess.Board], *,
                           temperature: float = 1.0) -> list[dict[str, float]]:
        """Softmax of the policy over each board's legal moves only, keyed by UCI move.

        Args:
            boards: positions (with history in their move stacks).
            temperature: divides the logits before the softmax (lc0's search uses 1.359; the
                paper and this project's stages use 1).
        """
        from leela_interp.board.encoding import transform_for
        from leela_interp.board.policy import legal_moves_and_indices

        if not boards:
            return []
        logits = self(self.encode(boards)).policy_logits.float().cpu()
        result = []
        for board, row in zip(boards, logits):
            moves, index = legal_moves_and_indices(
                board, transform_for(board, self.config.input_format))
            if not moves:
                result.append({})
                continue
            p = torch.softmax(row[torch.as_tensor(index)] / temperature, dim=0)
            result.append({m.uci(): float(x) for m, x in zip(moves, p)})
        return result

    # --- introspection ----------------------------------------------------------------------

    def hook_names(self) -> dict[str, tuple[int, ...]]:
        """Every hook name, in forward order, with its activation's shape for one board."""
        param = next(self.parameters())
        planes = torch.zeros(1, 112, 8, 8, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            _, cache = self.run_with_cache(planes)
        return {name: tuple(cache[name].shape[1:]) for name in self.hook_dict if name in cache}

    def summary(self) -> dict[str, object]:
        """Format fields, architecture, parameter count and sha256, for ``stage=info``."""
        c = self.config
        return {
            "path": self.path,
            "sha256": self.sha256,
            "body": c.body,
            "layers": c.n_layers,
            "width": c.d_model,
            "heads": c.n_heads,
            "policy": c.policy,
            "value": c.value,
            "moves_left": c.moves_left,
            "policy_head": c.policy_head,
            "value_head": c.value_head,
            "parameters": sum(p.numel() for p in self.parameters()),
            **c.details,
        }
