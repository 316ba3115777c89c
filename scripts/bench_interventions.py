"""Cost of the all-heads patching sweep vs the naive (L*H + 1) full forward passes per puzzle.

The sweep (:func:`leela_interp.experiments.interventions.head_patching`) runs one clean and one
corrupted forward pass per puzzle, then each (layer l, head h) intervention restarts from the cached
clean stream entering block l, with many interventions stacked in one batch. The naive method runs
one full forward pass from the planes per (layer, head), plus the clean one.

Two measures, both printed:

- **FLOPs** (``torch.utils.flop_counter``: matmul/bmm/conv FLOPs of everything each method
  runs, including the sweep's clean and corrupted passes), divided by ``(L*H + 1)`` times the
  FLOPs of one full forward pass. Independent of the machine.
- **Time** of the sweep vs the naive method (batched the same way, one full forward per
  intervention from the planes), both from the same planes on the same machine.

Usage::

    python scripts/bench_interventions.py                      # T82 shape: 768x15x24h, d_ff 1024
    python scripts/bench_interventions.py --d-model 256 --layers 15 --heads 8 --d-ff 512 --puzzles 6

The network is a seeded random net (shape is all that matters for cost); the puzzles are real
Lichess positions with one pawn removed (the test fixture of ``tests/test_interventions.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import chess
import leela_interp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)
import torch
from torch.utils.flop_counter import FlopCounterMode

from leela_interp import load_network
from leela_interp.experiments import interventions as iv
from leela_interp.experiments import patching as pt
from leela_interp.network.lc0.random_net import write_random_net

PUZZLES = [  # (FEN after the setup move is pushed below, moves, pawn removed for the corruption)
    ("r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24", "f2g3 e6e7 b2b1 b3c1", "a2"),
    ("8/4R3/1p2P3/p4r2/P6p/1P3Pk1/4K3/8 w - - 1 64", "e7f7 f5e5 e2f1 e5e6", "b3"),
    ("6nr/pp3p1p/k1p5/8/1QN5/2P1P3/4KPqP/8 b - - 5 26", "b7b5 b4a5 a6b7 c4d6", "h2"),
    ("r2q4/pp1n1kbp/3P2b1/6N1/6Q1/P3P3/6P1/4K2R b K - 1 21", "f7g8 g4c4 g8h8 h1h7", "g2"),
    ("8/6p1/2B1bn2/6k1/3B4/6K1/4P3/8 b - - 4 44", "e6d5 d4f6 g5f5 c6d5", "e2"),
    ("rn3rk1/p5pp/3N4/4np1q/5Q2/1P3K2/PB1P2P1/2R4R w - - 0 25", "f3f2 e5d3 f2e3 d3f4", "a2"),
]


def puzzles(n: int) -> list[iv.Puzzle]:
    out = []
    for i in range(n):
        fen, moves, pawn = PUZZLES[i % len(PUZZLES)]
        board = chess.Board(fen)
        m = moves.split()
        board.push_uci(m[0])
        corrupted = board.copy(stack=False)
        corrupted.remove_piece_at(chess.parse_square(pawn))
        out.append(iv.Puzzle(board, tuple(chess.Move.from_uci(x) for x in m[1:]), corrupted, i))
    return out


def sweep(net, ps, batch_size: int):
    prep = iv.prepare(net, ps, batch_size=batch_size,
                      clean_hooks=["blocks.*.hook_resid_pre", "blocks.*.attn.hook_z"],
                      corrupted_hooks=["blocks.*.attn.hook_z"])
    return pt.head_patching(prep)


def naive(net, ps, batch_size: int):
    """One full forward from the planes per (layer, head) and puzzle, plus the clean pass (and
    the corrupted pass that provides the patched values), batched like the sweep."""
    L, H = net.config.n_layers, net.config.n_heads
    planes = net.encode([p.clean for p in ps])
    with torch.no_grad():
        net(planes)
        _, corr = net.run_with_cache(net.encode([p.corrupted for p in ps]),
                                     names="blocks.*.attn.hook_z")
        rows = [(p, l, h) for p in range(len(ps)) for l in range(L) for h in range(H)]
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            idx = torch.tensor([r[0] for r in chunk])
            hooks = []
            for layer in range(L):
                sel = [(i, r[0], r[2]) for i, r in enumerate(chunk) if r[1] == layer]
                if not sel:
                    continue

                def fn(t, hook, sel=sel, layer=layer):
                    t = t.clone()
                    i, p, h = (torch.tensor(x) for x in zip(*sel))
                    t[i, h] = corr[f"blocks.{layer}.attn.hook_z"][p, h]
                    return t
                hooks.append((f"blocks.{layer}.attn.hook_z", fn))
            net.run_with_hooks(planes[idx], fwd_hooks=hooks)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, repeat: int) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds of this process) over ``repeat`` runs. On a shared,
    loaded machine CPU time is the steadier measure of the work done."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=15)
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--d-ff", type=int, default=1024)
    ap.add_argument("--puzzles", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=1, help="time each method this many times")
    ap.add_argument("--no-time", action="store_true", help="count FLOPs only")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_net(Path(tmp) / "net.pb.gz", body="transformer", policy="attention",
                                d_model=args.d_model, layers=args.layers, heads=args.heads,
                                d_ff=args.d_ff, embedding="PE_DENSE", smolgen=True,
                                default_activation="mish", seed=0)
        net = load_network(path)
    L, H, n = net.config.n_layers, net.config.n_heads, args.puzzles
    ps = puzzles(n)
    planes = net.encode([p.clean for p in ps[:1]])
    with torch.no_grad():
        one = flops(lambda: net(planes))
    f_sweep = flops(lambda: sweep(net, ps, args.batch_size)) / n
    print(f"net {args.d_model}x{L}x{H}h d_ff {args.d_ff}; {n} puzzle(s); batch {args.batch_size};"
          f" torch threads {torch.get_num_threads()}")
    print(f"full forward: {one / 1e9:.3f} GFLOP; naive (L*H+1 = {L * H + 1} forwards): "
          f"{(L * H + 1) * one / 1e9:.1f} GFLOP per puzzle")
    print(f"sweep: {f_sweep / 1e9:.1f} GFLOP per puzzle = {f_sweep / one:.1f} forwards = "
          f"{f_sweep / ((L * H + 1) * one):.3f} of naive (FLOPs)")
    print(f"  (model: prefix reuse alone gives (2L + H*L*(L+1)/2) / ((L*H+1)*L) = "
          f"{(2 * L + H * L * (L + 1) / 2) / ((L * H + 1) * L):.3f}, ignoring embedding/heads)")
    if not args.no_time:
        (w_sweep, c_sweep) = timed(lambda: sweep(net, ps, args.batch_size), args.repeat)
        (w_naive, c_naive) = timed(lambda: naive(net, ps, args.batch_size), args.repeat)
        print(f"CPU time per puzzle: sweep {c_sweep / n:.2f} s, naive {c_naive / n:.2f} s, "
              f"ratio {c_sweep / c_naive:.3f}")
        print(f"wall time per puzzle: sweep {w_sweep / n:.2f} s, naive {w_naive / n:.2f} s, "
              f"ratio {w_sweep / w_naive:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
