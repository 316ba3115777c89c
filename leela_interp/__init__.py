"""leela_interp: mechanistic interpretability of Leela Chess Zero networks.

The public API:

- :func:`load_network` -- an lc0 ``.pb.gz`` / ``.pb`` / ``.onnx`` file as a native PyTorch module
  whose outputs equal lc0's own engine.
- :func:`encode` -- ``chess.Board`` objects (with their move stacks) to lc0's 112 input planes.
- :func:`policy_index` -- a move's index in lc0's 1858-move policy.
"""

__version__ = "0.1.0"  # first: leela_interp.outputs.results reads it during the imports below

from leela_interp.errors import (ConfigError, HookError, LeelaInterpError, UnknownHookError,
                                 WeightsFormatError)
from leela_interp.network import LeelaNet, LeelaOutput, load_network


def __getattr__(name: str):
    # encode / policy_index live in modules that import python-chess tables; load on first use.
    if name == "encode":
        from leela_interp.board.encoding import encode

        return encode
    if name == "policy_index":
        from leela_interp.board.policy import policy_index

        return policy_index
    raise AttributeError(f"module 'leela_interp' has no attribute {name!r}")


__all__ = ["ConfigError", "HookError", "LeelaInterpError", "LeelaNet", "LeelaOutput",
           "UnknownHookError", "WeightsFormatError", "encode", "load_network", "policy_index"]
