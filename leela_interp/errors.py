"""Exceptions raised by leela_interp. Each also subclasses the matching builtin."""

from __future__ import annotations


class LeelaInterpError(Exception):
    """Base class of every error leela_interp raises on purpose."""


class WeightsFormatError(LeelaInterpError, ValueError):
    """A network file is unreadable, corrupt, or uses a feature that is not supported.

    The message always names the file and the reason.
    """


class ConfigError(LeelaInterpError, ValueError):
    """A configuration value is invalid; the message shows the value and the valid choices."""


class UnknownHookError(LeelaInterpError, KeyError):
    """A hook name (or pattern) matches no hook point of the network."""


class HookError(LeelaInterpError, ValueError):
    """A hook (or a function run with hooks) returned what the pass cannot use: a replacement
    of the wrong type, shape, dtype or device, or a metric that is not a scalar.

    The message names the hook point and the expected shape and dtype.
    """
