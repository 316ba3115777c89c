"""Mutation testing of the core modules with mutmut 3, each against its own test selection.

Not part of the test suite or CI (it is CPU-heavy: about a mutant per second per core, plus the
rechecks). Needs mutmut in a virtual environment of its own, e.g. one that sees the project's
packages without installing into the project's venv::

    python3 -m venv /tmp/venv-mut
    echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/venv-mut/lib/python3.11/site-packages/project.pth
    /tmp/venv-mut/bin/pip install mutmut==3.8.1
    nice -n 19 /tmp/venv-mut/bin/python scripts/mutation_test.py leela_interp/board/policy.py \\
        leela_interp/board/encoding.py --report /tmp/mutation.md

For each module it clones this repository's HEAD into a work folder (no ``../shared`` beside
it: the tests a fresh clone runs), writes mutmut's ``setup.cfg`` there (mutate only that module,
run only its tests, fork-server isolation since torch is not fork-safe), and runs ``mutmut
run``. mutmut switches mutants inside one warm process, so a mutant in code that runs at import
(``policy.py`` builds its tables, ``encoding.py`` its token tables when first imported) never
takes effect there and "survives". Every survivor is therefore **rechecked** the slow way:
``mutmut apply`` writes it into the clone's source, the same tests run in a fresh ``python -m
pytest -x`` process, and the file is restored. The report counts, per module, the mutants
tried, killed by mutmut, killed on recheck and surviving both, and lists each survivor's diff.

A full run is long (``policy.py``'s 443 mutants took 57 minutes on a shared 2-core machine), so
``--sample N --seed S`` draws N of each module's M mutants at random (``random.Random`` seeded
with ``S`` and the module's path, over mutmut's sorted mutant names: the same draw for the same
seed and source) and runs only those; the report then says "N of M sampled". A recheck runs the
tests mutmut found reaching the mutated function (``mutmut tests-for-mutant``), or the module's
whole selection when there are none (code that runs only at import). The report is rewritten
after each module, so a stopped run keeps the modules it finished.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).with_name("mutmut")

#: Core module -> the tests that should kill its mutants.
SELECTIONS: dict[str, tuple[str, ...]] = {
    "leela_interp/board/encoding.py": ("tests/test_encoding.py", "tests/test_policy.py"),
    "leela_interp/board/policy.py": ("tests/test_policy.py",),
    "leela_interp/network/transformer.py": ("tests/test_hooks.py", "tests/test_conformance.py"),
    "leela_interp/network/cnn.py": ("tests/test_hooks.py", "tests/test_conformance.py"),
    "leela_interp/network/heads.py": ("tests/test_hooks.py", "tests/test_conformance.py"),
    "leela_interp/network/net.py": ("tests/test_hooks.py", "tests/test_conformance.py"),
    "leela_interp/network/loading.py": ("tests/test_conformance.py", "tests/test_lc0_weights.py"),
    "leela_interp/puzzles/corruptions.py": ("tests/test_corruptions.py",),
    "leela_interp/puzzles/pipeline.py": ("tests/test_filters.py", "tests/test_puzzle_pipeline.py"),
    "leela_interp/puzzles/filters.py": ("tests/test_filters.py", "tests/test_puzzle_pipeline.py"),
    "leela_interp/puzzles/evaluation.py": ("tests/test_puzzle_pipeline.py",
                                           "tests/test_corruptions.py"),
    "leela_interp/experiments/interventions.py": ("tests/test_interventions.py",),
    "leela_interp/experiments/patching.py": ("tests/test_interventions.py",),
    "leela_interp/experiments/ablations.py": ("tests/test_interventions.py",),
    "leela_interp/experiments/edge.py": ("tests/test_interventions.py",),
    "leela_interp/experiments/probes.py": ("tests/test_probes.py",),
    "leela_interp/experiments/probe_targets.py": ("tests/test_probes.py",),
    "leela_interp/outputs/report.py": ("tests/test_report.py",),
}

SETUP_CFG = """[mutmut]
source_paths = leela_interp
only_mutate = {module}
also_copy =
    conf
    data
    scripts
pytest_add_cli_args_test_selection =
{tests}
pytest_add_cli_args =
    -p
    no:cacheprovider
    -m
    not slow
process_isolation = forkserver
"""


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)


def results(clone: Path) -> dict[str, str]:
    """``{mutant name: status}`` from ``mutmut results --all true``."""
    out = run([str(MUTMUT), "results", "--all", "true"], clone).stdout
    return dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", out, flags=re.M))


def mutant_names(clone: Path, module: str) -> list[str]:
    """Every mutant mutmut makes of ``module`` (names as in ``mutmut results``), sorted."""
    code = ("import sys; from pathlib import Path\n"
            "from mutmut.mutation.file_mutation import mutate_file_contents\n"
            "from mutmut.utils.format_utils import get_mutant_name\n"
            "path = Path(sys.argv[1])\n"
            "for name in mutate_file_contents(str(path), path.read_text()).mutant_names:\n"
            "    print(get_mutant_name(path, name))\n")
    proc = run([sys.executable, "-c", code, module], clone)
    if proc.returncode != 0:
        raise RuntimeError(f"listing the mutants of {module} failed: {proc.stderr[-2000:]}")
    return sorted(proc.stdout.split())


def draw(names: list[str], module: str, n: int, seed: int) -> list[str]:
    """``n`` of ``names`` (all if fewer), the same ones for the same ``seed`` and ``module``."""
    return sorted(random.Random(f"{seed}:{module}").sample(names, min(n, len(names))))


def diff(clone: Path, name: str) -> str:
    out = run([str(MUTMUT), "show", name], clone).stdout
    return "\n".join(line for line in out.splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))


def recheck(clone: Path, module: str, name: str, selection: tuple[str, ...]) -> bool:
    """Whether the tests that reach mutant ``name`` (or, if none do, ``selection``) fail in a
    fresh process with the mutant written to the source."""
    tests = run([str(MUTMUT), "tests-for-mutant", name], clone).stdout.split() or selection
    applied = run([str(MUTMUT), "apply", name], clone)
    if applied.returncode != 0:
        raise RuntimeError(f"mutmut apply {name} failed: {applied.stderr[-500:]}")
    try:
        proc = run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m",
                    "not slow", *tests], clone, env={**os.environ, "PYTHONPATH": str(clone)},
                   timeout=600)
        return proc.returncode != 0
    except subprocess.TimeoutExpired:
        return True  # a hang is caught too: the suite would not finish
    finally:
        run(["git", "checkout", "--", module], clone)


def test_module(module: str, work: Path, children: int, max_recheck: int | None,
                sample: int | None, seed: int) -> dict:
    tests = SELECTIONS[module]
    clone = work / module.replace("/", "_").removesuffix(".py") / "repo"
    if clone.exists():
        shutil.rmtree(clone.parent)
    clone.parent.mkdir(parents=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    (clone / "setup.cfg").write_text(SETUP_CFG.format(
        module=module, tests="\n".join(f"    {t}" for t in tests)))
    names = mutant_names(clone, module)
    chosen = draw(names, module, sample, seed) if sample is not None else []
    start = time.perf_counter()
    proc = run([str(MUTMUT), "run", "--max-children", str(children), *chosen], clone)
    if proc.returncode != 0:
        raise RuntimeError(f"mutmut run failed on {module}:\n{proc.stdout[-2000:]}"
                           f"{proc.stderr[-2000:]}")
    status = results(clone)
    if chosen:
        status = {n: status[n] for n in chosen}
    mutmut_seconds = time.perf_counter() - start
    survivors = [n for n, s in status.items() if s != "killed"]
    start = time.perf_counter()
    rechecked = {n: recheck(clone, module, n, tests) for n in survivors[:max_recheck]}
    summary = {
        "module": module, "tests": tests, "total": len(names), "tried": len(status),
        "killed": sum(s == "killed" for s in status.values()),
        "killed_on_recheck": sum(rechecked.values()),
        "not_rechecked": {n: (status[n], diff(clone, n)) for n in survivors[len(rechecked):]},
        "survivors": {n: (status[n], diff(clone, n)) for n, k in rechecked.items() if not k},
        "seconds": (mutmut_seconds, time.perf_counter() - start),
    }
    return summary


def report(summaries: list[dict]) -> str:
    lines = ["| module | tests | mutants | tried | killed (mutmut) | killed on recheck | "
             "survived | not rechecked |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        tried = "all" if s["tried"] == s["total"] else f"{s['tried']} of {s['total']} sampled"
        lines.append(f"| `{s['module']}` | {', '.join(f'`{t}`' for t in s['tests'])} | "
                     f"{s['total']} | {tried} | {s['killed']} | {s['killed_on_recheck']} | "
                     f"{len(s['survivors'])} | {len(s['not_rechecked'])} |")
    for s in summaries:
        lines += ["", f"### Survivors in `{s['module']}` (mutmut {s['seconds'][0]:.0f} s, "
                      f"recheck {s['seconds'][1]:.0f} s)", ""]
        for kind in ("survivors", "not_rechecked"):
            for name, (status, text) in s[kind].items():
                note = "" if kind == "survivors" else ", not rechecked"
                lines += [f"- `{name}` (mutmut: {status}{note})", "", "```diff", text, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=list(SELECTIONS),
                        help=f"modules to mutate (default every core module: {list(SELECTIONS)})")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp)")
    parser.add_argument("--children", type=int, default=2, help="mutmut --max-children")
    parser.add_argument("--report", type=Path, default=None, help="write the report here too")
    parser.add_argument("--max-recheck", type=int, default=None,
                        help="recheck at most this many survivors per module (default all)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="run N mutants per module drawn at random (default all)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the --sample draw (default 0)")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample must be a positive number of mutants, not {args.sample}")
    unknown = [m for m in args.modules if m not in SELECTIONS]
    if unknown:
        parser.error(f"no test selection for {unknown}; known: {list(SELECTIONS)}")
    if not MUTMUT.exists():
        parser.error(f"run this with the python of a venv that has mutmut ({MUTMUT} missing)")
    work = args.work or Path(tempfile.mkdtemp(prefix="mutation-"))
    head = run(["git", "rev-parse", "--short", "HEAD"], ROOT).stdout.strip()
    sampled = "" if args.sample is None else f", --sample {args.sample} --seed {args.seed}"
    summaries = []
    for module in args.modules:
        summaries.append(test_module(module, work, args.children, args.max_recheck,
                                     args.sample, args.seed))
        s = summaries[-1]
        print(f"{module}: {s['tried']} of {s['total']} mutants, {s['killed']} killed, "
              f"{s['killed_on_recheck']} killed on recheck, {len(s['survivors'])} survived, "
              f"{len(s['not_rechecked'])} not rechecked, {s['seconds'][0] + s['seconds'][1]:.0f} s",
              flush=True)
        text = (f"Mutation testing of HEAD {head} (mutmut 3, scripts/mutation_test.py{sampled})"
                f"\n\n" + report(summaries))
        if args.report:
            args.report.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
