"""leela_interp: mechanistic interpretability of Leela Chess Zero networks.

The public API:

- :func:`load_network` -- an lc0 ``.pb.gz`` / ``.pb`` / ``.onnx`` file as a native PyTorch module
  whose outputs equal lc0's own engine.
- :func:`encode` -- ``chess.Board`` objects (with their move stacks) to lc0's 112 input planes.
- :func:`policy_index` -- a move's index in lc0's 1858-move policy.
"""

import os

# PyTorch's OpenMP runtime (libgomp) reads OMP_WAIT_POLICY once, when torch is first imported. Its
# default lets idle worker threads spin, which on a machine with few, shared cores takes CPU from
# the threads still working (native forward at 2 threads ~0.6x onnxruntime; docs/benchmarks.md).
# PASSIVE makes them sleep. Set OMP_WAIT_POLICY=ACTIVE (or any value) in the environment to keep
# yours; importing torch before leela_interp leaves the policy torch found.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from leela_interp.errors import (ConfigError, HookError, LeelaInterpError, UnknownHookError,
                                 WeightsFormatError)
from leela_interp.identity import __version__
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


__all__ = ["__version__", "ConfigError", "HookError", "LeelaInterpError", "LeelaNet", "LeelaOutput",
           "UnknownHookError", "WeightsFormatError", "encode", "load_network", "policy_index"]
