"""The activation cache of :meth:`~leela_interp.network.hooks.HookedModule.run_with_cache`, with
TransformerLens's tools: short names, stacks with labels, accumulated residual stream, per-head
results, a logit lens, device moves and batch slices; and gradients of a metric.

An :class:`ActivationCache` is a read-only mapping ``hook name -> tensor`` (so code that used
the plain dict keeps working) that also takes ``cache["resid_post", 3]``. Which TransformerLens
tools do not carry over to lc0's post-LayerNorm blocks, and why, is in ``docs/hooks.md``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Union

import torch

from leela_interp.errors import HookError, UnknownHookError

_BLOCK = "blocks.{layer}.hook_{kind}"
_ATTN = "blocks.{layer}.attn.hook_{kind}"
#: Short names of :func:`act_name`: kind -> (template, alias of).
_KINDS: dict[str, str] = {
    **{k: _BLOCK for k in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post",
                           "conv1", "conv2")},
    **{k: _ATTN for k in ("q", "k", "v", "smolgen", "scores", "pattern", "z", "result")},
    "pre": "blocks.{layer}.mlp.hook_pre", "post": "blocks.{layer}.mlp.hook_post",
    "gate": "blocks.{layer}.se.hook_gate", "se_bias": "blocks.{layer}.se.hook_bias",
    "embed": "embed.hook_out", "policy_logits": "policy_head.hook_logits",
    "value_logits": "value_head.hook_logits",
}
_ALIASES = {"mlp_pre": "pre", "mlp_post": "post", "attn_scores": "scores"}
#: A cache key: a hook name, or ``(kind, layer)`` as :func:`act_name` takes them.
Key = Union[str, tuple[str, int]]


def act_name(kind: str, layer: int | None = None) -> str:
    """The hook name of a short ``kind`` at ``layer``: ``act_name("resid_post", 3)`` is
    ``"blocks.3.hook_resid_post"``.

    Kinds: block ``resid_pre``, ``attn_out``, ``resid_mid``, ``mlp_out``, ``resid_post``,
    ``conv1``, ``conv2``; attention ``q``, ``k``, ``v``, ``smolgen``, ``scores`` (alias
    ``attn_scores``), ``pattern``, ``z``, ``result``; FFN ``pre`` / ``post`` (aliases
    ``mlp_pre`` / ``mlp_post``); SE ``gate``, ``se_bias``; and, without a layer, ``embed``,
    ``policy_logits``, ``value_logits``. A full hook name is returned as it is. Whether the
    network has that hook is not checked here (a cache or ``net.hook_names()`` says).

    Raises:
        UnknownHookError: an unknown kind, a layer kind without a layer, or a layer given to a
            kind that has none.
    """
    if "." in kind and layer is None:
        return kind
    kind = _ALIASES.get(kind, kind)
    if kind not in _KINDS:
        raise UnknownHookError(f"unknown activation kind {kind!r}; choose from "
                               f"{sorted(_KINDS) + sorted(_ALIASES)} or give a hook name")
    template = _KINDS[kind]
    if ("{layer}" in template) != (layer is not None):
        raise UnknownHookError(f"activation kind {kind!r} " + (
            "needs a layer: act_name(kind, layer)" if layer is None else
            f"has no layer (got layer={layer!r})"))
    return template.format(layer=layer, kind=kind)


class ActivationCache(Mapping):
    """Cached activations of one forward pass: ``hook name -> tensor [B, ...]``, forward order.

    Args:
        cache: the tensors, keyed by hook name.
        model: the network they came from (for :meth:`logit_lens` and layer counts).
    """

    def __init__(self, cache: Mapping[str, torch.Tensor], model) -> None:
        self._cache = dict(cache)
        self.model = model

    # --- the mapping ------------------------------------------------------------------------

    def __getitem__(self, key: Key) -> torch.Tensor:
        name = act_name(*key) if isinstance(key, tuple) else key
        try:
            return self._cache[name]
        except KeyError:
            raise UnknownHookError(
                f"{name!r} is not in this cache ({len(self._cache)} hooks); cache it with "
                f"net.run_with_cache(planes, names=[..., {name!r}])") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, tuple):
            key = act_name(*key)
        return key in self._cache

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hooks: {', '.join(list(self)[:3])}, ...)"

    # --- whole-cache transforms ---------------------------------------------------------------

    def to(self, device: str | torch.device) -> "ActivationCache":
        """A new cache with every tensor on ``device``."""
        return ActivationCache({k: v.to(device) for k, v in self._cache.items()}, self.model)

    def batch(self, rows: int | slice | Sequence[int] | torch.Tensor) -> "ActivationCache":
        """A new cache of the boards ``rows`` (an int keeps the batch axis, with length 1)."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1 if rows != -1 else None)
        elif not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long)
        return ActivationCache({k: v[rows] for k, v in self._cache.items()}, self.model)

    # --- stacks -------------------------------------------------------------------------------

    def stack(self, names: str | Iterable[Key]) -> tuple[torch.Tensor, list[str]]:
        """Cached tensors stacked on a new first axis, and their names as labels.

        Args:
            names: a glob over this cache's names (``"blocks.*.hook_resid_post"``), or a list
                of names / ``(kind, layer)`` keys. A glob stacks in forward order.

        Returns:
            ``(stacked [n, B, ...], labels)``.

        Raises:
            UnknownHookError: a glob matching nothing cached, or a missing name.
        """
        if isinstance(names, str):
            labels = fnmatch.filter(self._cache, names)
            if not labels:
                raise UnknownHookError(f"{names!r} matches nothing in this cache")
        else:
            labels = [act_name(*k) if isinstance(k, tuple) else k for k in names]
        return torch.stack([self[n] for n in labels]), labels

    def resid_entering(self, layer: int) -> torch.Tensor:
        """The residual stream entering block ``layer`` ``[B, 64, d]``; ``layer = n_layers``:
        the body's output (what the heads read).

        Read from ``hook_resid_pre`` or, equal in lc0's post-LN blocks, the previous block's
        ``hook_resid_post`` (``embed.hook_out`` for layer 0), whichever is cached.
        """
        n = self.model.config.n_layers
        if not 0 <= layer <= n:
            raise UnknownHookError(f"layer {layer!r} out of range 0..{n} (n_layers={n})")
        candidates = ([f"blocks.{layer}.hook_resid_pre"] if layer < n else []) + (
            [f"blocks.{layer - 1}.hook_resid_post"] if layer > 0 else ["embed.hook_out"])
        for name in candidates:
            if name in self._cache:
                return self._cache[name]
        raise UnknownHookError(f"neither {' nor '.join(candidates)} is in this cache; cache "
                               f"them with net.run_with_cache(planes, names=[...])")

    def accumulated_resid(self, layer: int | None = None, *,
                          incl_mid: bool = False) -> tuple[torch.Tensor, list[str]]:
        """The residual stream entering each block ``0 .. layer`` (``layer`` included;
        default ``n_layers``, whose entry is the body's output).

        Args:
            layer: the last position (``0 .. n_layers``).
            incl_mid: also each block's ``hook_resid_mid`` after its ``_pre`` (transformers).

        Returns:
            ``(stacked [n, B, 64, d], labels)``; labels ``"0_pre"``, (``"0_mid"``), ...,
            ``"final_post"`` for the body's output.
        """
        n_layers = self.model.config.n_layers
        layer = n_layers if layer is None else layer
        tensors, labels = [], []
        for l in range(layer + 1):
            tensors.append(self.resid_entering(l))
            labels.append("final_post" if l == n_layers else f"{l}_pre")
            if incl_mid and l < min(layer, n_layers):
                tensors.append(self[f"blocks.{l}.hook_resid_mid"])
                labels.append(f"{l}_mid")
        return torch.stack(tensors), labels

    def stack_head_results(self, layer: int | None = None) -> tuple[torch.Tensor, list[str]]:
        """Every head's output in residual space for blocks ``0 .. layer-1`` (default all),
        from the cached ``blocks.{l}.attn.hook_result`` (cache them first).

        Returns:
            ``(stacked [layers * heads, B, 64, d], labels "L{l}H{h}")``; a layer's heads sum,
            with the output projection's bias, to its ``hook_attn_out``.
        """
        layer = self.model.config.n_layers if layer is None else layer
        parts, labels = [], []
        for l in range(layer):
            result = self[f"blocks.{l}.attn.hook_result"]  # [B, H, 64, d]
            parts.append(result.transpose(0, 1))
            labels += [f"L{l}H{h}" for h in range(result.shape[1])]
        return torch.cat(parts), labels

    # --- the logit lens -----------------------------------------------------------------------

    def logit_lens(self, layer: int):
        """The heads (policy, value, moves left) run on the stream after block ``layer``.

        lc0's blocks end in a LayerNorm, so every ``hook_resid_post`` is already normalised as
        the heads expect: this is ``net(start_at_layer=n_layers, resid=...)`` on it, without
        gradients. ``layer = n_layers - 1`` gives the network's own output.

        Returns:
            A :class:`~leela_interp.network.net.LeelaOutput`.
        """
        with torch.no_grad():
            return self.model(start_at_layer=self.model.config.n_layers,
                              resid=self.resid_entering(layer + 1))


def gradient_cache(net, metric: Callable[[object], torch.Tensor], *args, names=None,
                   **kwargs) -> tuple[object, ActivationCache, ActivationCache]:
    """One forward and one backward pass: activations and the gradient of ``metric`` with
    respect to each of them.

    Args:
        net: the network.
        metric: ``metric(output)`` -> a scalar tensor (sum per-board values: boards do not
            interact, so each board's gradient is that of its own term).
        *args, **kwargs: the forward pass's arguments (``planes``, or ``start_at_layer`` and
            ``resid``).
        names: which hooks (as in ``run_with_cache``; None = every hook).

    Returns:
        ``(output, activations, gradients)``: two caches with the same keys; the output is
        detached.

    Raises:
        HookError: ``metric`` did not return a scalar tensor.
    """
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, hook) -> None:
        acts[hook.name] = t.detach()

    def keep_grad(g: torch.Tensor, hook) -> None:
        grads[hook.name] = g.detach()

    with torch.enable_grad():
        out = net.run_with_hooks(*args, fwd_hooks=[(names, keep)],
                                 bwd_hooks=[(names, keep_grad)], **kwargs)
        value = metric(out)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise HookError(f"metric must return a scalar tensor, got "
                            f"{getattr(value, 'shape', type(value).__name__)}; sum over boards")
        value.backward()
    # In forward order; zeros where the metric does not depend on the activation.
    grads = {name: grads.get(name, torch.zeros_like(t)) for name, t in acts.items()}
    if hasattr(out, "__dataclass_fields__"):
        out = type(out)(**{k: None if v is None else v.detach() for k, v in vars(out).items()})
    else:
        out = out.detach()
    return out, ActivationCache(acts, net), ActivationCache(grads, net)
