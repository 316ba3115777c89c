"""Plant known bugs one at a time in a fresh clone and report which tests catch each.

The clone (of this repository's HEAD) goes to a temporary folder with no ``../shared`` beside
it, as a user's fresh clone has: only tests that run there count. For each bug the script
applies a text patch (it stops with an error when the patch no longer applies, so the list
cannot silently rot), runs the bug's test selection, records the failing tests, and reverts.
The selections are first run on the unpatched clone, which must pass.

    python scripts/plant_bugs.py            # every bug of issue 19
    python scripts/plant_bugs.py --only repetition-plane --keep

Exit status 1 if any planted bug is caught by no test. Issue 19's report bug (the funnel
printed as zeros and every probe cell as 0) is planted as its two halves, each of which must
be caught on its own.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    """Short name (``--only``)."""
    description: str
    path: str
    """File patched, relative to the repository root."""
    old: str
    """Text replaced; must occur exactly once."""
    new: str
    tests: tuple[str, ...]
    """pytest arguments selecting the tests that should catch it."""


BUGS = (
    Bug("pe-map-knights", "PE_MAP positional table without the knight moves",
        "leela_interp/network/transformer.py",
        "    table = (queen | knight).float()\n", "    table = queen.float()\n",
        ("tests/test_conformance.py", "-k", "pe-map")),
    Bug("repetition-plane", "repetition plane set only at two repetitions",
        "leela_interp/board/encoding.py",
        "            if snap.repetitions >= 1:\n", "            if snap.repetitions >= 2:\n",
        ("tests/test_encoding.py",)),
    Bug("correct-first-move-only", "`correct` filter checks only the first solver move",
        "leela_interp/puzzles/filters.py",
        'solver = data["strong_pv_prob"][i, 0:pv_length[i]:2]',
        'solver = data["strong_pv_prob"][i, 0:1]',
        ("tests/test_filters.py", "tests/test_puzzle_pipeline.py")),
    Bug("forcing-at-ply-0", "`forcing` filter reads the weak net at ply 0",
        "leela_interp/puzzles/filters.py",
        'alive &= ply("weak_pv_prob", 1) > filters.forcing_min_weak_prob',
        'alive &= ply("weak_pv_prob", 0) > filters.forcing_min_weak_prob',
        ("tests/test_filters.py", "tests/test_puzzle_pipeline.py")),
    Bug("baseline-keys-swapped", "probe baselines `condition` and `piece` keys swapped",
        "leela_interp/experiments/probes.py",
        '"condition": [cond],\n                "piece": [piece * 64 + cond, piece]}',
        '"condition": [piece * 64 + cond, piece],\n                "piece": [cond]}',
        ("tests/test_probes.py",)),
    Bug("hook-q-dead-end", "`hook_q` a dead end (its output unused)",
        "leela_interp/network/transformer.py",
        "        q = self.hook_q(self._heads(self.q(x)))\n",
        "        q = self._heads(self.q(x))\n        self.hook_q(q)\n",
        ("tests/test_hooks.py",)),
    Bug("summary-masks-swapped", "summaries' different_targets / same_targets masks swapped",
        "leela_interp/experiments/effects.py",
        '"different_targets": dt, "same_targets": ~dt}',
        '"different_targets": ~dt, "same_targets": dt}',
        ("tests/test_summaries.py",)),
    Bug("summary-overlap-let-in", "residual category means over overlap puzzles too",
        "leela_interp/experiments/patching.py",
        'g["category_max"][()], no_overlap, subsets,',
        'g["category_max"][()], analysed, subsets,',
        ("tests/test_summaries.py",)),
    Bug("report-funnel-zeros", "report prints the selection funnels' counts as 0",
        "leela_interp/outputs/report.py",
        "rows = [[s, r, int(c)] for s, r, c in", "rows = [[s, r, 0] for s, r, c in",
        ("tests/test_report.py",)),
    Bug("report-probe-cells-zero", "report prints every probe accuracy as 0",
        "leela_interp/outputs/report.py",
        "[_fmt(mean[ni, s, pi, t, li], err[ni, s, pi, t, li])",
        "[_fmt(0 * mean[ni, s, pi, t, li], err[ni, s, pi, t, li])",
        ("tests/test_report.py",)),
)


def run_tests(clone: Path, args: tuple[str, ...]) -> tuple[int, list[str], str]:
    """Run pytest in ``clone``; returns (exit code, failed test ids, last output line)."""
    env = {**os.environ, "PYTHONPATH": str(clone)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
           "-m", "not slow", *args]
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, failed, lines[-1] if lines else proc.stderr[-300:]


def plant(clone: Path, bug: Bug) -> str:
    """Apply ``bug``'s patch; returns the original text of the file."""
    path = clone / bug.path
    text = path.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"bug {bug.name!r}: the patch no longer applies to {bug.path} "
                         f"({text.count(bug.old)} matches of {bug.old!r}); update BUGS")
    path.write_text(text.replace(bug.old, bug.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[b.name for b in BUGS],
                        help="plant only this bug (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    folder = Path(tempfile.mkdtemp(prefix="plant-bugs-"))
    clone = folder / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, check=True,
                          capture_output=True, text=True).stdout.strip()
    assert not (folder / "shared").exists()
    print(f"fresh clone of HEAD {head} in {clone} (no ../shared beside it)")
    missed = []
    clean: set[tuple[str, ...]] = set()
    try:
        for bug in bugs:
            if bug.tests not in clean:
                code, failed, last = run_tests(clone, bug.tests)
                if code != 0:
                    raise SystemExit(f"{bug.name}: {' '.join(bug.tests)} fails on the "
                                     f"unpatched clone ({last}); fix that first")
                clean.add(bug.tests)
            original = plant(clone, bug)
            start = time.perf_counter()
            try:
                code, failed, last = run_tests(clone, bug.tests)
            finally:
                (clone / bug.path).write_text(original)
            seconds = time.perf_counter() - start
            print(f"\n[{bug.name}] {bug.description} ({bug.path})")
            print(f"  ran: pytest {' '.join(bug.tests)}  ({seconds:.0f} s; {last})")
            if failed:
                print(f"  CAUGHT by {len(failed)} test(s):")
                for test in failed:
                    print(f"    {test}")
            else:
                print("  NOT CAUGHT" + (f" (pytest exit {code})" if code else ""))
                missed.append(bug.name)
        print(f"\n{len(bugs) - len(missed)} of {len(bugs)} planted bugs caught"
              + (f"; missed: {', '.join(missed)}" if missed else ""))
    finally:
        if args.keep:
            print(f"clone kept at {clone}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
