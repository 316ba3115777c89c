"""Throughput of the puzzles stage's two slow parts: the network pass and the Stockfish oracle.

    python scripts/bench_puzzles.py [--puzzles 500] [--threads 1] [--batch 256]
                                    [--oracle-puzzles 40] [--depth 12] [--engines 1 2]

* Network pass: both nets (default maia-1900 strong, maia-1100 weak from ../shared/nets) on
  every PV ply of the first ``--puzzles`` puzzles of ../shared/data/puzzles/lichess_sample.csv
  with PV >= 3 plies (what the stage computes for a kept puzzle: P(PV move), top move, WDL),
  encoding and legal masks included; once with the torch backend, once with onnxruntime
  (same weights, exported in memory) when it is installed. CPU, fp32.
* Oracle: ``Oracle.check_puzzles`` (every PV ply, multipv 2, the given depth, no cache) on the
  first ``--oracle-puzzles`` of those puzzles, with each engine count of ``--engines`` (fresh
  engine processes each time). Also printed: the searches' summed wall time over the run's
  wall time, i.e. how many searches were in flight on average (the pool's parallelism: 2.0
  means two engines searched all the time).

Prints puzzles/s (and positions/s) and the 1-minute load average before and after each part:
on a shared machine, compare numbers only at a similar load.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import leela_interp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)
import torch

from leela_interp.puzzles.config import NetSpec
from leela_interp.puzzles.evaluation import evaluate_moves, load_net
from leela_interp.puzzles.lichess import read_puzzles
from leela_interp.puzzles.oracle import Oracle, OracleConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def bench_nets(puzzles, strong: str, weak: str, backend: str, batch: int, threads: int) -> None:
    nets = [load_net(NetSpec(path), backend=backend, device="cpu", threads=threads)
            for path in (strong, weak)]
    boards = [b for p in puzzles for b in p.boards()]
    moves = [m for p in puzzles for m in p.pv_moves]
    evaluate_moves(nets[0], boards[:batch], moves[:batch], batch)  # warm-up
    before = load()
    start = time.perf_counter()
    for net in nets:
        evaluate_moves(net, boards, moves, batch)
    seconds = time.perf_counter() - start
    print(f"network pass, {backend:<11} threads={threads} batch={batch}: "
          f"{len(puzzles) / seconds:8.1f} puzzles/s ({2 * len(boards) / seconds:7.0f} positions/s, "
          f"{len(puzzles)} puzzles, {len(boards)} plies x 2 nets, {seconds:.1f} s) "
          f"[{before}, after {load()}]")


def bench_oracle(puzzles, depth: int, engines: int) -> None:
    config = OracleConfig(depth=depth, num_engines=engines)
    searching = []  # wall time of each search, on the pool's threads

    with Oracle(config) as oracle:
        search = oracle._search

        def timed(*args):
            t = time.perf_counter()
            try:
                return search(*args)
            finally:
                searching.append(time.perf_counter() - t)

        oracle._search = timed
        before = load()
        start = time.perf_counter()
        oracle.check_puzzles(puzzles)
        seconds = time.perf_counter() - start
        positions = oracle.stats["searches"]
    print(f"oracle, depth {depth}, {engines} engine(s): {len(puzzles) / seconds:6.2f} puzzles/s "
          f"({positions / seconds:6.1f} positions/s, {len(puzzles)} puzzles, {seconds:.1f} s); "
          f"searches in flight {sum(searching) / seconds:.2f} [{before}, after {load()}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(SHARED / "data/puzzles/lichess_sample.csv"))
    parser.add_argument("--strong", default=str(SHARED / "nets/maia-1900.pb.gz"))
    parser.add_argument("--weak", default=str(SHARED / "nets/maia-1100.pb.gz"))
    parser.add_argument("--puzzles", type=int, default=500)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--oracle-puzzles", type=int, default=40)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--engines", type=int, nargs="*", default=[1, 2],
                        help="engine counts to time (none: skip the oracle)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    puzzles, _ = read_puzzles(args.source, limit=4 * max(args.puzzles, args.oracle_puzzles))
    puzzles = [p for p in puzzles if len(p.pv) >= 3]
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {load()}")
    for backend in args.backends:
        try:
            bench_nets(puzzles[:args.puzzles], args.strong, args.weak, backend, args.batch,
                       args.threads)
        except Exception as exc:  # e.g. onnxruntime missing: say so, go on
            print(f"network pass, {backend}: unavailable ({exc})")
    # The same puzzles for each engine count: every pool starts fresh processes, no cache.
    for engines in args.engines:
        bench_oracle(puzzles[:args.oracle_puzzles], args.depth, engines)


if __name__ == "__main__":
    main()
