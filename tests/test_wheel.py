"""The package as a wheel: built from the checkout's sources, installed into a fresh virtual
environment (no checkout on its path), and run from an unrelated folder: ``stage=info``, the
message that names the key to pass for a default in the checkout's ``data/``, and a tiny
``stage=all``. Dependencies come through the machine's pip (its indexes and find-links, as
``scripts/setup.sh`` uses them) at the versions of ``requirements.lock``, torch at the version
this suite runs with. Deselect with ``-m 'not wheel'``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

from tiny_run import ROWS, overrides, write_inputs

CHECKOUT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.wheel


def run(*args, cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """``args`` in ``cwd`` with nothing of the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{args[:3]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its ``bin/``."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, src / name)
    shutil.copytree(CHECKOUT / "leela_interp", src / "leela_interp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", root / "dist", src, cwd=root)
    wheel = next((root / "dist").glob("leela_interp-*.whl"))
    run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    bin_dir = root / "venv" / "bin"
    torch_pin = f"torch=={torch.__version__}"
    run(bin_dir / "python", "-m", "pip", "install", "-q", "-c", CHECKOUT / "requirements.lock",
        torch_pin, wheel, cwd=root)
    return bin_dir


def test_wheel_runs_info_and_the_pipeline_from_an_unrelated_folder(venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(venv / "python", "-c", "import leela_interp, pathlib; "
                "print(pathlib.Path(leela_interp.__file__).parent)", cwd=elsewhere).stdout
    package = Path(where.strip())
    assert package.is_relative_to(venv.parent) and (package / "conf" / "config.yaml").is_file()
    csv, strong, weak = write_inputs(elsewhere, ROWS, 8)

    info = run(venv / "leela-interp", "stage=info", f"model.path={strong}", cwd=elsewhere)
    assert "transformer" in info.stdout and "sha256" in info.stdout, info.stdout

    # The default model.path is a file of the checkout's data/, which the wheel has not.
    missing = run(venv / "leela-interp", "stage=info", cwd=elsewhere, check=False)
    assert missing.returncode != 0
    assert "model.path defaults to data/nets/strong-bt-64x4.pb.gz" in missing.stderr
    assert "pass model.path=FILE, or data_dir=FOLDER" in missing.stderr

    out = elsewhere / "run"
    run(venv / "leela-interp", *overrides((csv, strong, weak), out), cwd=elsewhere)
    for name in ("puzzles.h5", "activations.h5", "patching.h5", "ablations.h5", "probes.h5"):
        with h5py.File(out / name) as f:
            assert f.attrs["complete"], name
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert not (elsewhere / "outputs").exists()
