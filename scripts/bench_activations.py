"""Activation-cache benchmarks (issue 5): peak memory vs puzzle count, throughput vs a forward.

    python scripts/bench_activations.py rss [--n 100 1000] [--shape 768x15x24h|maia-1900]
                                            [--batch 64] [--boards clean]
    python scripts/bench_activations.py throughput [--n 2048] [--batch 256] [--repeats 3]
    python scripts/bench_activations.py writer [--n 2048] [--batch 256] [--repeats 3]
                                               [--boards both] [--dtype float32]
    python scripts/bench_activations.py read [--n 2048] [--d-model 768] [--hooks 15]

``rss``: caches every residual (``blocks.*.hook_resid_post``, float32, no compression) of N
synthetic puzzles with a seeded random BT-style smolgen transformer (or maia-1900), each N in its
own subprocess, and prints the subprocess's peak RSS (``VmHWM``), its RSS before caching,
the time and the file size. Flat peak RSS across N = memory independent of the puzzle count.

``throughput``: on maia-1900 (``../shared/nets``), puzzles/s of (A) a plain forward pass over the
puzzles (encode + forward, batch by batch, outputs dropped) and (B) ``cache_activations`` of
every residual (encode + forward with hooks + HDF5 write); runs alternate A/B ``--repeats`` times
and the best of each is reported, to damp the noise of a shared machine. Also B with lzf/gzip,
float16 and both boards.

``writer``: on maia-1900, puzzles/s of ``cache_activations`` of every residual with the writer
thread (the next batch computed while the last one is written, flushed and fsync'd) and without
it (``writer_thread=False``: compute, then write), in turn ``--repeats`` times in one process;
prints every run, the best of each and their ratio, for ``--boards`` and ``--dtype``.

``read``: how the chunk shape (whole puzzles per chunk; ``auto`` is what ``cache_activations``
picks) affects reading one hook for all puzzles and for 256 random puzzles.

Puzzles: real Lichess puzzles from ``../shared/data/puzzles/lichess_sample.csv`` (the first
``--distinct`` rows), repeated with new ids up to N; the corrupted board is the clean board less
its first pawn. Repeating does not change the cost of a forward pass or a write.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import chess
import h5py
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CSV = SHARED / "data" / "puzzles" / "lichess_sample.csv"
MAIA = SHARED / "nets" / "maia-1900.pb.gz"


def write_puzzles(path: Path, n: int, distinct: int = 500) -> Path:
    """A ``puzzles.h5`` of ``n`` puzzles cycling through the first ``distinct`` real ones."""
    from leela_interp.puzzles.puzzle_set import PuzzleSet

    rows = []
    with open(CSV, newline="") as f:
        for row in csv.DictReader(f):
            rows.append((row["PuzzleId"], row["FEN"], row["Moves"].split()))
            if len(rows) == distinct:
                break
    corrupted = []
    for _, fen, moves in rows:
        board = chess.Board(fen)
        board.push_uci(moves[0])
        pawns = sorted(board.pieces(chess.PAWN, chess.WHITE) | board.pieces(chess.PAWN, False))
        if pawns:
            board.remove_piece_at(pawns[0])
        corrupted.append(board.fen() if pawns else "")
    pick = [i % len(rows) for i in range(n)]
    ps = PuzzleSet(ids=[f"{rows[i][0]}-{k}" for k, i in enumerate(pick)],
                   fens=[rows[i][1] for i in pick], moves=[rows[i][2] for i in pick],
                   corrupted_fens=[corrupted[i] for i in pick],
                   different_targets=np.ones(n, dtype=bool))
    with h5py.File(path, "w") as f:
        ps.write(f.require_group("puzzles"))
    return path


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def transformer_spec(shape: str) -> dict:
    d, layers, heads = shape.removesuffix("h").split("x")
    d, layers, heads = int(d), int(layers), int(heads)
    return dict(body="transformer", policy="attention", embedding="PE_MAP", d_model=d,
                layers=layers, heads=heads, d_ff=d * 4 // 3, default_activation="mish",
                ffn_activation="RELU_2", smolgen_activation="SWISH", smolgen_compress=32,
                smolgen_hidden=256, smolgen_gen=256)


def child(args: argparse.Namespace) -> None:
    """One caching run in this process; prints a JSON line with its measurements."""
    import torch

    from leela_interp import load_network
    from leela_interp.experiments.activations import cache_activations
    from leela_interp.puzzles.puzzle_set import PuzzleSet

    torch.set_num_threads(args.threads)
    net = load_network(args.net)
    rss_before = status_kb("VmRSS")
    n = len(PuzzleSet.load(args.puzzles))
    half: list[int] = []

    def after_batch(rows: int) -> None:  # peak so far once half the rows are written
        if rows >= n // 2 and not half:
            half.append(status_kb("VmHWM"))

    start = time.perf_counter()
    out = cache_activations(net, args.puzzles, args.out, hooks="blocks.*.hook_resid_post",
                            boards=args.boards, dtype=args.dtype, compression=args.compression,
                            batch_size=args.batch, progress=False, after_batch=after_batch)
    seconds = time.perf_counter() - start
    print(json.dumps({"vmhwm_mb": status_kb("VmHWM") / 1024, "rss_before_mb": rss_before / 1024,
                      "vmhwm_half_mb": half[0] / 1024, "seconds": seconds,
                      "file_mb": out.stat().st_size / 2**20}))


def run_child(net: Path, puzzles: Path, out: Path, *, batch: int, threads: int,
              boards: str = "clean", dtype: str = "float32", compression: str = "none") -> dict:
    cmd = [sys.executable, __file__, "child", "--net", str(net), "--puzzles", str(puzzles),
           "--out", str(out), "--batch", str(batch), "--threads", str(threads), "--boards", boards,
           "--dtype", dtype, "--compression", compression]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_rss(args: argparse.Namespace) -> None:
    from leela_interp.network.lc0.random_net import write_random_net

    tmp = Path(tempfile.mkdtemp(dir=args.tmp))
    if args.shape == "maia-1900":
        net, what = MAIA, "maia-1900"
    else:
        net = write_random_net(tmp / "net.pb.gz", **transformer_spec(args.shape))
        what = f"random {args.shape} smolgen transformer"
    print(f"{what}, every blocks.*.hook_resid_post, {args.boards} boards, float32, no "
          f"compression, batch {args.batch}, {args.threads} threads")
    for n in args.n:
        puzzles = write_puzzles(tmp / f"puzzles-{n}.h5", n, args.distinct)
        out = tmp / f"activations-{n}.h5"
        r = run_child(net, puzzles, out, batch=args.batch, threads=args.threads,
                      boards=args.boards)
        print(f"N={n:6d}  peak RSS {r['vmhwm_mb']:5.0f} MiB (at half the rows "
              f"{r['vmhwm_half_mb']:4.0f}, after loading {r['rss_before_mb']:4.0f})  "
              f"file {r['file_mb']:8.0f} MiB  {r['seconds']:6.1f} s  "
              f"{n / r['seconds']:6.1f} puzzles/s", flush=True)
        out.unlink()
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plain_forward(net_path: Path, puzzles_path: Path, batch: int) -> tuple[float, float]:
    """(wall, CPU-time) puzzles/s of encode + forward over the clean boards, batch by batch."""
    import torch

    from leela_interp import load_network
    from leela_interp.puzzles.puzzle_set import PuzzleSet

    net = load_network(net_path)
    ps = PuzzleSet.load(puzzles_path)
    start, cpu = time.perf_counter(), cpu_seconds()
    with torch.inference_mode():
        for s in range(0, len(ps), batch):
            net(net.encode([ps.clean_board(i) for i in range(s, min(s + batch, len(ps)))]))
    return len(ps) / (time.perf_counter() - start), len(ps) / (cpu_seconds() - cpu)


def bench_throughput(args: argparse.Namespace) -> None:
    import torch

    from leela_interp import load_network
    from leela_interp.experiments.activations import cache_activations

    if not MAIA.exists():
        sys.exit(f"needs {MAIA}")
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(dir=args.tmp))
    puzzles = write_puzzles(tmp / "puzzles.h5", args.n[0], args.distinct)
    n = args.n[0]
    net = load_network(MAIA)
    plain_forward(MAIA, puzzles, args.batch)  # warm-up (imports, allocator)

    def cached(**kw) -> tuple[float, float]:
        out = tmp / "activations.h5"
        start, cpu = time.perf_counter(), cpu_seconds()
        cache_activations(net, puzzles, out, hooks="blocks.*.hook_resid_post",
                          batch_size=args.batch, progress=False, overwrite=True, **kw)
        rates = n / (time.perf_counter() - start), n / (cpu_seconds() - cpu)
        sizes["/".join((kw.get("boards", "clean"), kw.get("compression", "none"),
                        kw.get("dtype", "float32")))] = out.stat().st_size / 2**20
        out.unlink()
        return rates

    plain, cache, sizes = [], [], {}
    for _ in range(args.repeats):
        plain.append(plain_forward(MAIA, puzzles, args.batch))
        cache.append(cached(boards="clean"))
    print(f"maia-1900, {n} puzzles, batch {args.batch}, {args.threads} threads, CPU fp32; "
          f"best of {args.repeats}; puzzles/s by wall clock and by process CPU time")
    print(f"  all runs (wall): plain {[round(x[0]) for x in plain]}, "
          f"cache {[round(x[0]) for x in cache]}")
    best_plain = max(x[0] for x in plain), max(x[1] for x in plain)
    best_cache = max(x[0] for x in cache), max(x[1] for x in cache)

    def line(label: str, rates: tuple[float, float], note: str = "") -> None:
        print(f"{label:44s} wall {rates[0]:7.0f}  cpu {rates[1]:7.0f}   ratio wall "
              f"{rates[0] / best_plain[0]:.2f}  cpu {rates[1] / best_plain[1]:.2f}{note}")

    print(f"{'plain forward (encode + forward)':44s} wall {best_plain[0]:7.0f}  "
          f"cpu {best_plain[1]:7.0f}")
    line("cache every residual, clean, float32, none", best_cache)
    for label, kw in (("  lzf", dict(compression="lzf")), ("  gzip", dict(compression="gzip")),
                      ("  float16", dict(dtype="float16")), ("  both boards", dict(boards="both"))):
        runs = [cached(**{"boards": "clean", **kw}) for _ in range(args.repeats)]
        line(label, (max(r[0] for r in runs), max(r[1] for r in runs)),
             "  (2 forwards per puzzle)" if "both" in label else "")
    print("file MiB (boards/compression/dtype): "
          + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()


def bench_writer(args: argparse.Namespace) -> None:
    """Puzzles/s of cache_activations with and without the writer thread, in turn."""
    import torch

    from leela_interp import load_network
    from leela_interp.experiments.activations import cache_activations

    if not MAIA.exists():
        sys.exit(f"needs {MAIA}")
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(dir=args.tmp))
    n = args.n[0]
    puzzles = write_puzzles(tmp / "puzzles.h5", n, args.distinct)
    net = load_network(MAIA)
    out = tmp / "activations.h5"

    def run(thread: bool) -> float:
        start = time.perf_counter()
        cache_activations(net, puzzles, out, hooks="blocks.*.hook_resid_post",
                          boards=args.boards, dtype=args.dtype, batch_size=args.batch,
                          progress=False, overwrite=True, writer_thread=thread)
        rate = n / (time.perf_counter() - start)
        out.unlink()
        return rate

    run(True)  # warm-up (allocator, page cache of the puzzles)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for thread in (True, False):
            rates[thread].append(run(thread))
    print(f"maia-1900, {n} puzzles, every residual, {args.boards} boards, {args.dtype}, no "
          f"compression, batch {args.batch}, {args.threads} threads, CPU; in turn x "
          f"{args.repeats}; puzzles/s by wall clock")
    for thread, label in ((True, "writer thread"), (False, "in turn (no thread)")):
        print(f"  {label:20s} best {max(rates[thread]):6.0f}   runs "
              f"{[round(r) for r in rates[thread]]}")
    print(f"  ratio thread / in turn (best): {max(rates[True]) / max(rates[False]):.2f}")
    puzzles.unlink()
    tmp.rmdir()


def bench_read(args: argparse.Namespace) -> None:
    """Read speed of one hook for all puzzles / 256 random puzzles, by rows per chunk."""
    from leela_interp.experiments.activations import ActivationFile, _chunk_rows

    n, d, hooks = args.n[0], args.d_model, args.hooks
    tmp = Path(tempfile.mkdtemp(dir=args.tmp))
    rng = np.random.default_rng(0)
    block = rng.normal(size=(args.batch, 64, d)).astype(np.float32)
    auto = _chunk_rows(64 * d * 4, args.batch, n)
    print(f"{hooks} hooks of [{n}, 64, {d}] float32 ({n * 64 * d * 4 / 2**20:.0f} MiB each), "
          f"written in batches of {args.batch}; warm page cache; best of {args.repeats}")
    for rows in sorted({1, 4, auto, args.batch}):
        path = tmp / f"chunks-{rows}.h5"
        with h5py.File(path, "w") as f:  # the layout cache_activations writes, other chunking
            f.attrs.update(schema="leela_interp.activations/2", complete=True,
                           hooks=json.dumps([f"h{i}" for i in range(hooks)]),
                           boards=json.dumps(["clean"]))
            f.create_dataset("puzzle_id", data=np.array([str(i) for i in range(n)], object),
                             dtype=h5py.string_dtype())
            for i in range(hooks):
                ds = f.create_dataset(f"clean/h{i}", shape=(n, 64, d), dtype=np.float32,
                                      chunks=(rows, 64, d))
                for s in range(0, n, args.batch):
                    ds[s:s + args.batch] = block[:min(args.batch, n - s)]
        idx = np.sort(rng.choice(n, size=min(256, n), replace=False))
        full, some = [], []
        with ActivationFile(path) as cache:
            for _ in range(args.repeats):
                start = time.perf_counter()
                cache.load(f"h{hooks // 2}")
                full.append(time.perf_counter() - start)
                start = time.perf_counter()
                cache.load(f"h{hooks // 2}", indices=idx)
                some.append(time.perf_counter() - start)
        mib = n * 64 * d * 4 / 2**20
        print(f"chunk rows {rows:4d}{' (auto)' if rows == auto else '       '}  one hook, all "
              f"puzzles {mib / min(full):7.0f} MiB/s   256 random puzzles {min(some) * 1e3:7.1f} ms")
        path.unlink()
    tmp.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["rss", "throughput", "writer", "read", "child"])
    parser.add_argument("--n", type=int, nargs="+", default=None)
    parser.add_argument("--shape", default="768x15x24h",
                        help="rss: a random transformer DxLxHh, or maia-1900")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=500)
    parser.add_argument("--tmp", default=None, help="folder for temporary files")
    parser.add_argument("--d-model", type=int, default=768, help="read: residual width")
    parser.add_argument("--hooks", type=int, default=15, help="read: hooks in the file")
    # child-only
    parser.add_argument("--net"), parser.add_argument("--puzzles"), parser.add_argument("--out")
    parser.add_argument("--boards", default="clean"), parser.add_argument("--dtype",
                                                                          default="float32")
    parser.add_argument("--compression", default="none")
    args = parser.parse_args()
    if args.mode == "child":
        child(args)
    elif args.mode == "read":
        args.n, args.batch = args.n or [2048], args.batch or 256
        bench_read(args)
    elif args.mode == "writer":
        args.n, args.batch = args.n or [2048], args.batch or 256
        bench_writer(args)
    elif args.mode == "rss":
        args.n, args.batch = args.n or [100, 1000], args.batch or 64
        bench_rss(args)
    else:
        args.n, args.batch = args.n or [2048], args.batch or 256
        bench_throughput(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
