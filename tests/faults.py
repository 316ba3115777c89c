"""Fault injection for tests: kill a run at any write point (or after a delay), rerun it, and
compare what it leaves with an uninterrupted run's output.

Two ways to run the victim:

- :func:`in_child` forks this process and runs a function there (``run_stages(cfg)``, say):
  a kill then hits a process that has everything imported, so a test can afford one kill per
  write point. The child dies exactly as ``kill -9`` leaves a process: no ``finally``, no
  ``atexit``, no close.
- :func:`cli` runs the real ``leela-interp`` command in a subprocess (this checkout's package).

Kills land at :func:`leela_interp.outputs.results.write_point` number ``k`` (``fault="kill:k"``), or
after ``kill_after_s`` seconds wherever the process is. :func:`write_points` lists the points
of an uninterrupted run. :func:`assert_same_files` compares outputs dataset by dataset.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from leela_interp.outputs.results import FAULT_ENV, FAULT_LOG_ENV, diff_files

REPO = Path(__file__).resolve().parents[1]
#: What a finished run folder may hold besides the outputs: the (released) lock file.
RUN_FOLDER_EXTRAS = {".lock"}


def in_child(fn: Callable[[], object], *, fault: str | None = None, log: Path | None = None,
             kill_after_s: float | None = None) -> int:
    """Run ``fn()`` in a forked child and return its exit code (``-9``: it was killed).

    Args:
        fn: what the child runs.
        fault: ``"kill:k"`` / ``"raise:k"`` for :data:`~leela_interp.outputs.results.FAULT_ENV`.
        log: file that collects the labels of the write points the child reaches.
        kill_after_s: SIGKILL the child after this many seconds, wherever it is.
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.environ.pop(FAULT_ENV, None)
            os.environ.pop(FAULT_LOG_ENV, None)
            if fault:
                os.environ[FAULT_ENV] = fault
            if log:
                os.environ[FAULT_LOG_ENV] = str(log)
            if kill_after_s is not None:
                threading.Timer(kill_after_s, os.kill, (os.getpid(), signal.SIGKILL)).start()
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def write_points(fn: Callable[[], object], log: Path) -> list[str]:
    """The write points an uninterrupted ``fn()`` reaches, in order (run in a child)."""
    log.unlink(missing_ok=True)
    code = in_child(fn, log=log)
    assert code == 0, f"the uninterrupted run failed (exit {code})"
    return log.read_text().splitlines()


def start_cli(args: Sequence[str], *, cwd: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``leela-interp ARGS`` (this checkout's package; Hydra's folder under ``cwd``);
    stdout and stderr are pipes."""
    full_env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, FAULT_LOG_ENV)}
    full_env.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "leela_interp.cli", *args,
                             f"hydra.run.dir={cwd / 'hydra'}"], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``leela-interp ARGS`` to the end (see :func:`start_cli`)."""
    proc = start_cli(args, cwd=cwd, env=env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_same_files(reference: Path, run: Path, names: Sequence[str], *,
                      same_bytes: Sequence[str] = (), ignore_attrs: Sequence[str] = ()) -> None:
    """Every dataset and attribute of each output ``names`` equal in both folders (and the
    bytes of those in ``same_bytes``); both folders hold the same files (nothing lost, nothing
    left behind)."""
    for name in names:
        diffs = diff_files(reference / name, run / name, ignore_attrs=ignore_attrs)
        assert not diffs, f"{run / name}: {diffs[:5]}"
    for name in same_bytes:
        assert sha256(reference / name) == sha256(run / name), f"{run / name}: other bytes"
    have = {p.name for p in run.iterdir()} - RUN_FOLDER_EXTRAS
    want = {p.name for p in reference.iterdir()} - RUN_FOLDER_EXTRAS
    assert have == want, f"{run}: extra {sorted(have - want)}, missing {sorted(want - have)}"
