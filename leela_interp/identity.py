"""What names a result's inputs and the code that wrote it: the package version and the sha256
of a file. Imports nothing of the package, so every subpackage can use it."""

from __future__ import annotations

import hashlib
from pathlib import Path

__version__ = "0.1.0"
"""The package version (also ``pyproject.toml``'s); result files record it
(``leela_interp_version``), ONNX exports as ``producer_version``."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: how a result file names the network, puzzle set or earlier
    result file it was computed from (``network_sha256``, ``puzzles_sha256``, ...)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
