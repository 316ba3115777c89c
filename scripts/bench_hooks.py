"""Cost of hooks: plain forward vs run_with_cache of every residual and attention pattern.

    python scripts/bench_hooks.py [--batch 256] [--threads 1] [--repeats 5]

Prints positions/s for maia-1900 (../shared, skipped if absent) and a seeded random 256x6x8h
smolgen transformer, CPU fp32, and the ratio cached/plain (issue aim: <= 1.3x the time).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from leela_interp import load_network
from leela_interp.network.lc0.random_net import write_random_net

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def rate(fn, batch: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):  # best of several: the least disturbed by other load
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets = {}
    if (SHARED / "nets" / "maia-1900.pb.gz").exists():
        nets["maia-1900 (64x6 SE-CNN)"] = SHARED / "nets" / "maia-1900.pb.gz"
    nets["random 256x6x8h smolgen transformer"] = write_random_net(
        Path(tempfile.mkdtemp()) / "t.pb.gz", body="transformer", policy="attention",
        d_model=256, layers=6, heads=8, d_ff=512, embedding="PE_DENSE", smolgen_compress=32,
        smolgen_hidden=256, smolgen_gen=256, default_activation="mish")
    print(f"batch {args.batch}, {args.threads} thread(s), CPU fp32, best of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, path in nets.items():
        net = load_network(path)
        planes = (torch.rand(args.batch, 112, 8, 8) < 0.1).float()
        names = ["blocks.*.hook_resid_post"]
        if net.config.body == "transformer":
            names.append("blocks.*.attn.hook_pattern")
        with torch.inference_mode():
            plain = rate(lambda: net(planes), args.batch, args.repeats)
            cached = rate(lambda: net.run_with_cache(planes, names=names), args.batch,
                          args.repeats)
        print(f"{name:38s} plain {plain:7.0f}/s  run_with_cache({', '.join(names)}) "
              f"{cached:7.0f}/s  time ratio {plain / cached:.2f}x")


if __name__ == "__main__":
    main()
