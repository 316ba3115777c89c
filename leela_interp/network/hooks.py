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

from leela_interp.errors import UnknownHookError

#: ``fn(tensor, hook)`` -> None (observe) or a tensor of the same shape (replace).
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
    def hooks(self, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = ()) -> Iterator[None]:
        """Context manager: the given forward hooks are active inside the block, removed after.

        Each entry is ``(names, fn)``; ``names`` as in :meth:`match_hooks`. ``fn(tensor, hook)``
        returns None to leave the activation alone or a tensor to replace it.
        """
        handles = []
        try:
            for names, fn in fwd_hooks:
                for name in self.match_hooks(names):
                    point = self.hook_dict[name]
                    handles.append(point.register_forward_hook(
                        lambda module, args, output, fn=fn: fn(output, module)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, *args, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = (),
                       **kwargs):
        """``self(*args, **kwargs)`` with ``fwd_hooks`` active for this call only."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names: NamesFilter = None, device: str | None = None,
                       **kwargs) -> tuple[object, dict[str, torch.Tensor]]:
        """Run forward and return ``(output, cache)``, cache = {hook name: detached tensor}.

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
        return output, cache
