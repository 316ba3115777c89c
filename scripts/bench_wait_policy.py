"""Native forward throughput under each OpenMP wait policy (what ``import leela_interp`` sets).

    python scripts/bench_wait_policy.py [--threads 2] [--rounds 3] [--batches 4] [--net maia]

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so each policy runs in its own
child process; the policies take turns, ``--rounds`` times, and each child prints the best of 3
timings of ``--batches`` batches of 256 positions (CPU fp32). Policies: ``PASSIVE`` (idle
threads sleep at once: leela_interp's default), ``default`` (libgomp's own: spin ~3 ms, then
sleep; torch imported before leela_interp) and ``ACTIVE`` (spin for minutes). The load average
is printed with each timing. ``--net``: maia (maia-1900 from ../shared) or transformer (a seeded
random 256x6x8h smolgen transformer).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, tempfile, time
{first}
import torch
from leela_interp import load_network
from leela_interp.network.lc0.random_net import write_random_net
threads, batches, net = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
if net == "maia":
    model = load_network(sys.argv[4])
else:
    model = load_network(write_random_net(
        tempfile.mkdtemp() + "/t.pb.gz", body="transformer", policy="attention", d_model=256,
        layers=6, heads=8, d_ff=512, embedding="PE_DENSE", smolgen=True,
        default_activation="mish", seed=0))
planes = torch.randn(256, 112, 8, 8).clamp(0, 1)
with torch.no_grad():
    model(planes)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(batches):
            model(planes)
        best = min(best, time.perf_counter() - start)
print(256 * batches / best)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--net", choices=["maia", "transformer"], default="maia")
    args = parser.parse_args()
    maia = ROOT.parent / "shared" / "nets" / "maia-1900.pb.gz"
    policies = {"PASSIVE": ("import leela_interp", {}),
                "default": ("import torch", {}),  # torch first: leela_interp sets nothing
                "ACTIVE": ("import leela_interp", {"OMP_WAIT_POLICY": "ACTIVE"})}
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    print(f"{args.net}, batch 256, {args.threads} threads, CPU fp32, positions/s")
    for round_ in range(args.rounds):
        for name, (first, extra) in policies.items():
            done = subprocess.run(
                [sys.executable, "-c", CHILD.format(first=first), str(args.threads),
                 str(args.batches), args.net, str(maia)],
                env={**env, **extra}, capture_output=True, text=True, check=True)
            print(f"  round {round_ + 1}  {name:8s} {float(done.stdout):8.0f}   (load average "
                  f"{os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
