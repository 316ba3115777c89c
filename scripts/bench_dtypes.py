"""How far bfloat16 and float16 runs are from float32: every effect, metric and accuracy.

    python scripts/bench_dtypes.py [--net maia|transformer] [--puzzles 48] [--threads 1]
                                   [--shape 128x4x4h] [--keep DIR]

The puzzles stage runs once, in float32 (so every dtype is measured on the same puzzles and
corrupted boards), with the relaxed filters of ``tests/tiny_run.py`` (random nets keep the
puzzles; no oracle) on the first ``--puzzles`` rows of ``../shared`` 's Lichess sample. Its
``puzzles.h5`` is copied into one run folder per dtype, where the activations, patching,
ablations (zero and mean) and probes stages run with ``model.dtype`` set. Nets: ``maia``
(maia-1900 strong, maia-1100 weak, ``../shared/nets``) or ``transformer`` (a seeded random
``--shape`` smolgen transformer, strong, and a random CNN, weak).

Printed per dtype and dataset: the entries compared (finite in both runs), the largest and the
mean |difference| from float32, and the entries finite in one run only (a puzzle analysed in one
dtype but not the other). Also each stage's wall time.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import tempfile
import time
from pathlib import Path

import leela_interp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)
import h5py
import numpy as np

from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.stages import run_stages

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests"))
from tiny_run import compose_config  # noqa: E402  (the relaxed config of the tests' tiny run)

DTYPES = ("float32", "bfloat16", "float16")
STAGES = ("activations", "patching", "ablations", "probes")
#: (file, dataset patterns) compared with float32.
COMPARED = [
    ("patching.h5", ["clean_log_odds", "corrupted_log_odds", "corruption_effect",
                     "residual/*/effect", "heads/effect"]),
    ("ablations.h5", ["heads/*/effect", "edge/effect", "piece_heads/effect"]),
    ("probes.h5", ["accuracy"]),
]


def float_datasets(path: Path, patterns: list[str]) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" and any(
                fnmatch.fnmatchcase(name, p) and "summary" not in name for p in patterns):
            found[name] = obj[()].astype(np.float64)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def compare(runs: dict[str, Path]) -> None:
    print(f"\n{'dtype':9s} {'dataset':40s} {'entries':>8s} {'max |d|':>9s} {'mean |d|':>9s} "
          f"{'one-sided':>9s}")
    for file, patterns in COMPARED:
        reference = float_datasets(runs["float32"] / file, patterns)
        for dtype in DTYPES[1:]:
            other = float_datasets(runs[dtype] / file, patterns)
            for name, ref in reference.items():
                x = other[name]
                both = np.isfinite(ref) & np.isfinite(x)
                d = np.abs(ref[both] - x[both])
                one = int((np.isfinite(ref) != np.isfinite(x)).sum())
                big = f"{d.max():9.2e} {d.mean():9.2e}" if d.size else f"{'-':>9s} {'-':>9s}"
                print(f"{dtype:9s} {file + ':' + name:40s} {d.size:8d} {big} {one:9d}")


def nets(args, tmp: Path) -> tuple[Path, Path]:
    if args.net == "maia":
        return SHARED / "nets" / "maia-1900.pb.gz", SHARED / "nets" / "maia-1100.pb.gz"
    d, layers, heads = (int(v) for v in args.shape.rstrip("h").split("x"))
    strong = write_random_net(tmp / "strong.pb.gz", body="transformer", policy="attention",
                              d_model=d, layers=layers, heads=heads, d_ff=d, smolgen=True,
                              embedding="PE_DENSE", default_activation="mish", seed=0)
    return strong, write_random_net(tmp / "weak.pb.gz", seed=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=["maia", "transformer"], default="maia")
    parser.add_argument("--puzzles", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", default="128x4x4h", help="transformer: DxLxHh")
    parser.add_argument("--keep", type=Path, help="write the run folders here (kept)")
    args = parser.parse_args()
    csv = SHARED / "data" / "puzzles" / "lichess_sample.csv"
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        strong, weak = nets(args, Path(tmp))
        common = [f"threads={args.threads}", f"puzzles.limit={args.puzzles}",
                  "ablations.method=[zero,mean]"]
        runs = {dtype: root / dtype for dtype in DTYPES}
        start = time.perf_counter()
        run_stages(compose_config((csv, strong, weak), runs["float32"], "stage=puzzles",
                                  *common))
        print(f"puzzles (float32): {time.perf_counter() - start:.1f} s")
        for dtype in DTYPES:
            runs[dtype].mkdir(parents=True, exist_ok=True)
            if dtype != "float32":
                shutil.copy(runs["float32"] / "puzzles.h5", runs[dtype] / "puzzles.h5")
            times = []
            for stage in STAGES:
                start = time.perf_counter()
                run_stages(compose_config((csv, strong, weak), runs[dtype], f"stage={stage}",
                                          f"model.dtype={dtype}", *common))
                times.append(f"{stage} {time.perf_counter() - start:.1f} s")
            print(f"{dtype}: " + ", ".join(times), flush=True)
        with h5py.File(runs["float32"] / "patching.h5", "r") as f:
            print(f"{args.net}: {int(f['analysed'][()].sum())} of {len(f['analysed'])} puzzles "
                  f"analysed")
        compare(runs)


if __name__ == "__main__":
    main()
