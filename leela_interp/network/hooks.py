"""Hook points: a named identity module around every activation, TransformerLens-style.

A hook's name is its module path in the network (``blocks.3.attn.hook_pattern``), so there is no
second registry to drift. Hooks are PyTorch forward hooks on :class:`HookPoint` modules; the
:class:`HookedModule` methods add them for one call or one ``with`` block and always remove them.

Warning:
    PyTorch hooks are global state on the module. Use :meth:`HookedModule.hooks` (or
    ``run_with_hooks`` / ``run_with_cache``), which remove every hook they add even when the
    forward pass raises, instead of registering hooks by hand.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from typing import Union

import torch
from torch import nn
from torch.nn.modules import module as _module

from leela_interp.errors import HookError, UnknownHookError
from leela_interp.network.cache import ActivationCache

#: ``fn(tensor, hook)`` -> None (observe) or a tensor of the same shape and dtype (replace);
#: as a backward hook ``fn(grad, hook)`` likewise.
HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
#: A hook name, a glob (``blocks.*.hook_resid_post``), a list of those, or a predicate on names.
NamesFilter = Union[str, Iterable[str], Callable[[str], bool], None]


class HookPoint(nn.Module):
    """Identity module marking one activation. ``name`` is set by :class:`HookedModule`."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def has_hooks(self) -> bool:
        """Whether calling this point would run any hook.

        The test PyTorch's ``Module.__call__`` makes before it skips hooks: this point's forward,
        forward-pre and backward hooks (however they were registered: :meth:`HookedModule.hooks`,
        ``run_with_hooks``, ``run_with_cache`` or ``register_forward_hook``), and the global
        module hooks of ``torch.nn.modules.module.register_module_forward_hook`` and its kin.
        A module that skips computing an activation when its point is unhooked asks this, for
        each forward pass.
        """
        return bool(self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                    or self._backward_pre_hooks or _module._global_forward_hooks
                    or _module._global_forward_pre_hooks or _module._global_backward_hooks
                    or _module._global_backward_pre_hooks)

    def extra_repr(self) -> str:
        return self.name


class HookedModule(nn.Module):
    """Root module mixin: names its hook points and runs forward passes with temporary hooks."""

    def setup_hooks(self) -> None:
        """Stamp every :class:`HookPoint` with its module path. Call at the end of ``__init__``."""
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def match_hooks(self, names: NamesFilter) -> list[str]:
        """Hook names selected by ``names`` (None = all), in forward order.

        Raises:
            UnknownHookError: an exact name or a glob that matches no hook point.
        """
        all_names = list(self.hook_dict)
        if names is None:
            return all_names
        if callable(names):
            return [n for n in all_names if names(n)]
        patterns = [names] if isinstance(names, str) else list(names)
        selected: set[str] = set()
        for pattern in patterns:
            found = fnmatch.filter(all_names, pattern)
            if not found:
                raise UnknownHookError(
                    f"{pattern!r} matches no hook point; see net.hook_names() for the list")
            selected.update(found)
        return [n for n in all_names if n in selected]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = (),
              bwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = ()) -> Iterator[None]:
        """Context manager: the given hooks are active inside the block, removed after.

        Each entry is ``(names, fn)``; ``names`` as in :meth:`match_hooks`.

        - A forward hook ``fn(tensor, hook)`` returns None to leave the activation alone or a
          replacement of the same shape, dtype and device (else :class:`HookError`).
        - A backward hook ``fn(grad, hook)`` gets the gradient of whatever is later
          backpropagated with respect to the activation (same shape), and returns None or a
          replacement gradient. It is a tensor hook on the activation, so it fires on a
          ``backward()`` called after the block too, while the graph lives. The parameters are
          frozen (``requires_grad=False``), so where the activation is not already tracked by
          autograd it is replaced by an equal leaf that is: the pass needs autograd on (no
          ``torch.no_grad()``), else :class:`HookError`.

        Forward hooks on one point run in the order given, each on the previous one's result;
        backward hooks attach to the final (maybe replaced) activation.
        """
        handles = []
        try:
            for names, fn in fwd_hooks:
                for name in self.match_hooks(names):
                    handles.append(self.hook_dict[name].register_forward_hook(
                        lambda module, args, output, fn=fn: _checked(fn(output, module),
                                                                     output, module, "forward")))
            for names, fn in bwd_hooks:
                for name in self.match_hooks(names):
                    handles.append(self.hook_dict[name].register_forward_hook(
                        lambda module, args, output, fn=fn: _track(output, module, fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, *args, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = (),
                       bwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = (), **kwargs):
        """``self(*args, **kwargs)`` with ``fwd_hooks`` and ``bwd_hooks`` active for this call
        (see :meth:`hooks`); backward hooks fire on a later ``backward()`` of the output."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names: NamesFilter = None, device: str | None = None,
                       **kwargs) -> tuple[object, ActivationCache]:
        """Run forward and return ``(output, cache)``: an :class:`ActivationCache` of detached
        tensors (a mapping hook name -> tensor, in forward order).

        Args:
            names: which hooks to cache (name, glob, list or predicate; None = every hook).
            device: move cached tensors there (e.g. ``"cpu"``); None keeps them where they are.
        """
        cache: dict[str, torch.Tensor] = {}

        def store(tensor: torch.Tensor, hook: HookPoint) -> None:
            t = tensor.detach()
            cache[hook.name] = t.to(device) if device is not None else t

        with self.hooks([(names, store)]):
            output = self(*args, **kwargs)
        return output, ActivationCache(cache, self)


def _checked(result, like: torch.Tensor, point: HookPoint, kind: str):
    """``result`` if None or a tensor that can stand for ``like``; else :class:`HookError`."""
    if result is None:
        return None
    expected = (f"expected None or a tensor of shape {list(like.shape)}, dtype {like.dtype}, "
                f"device {like.device}")
    if not isinstance(result, torch.Tensor):
        raise HookError(f"{kind} hook on {point.name} returned {type(result).__name__}; "
                        f"{expected}")
    if result.shape != like.shape or result.dtype != like.dtype or result.device != like.device:
        raise HookError(f"{kind} hook on {point.name} returned shape {list(result.shape)}, "
                        f"dtype {result.dtype}, device {result.device}; {expected}")
    return result


def _track(output: torch.Tensor, point: HookPoint, fn: HookFn) -> torch.Tensor | None:
    """Attach backward hook ``fn`` to ``output``, first making it an autograd leaf if needed."""
    if not torch.is_grad_enabled():
        raise HookError(f"backward hook on {point.name} needs autograd; run the forward pass "
                        f"outside torch.no_grad() / torch.inference_mode()")
    leaf = None
    if not output.requires_grad:
        output = leaf = output.detach().requires_grad_(True)
    output.register_hook(lambda grad: _checked(fn(grad, point), grad, point, "backward"))
    return leaf
