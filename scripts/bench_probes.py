"""Peak memory (RSS) of ``stage=probes`` on a realistic-size activation cache (issue 7).

    python scripts/bench_probes.py [--puzzles 16000] [--width 64] [--layers 6]
                                   [--dtype float32] [--seeds 0] [--splits all]
                                   [--logreg-max-iter 50] [--threads 1] [--twin]
                                   [--max-layer-gib 1.0] [--row-reads 10] [--skip-stage]
                                   [--workdir DIR] [--keep]

Builds a run folder with a ``puzzles.h5`` of the first ``--puzzles`` real Lichess puzzles of
``../shared/data/puzzles/lichess_sample.csv`` with a PV of at least 3 moves (14,374 of its
16,267 rows; repeated under new ids to reach ``--puzzles``; real boards, so the targets are
real) and a synthetic ``activations.h5`` in the activations contract layout: ``--layers``
datasets ``clean/blocks.{l}.hook_resid_post`` of shape ``[N, 64, --width]`` (maia: 6 x 64),
Gaussian noise with a weak planted signal at each puzzle's 3rd-move target square. The network
file is a seeded random CNN of that shape (the stage checks the cache's network sha256). Then it
runs ``leela-interp stage=probes`` in a child process and prints the child's peak RSS
(``ru_maxrss``) and wall time.

With ``--row-reads K`` it first times K batches of 64 random rows (puzzles) read from layer 0
of the cache three ways: :class:`~leela_interp.experiments.probes.LayerRows` (``os.pread`` at the
rows' file offsets, what the stage does for layers over ``probes.max_layer_gib``), h5py's row-list
indexing ``ds[sorted_rows]``, and h5py one row at a time; milliseconds per batch, the same
rows for each. ``--skip-stage`` stops after that.

Memory does not depend on the number of seeds, splits or L-BFGS iterations (they run one after
another), only on the size of one layer and the probes' feature matrices; the defaults keep the
run short. ``--twin`` also writes the random twin and caches its activations (a forward pass
over every puzzle).
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import chess
import h5py
import numpy as np

from leela_interp.experiments import probe_targets as T
from leela_interp.experiments import probes as P
from leela_interp.identity import sha256_file
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.outputs.results import write_strings
from leela_interp.puzzles.puzzle_set import PuzzleSet

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared" / "data" / "puzzles" / "lichess_sample.csv"


def puzzle_set(n: int) -> PuzzleSet:
    ids, fens, moves = [], [], []
    with open(CSV, newline="") as f:
        for row in csv.DictReader(f):
            m = row["Moves"].split()
            if len(m) < 4:  # a PV of at least 3 moves, as the puzzles stage keeps
                continue
            ids.append(row["PuzzleId"])
            fens.append(row["FEN"])
            moves.append(m)
            if len(ids) == n:
                break
    base = len(ids)
    for k in range(n - base):  # fewer usable rows than asked: repeat them under new ids
        ids.append(f"{ids[k % base]}#{k // base + 1}")
        fens.append(fens[k % base])
        moves.append(moves[k % base])
    different = []
    for m in moves:
        t = [chess.Move.from_uci(u).to_square for u in m[1:4]]
        different.append(len(set(t)) == 3)
    return PuzzleSet(ids=ids, fens=fens, moves=moves, corrupted_fens=[""] * len(ids),
                     different_targets=np.array(different))


def time_row_reads(path: Path, batches: int, rows_per_batch: int = 64) -> None:
    """Print ms per batch of random rows of layer 0, read by LayerRows and by h5py."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "r") as f:
        ds = f["clean/blocks.0.hook_resid_post"]
        batches_rows = [np.sort(rng.choice(len(ds), rows_per_batch, replace=False))
                        for _ in range(batches)]
        rows_view = P.LayerRows(ds)
        ways = {"LayerRows (os.pread)": lambda r: rows_view[r],
                "h5py row list ds[rows]": lambda r: ds[r],
                "h5py one row at a time": lambda r: np.stack([ds[int(i)] for i in r])}
        reference = None
        for name, read in ways.items():
            start = time.perf_counter()
            for r in batches_rows:
                got = read(r)
            ms = (time.perf_counter() - start) / batches * 1000
            reference = got if reference is None else reference
            assert np.array_equal(got, reference)
            print(f"  {name:24s} {ms:8.1f} ms per batch of {rows_per_batch} rows "
                  f"({batches} batches, chunks {ds.chunks}, {ds.compression or 'uncompressed'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puzzles", type=int, default=16000)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--seeds", default="0", help="comma-separated")
    ap.add_argument("--splits", default="all", help="comma-separated")
    ap.add_argument("--logreg-max-iter", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (probes.threads)")
    ap.add_argument("--twin", action="store_true", help="also the random-twin baseline")
    ap.add_argument("--max-layer-gib", default="1.0",
                    help="probes.max_layer_gib: bigger layers are read row by row ('null': never)")
    ap.add_argument("--row-reads", type=int, default=0,
                    help="time this many batches of 64 random rows read three ways")
    ap.add_argument("--skip-stage", action="store_true", help="do not run the stage")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_probes_"))
    out = work / "run"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    puzzles = puzzle_set(args.puzzles)
    n = len(puzzles)
    with h5py.File(out / "puzzles.h5", "w") as f:
        puzzles.write(f.require_group("puzzles"))
    net = write_random_net(work / "net.pb.gz", seed=0, channels=args.width, blocks=args.layers,
                           se_channels=max(1, args.width // 8))
    specs = T.parse_targets([{"name": "target", "ply": 2, "square": "to",
                              "condition": {"ply": 0, "square": "to"}}])
    target = T.target_labels(puzzles.clean_boards(), [puzzles.pv(i) for i in range(n)], specs,
                             1)["target"].label
    rng = np.random.default_rng(0)
    u = rng.normal(size=args.width).astype(np.float32)
    u /= np.linalg.norm(u)
    with h5py.File(out / "activations.h5", "w") as f:
        f.attrs.update({"schema": P.ACTIVATIONS_SCHEMA, "network_sha256": sha256_file(net),
                        "puzzles_sha256": sha256_file(out / "puzzles.h5"), "complete": True})
        write_strings(f, "puzzle_id", puzzles.ids)
        for layer in range(args.layers):
            ds = f.create_dataset(f"clean/blocks.{layer}.hook_resid_post",
                                  shape=(n, 64, args.width), dtype=args.dtype,
                                  chunks=(64, 64, args.width))
            for start in range(0, n, 1024):
                stop = min(start + 1024, n)
                x = rng.normal(size=(stop - start, 64, args.width)).astype(np.float32) + 1.0
                x[np.arange(stop - start), target[start:stop]] += 0.5 * (layer + 1) * u
                ds[start:stop] = x
    size_gb = sum(p.stat().st_size for p in out.iterdir()) / 1e9
    print(f"built {n} puzzles x {args.layers} layers x [64, {args.width}] {args.dtype} "
          f"({size_gb:.2f} GB on disk) in {time.perf_counter() - t0:.0f} s")
    if args.row_reads:
        time_row_reads(out / "activations.h5", args.row_reads)
    if args.skip_stage:
        return
    print("running the stage")

    cmd = [sys.executable, "-m", "leela_interp.cli", "stage=probes", f"out_dir={out}",
           f"model.path={net}", f"probes.seeds=[{args.seeds}]", f"probes.splits=[{args.splits}]",
           f"probes.logreg.max_iter={args.logreg_max_iter}", f"probes.threads={args.threads}",
           f"probes.random_twin.enabled={str(args.twin).lower()}",
           f"probes.max_layer_gib={args.max_layer_gib}",
           f"hydra.run.dir={work / 'hydra'}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with h5py.File(out / "probes.h5", "r") as f:
        mean = f["accuracy_mean"][()]
        logged = f.attrs["peak_rss_mb"]
        probes = [p.decode() for p in f["probe"][()]]
    print(f"stage=probes: wall {wall:.0f} s, peak RSS {peak_mb:.0f} MiB (child ru_maxrss; "
          f"the stage logged {logged:.0f} MiB)")
    for pi, probe in enumerate(probes):
        print(f"  {probe} target accuracy by layer (planted signal grows with depth): "
              + " ".join(f"{a:.2f}" for a in mean[0, 0, pi, 0]))
    if not args.keep and args.workdir is None:
        import shutil

        shutil.rmtree(work)


if __name__ == "__main__":
    main()
