"""``import leela_interp`` makes PyTorch's OpenMP threads sleep when idle unless the user chose.

Checked on libgomp itself: ``OMP_DISPLAY_ENV=VERBOSE`` makes it print the settings it read when
torch loaded it; ``GOMP_SPINCOUNT = '0'`` is what OMP_WAIT_POLICY=PASSIVE gives (its default
without the variable is 300000, and it prints ``OMP_WAIT_POLICY = 'PASSIVE'`` either way).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def libgomp_settings(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(env, OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, timeout=120, check=True)
    if "GOMP_SPINCOUNT" not in done.stderr:
        pytest.skip("torch's OpenMP runtime is not libgomp (no OMP_DISPLAY_ENV output)")
    return done.stderr


def test_import_sets_passive_wait_policy_before_torch_loads():
    assert "GOMP_SPINCOUNT = '0'" in libgomp_settings("import leela_interp")


def test_the_users_wait_policy_is_kept():
    settings = libgomp_settings("import leela_interp", OMP_WAIT_POLICY="ACTIVE")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in settings


def test_torch_imported_first_keeps_libgomps_default():
    # The documented limit: the policy must be in the environment before torch loads libgomp.
    assert "GOMP_SPINCOUNT = '0'" not in libgomp_settings("import torch, leela_interp")
