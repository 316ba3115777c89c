"""Per-stage cost of the pipeline on N puzzles, and a FLOP-based projection to the paper's scale.

Runs ``puzzles``, ``activations``, ``patching``, ``ablations``, ``probes`` and ``report`` one by
one, each as its own ``leela-interp stage=X`` process (the CLI's own code path, ``threads=1``),
and prints per stage its wall time (process start included), time per puzzle, full-forward
equivalents per second where the stage runs the net, and peak RSS (``os.wait4``'s
``ru_maxrss`` of that process).

The net is a seeded random lc0 net of ``--shape DxLxH`` (d_model x layers x heads, written in
lc0's format by :func:`leela_interp.network.lc0.random_net.write_random_net`) or ``--net FILE``.
It is also the weak net; the oracle is off and every puzzle filter and corruption threshold is
relaxed, and ``require_pv0_top`` is off, so that a random net keeps and analyses every puzzle.
The single-edge ablation's head is given (``--edge-layer``/``--edge-head``, the paper's L12H12
clipped to the net): a few puzzles may have no ``different_targets`` puzzle to rank heads by.
Piece-head ablation runs only if the finder selects heads (a random net rarely has any).

Then a **projection** (not a measurement): full-forward equivalents per puzzle of each of the
paper's experiments, counted from what :mod:`leela_interp.experiments.interventions` runs
(interventions restart from the cached clean stream entering their first edited block), times
FLOPs per block / heads / embedding (``torch.utils.flop_counter`` on one position: matmul FLOPs,
i.e. 2 x weights x 64 tokens plus attention and smolgen), times ``--paper-puzzles``, divided by
an assumed sustained GPU throughput ``--tflops`` x ``--utilisation``.

Usage::

    python scripts/bench_pipeline.py --shape 128x4x4 --puzzles 8
    python scripts/bench_pipeline.py --shape 768x15x24 --puzzles 2 --d-ff 1024
    python scripts/bench_pipeline.py --shape 768x15x24 --d-ff 1024 --project-only
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import leela_interp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)
import torch
from torch.utils.flop_counter import FlopCounterMode

from leela_interp import load_network
from leela_interp.network.lc0.random_net import write_random_net

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("puzzles", "activations", "patching", "ablations", "probes", "report")
RELAXED = [  # a random net keeps and analyses every puzzle
    "puzzles.oracle.enabled=false", "puzzles.filters.hard_max_weak_prob=1.0",
    "puzzles.filters.correct_min_strong_prob=0.0", "puzzles.filters.forcing_min_weak_prob=0.0",
    "puzzles.filters.unique=false", "puzzles.corruptions.max_weak_log_odds_drop=1e9",
    "puzzles.corruptions.min_strong_value_drop=0.0", "puzzles.corruptions.max_strong_prob=1.0",
    "puzzles.corruptions.max_jsd=1e9", "patching.require_pv0_top=false",
    "ablations.require_pv0_top=false", "patching.figures=false", "ablations.figures=false"]


def flops(net) -> tuple[float, float, float]:
    """FLOPs of one position: ``(embedding, one block, heads)``."""
    n_layers, d = net.config.n_layers, net.config.d_model

    def count(**kw) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            net(**kw)
        return float(fc.get_total_flops())

    full = count(planes=torch.zeros(1, 112, 8, 8))
    body = count(start_at_layer=0, resid=torch.zeros(1, 64, d))
    heads = count(start_at_layer=n_layers, resid=torch.zeros(1, 64, d))
    return full - body, (body - heads) / n_layers, heads


def forwards(n_layers: int, n_heads: int, edge_layer: int, fb: float, fh: float,
             fe: float) -> dict[str, float]:
    """Full-forward equivalents per puzzle of each experiment (upper bounds: every square and
    head run, no ``skip_identical`` savings)."""
    full = fe + n_layers * fb + fh

    def rows_from(layer: int, rows: int) -> float:  # rows restarting at ``layer``
        return rows * ((n_layers - layer) * fb + fh) / full

    return {
        # clean + corrupted forwards, then each (layer, square) from block layer + 1
        "residual patching": 2 + sum(rows_from(l + 1, 64) for l in range(n_layers)),
        # each (layer, head) from block layer, the clean/corrupted caches shared
        "head patching": sum(rows_from(l, n_heads) for l in range(n_layers)),
        # clean + corrupted, 4 variants from the edge's layer
        "single-edge ablation": 2 + rows_from(edge_layer, 4),
        # 3 variants from the first layer of the heads (upper bound: layer 0)
        "piece-head ablation": rows_from(0, 3),
        # zero/mean/resample head ablation (the ablations stage's own sweep; mean and
        # resample need one clean and one donor forward)
        "head ablation x3": 2 + 3 * sum(rows_from(l, n_heads) for l in range(n_layers)),
        # the activations stage: clean and corrupted boards
        "probes (activations)": 2,
    }


def run_stage(stage: str, args: list[str]) -> tuple[float, float]:
    """Run ``leela-interp stage=<stage> ...``; returns (wall s, peak RSS GB)."""
    exe = Path(sys.executable).with_name("leela-interp")
    t = time.perf_counter()
    proc = subprocess.Popen([str(exe), f"stage={stage}", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"stage={stage} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1e6  # KB -> GB


def write_csv(src: Path, n: int, out: Path) -> int:
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:n + 1]
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    return len(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="128x4x4", help="d_model x layers x heads")
    ap.add_argument("--d-ff", type=int, default=None, help="default: 4/3 d_model (T82: 1024)")
    ap.add_argument("--net", type=Path, default=None, help="an lc0 net instead of --shape")
    ap.add_argument("--puzzles", type=int, default=8)
    ap.add_argument("--csv", type=Path, default=ROOT / "data/puzzles/mined.csv")
    ap.add_argument("--project-only", action="store_true", help="no stages, only the projection")
    ap.add_argument("--paper-puzzles", type=int, default=22_000)
    ap.add_argument("--edge-layer", type=int, default=12,
                    help="ablations.edge.layer; default the paper's L12 (clipped to the net)")
    ap.add_argument("--edge-head", type=int, default=12,
                    help="ablations.edge.head; default the paper's H12 (clipped to the net)")
    ap.add_argument("--tflops", type=float, default=300.0,
                    help="assumed dense bf16 peak of an H100-class GPU, TFLOP/s")
    ap.add_argument("--utilisation", type=float, default=0.4, help="assumed fraction of peak")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    if a.net is None:
        d, n_layers, n_heads = (int(x) for x in a.shape.split("x"))
        a.net = write_random_net(tmp / "net.pb.gz", body="transformer", policy="attention",
                                 d_model=d, layers=n_layers, heads=n_heads,
                                 d_ff=a.d_ff or d * 4 // 3, seed=0)
    net = load_network(a.net, device="cpu")
    cfg = net.config
    fe, fb, fh = flops(net)
    full = fe + cfg.n_layers * fb + fh
    print(f"net {a.net.name}: d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads; "
          f"FLOPs/position: full {full / 1e9:.3f} G (embedding {fe / 1e9:.3f}, block "
          f"{fb / 1e9:.3f}, heads {fh / 1e9:.3f})")
    edge = min(a.edge_layer, cfg.n_layers - 1)
    per = forwards(cfg.n_layers, cfg.n_heads, edge, fb, fh, fe)
    del net

    rate = a.tflops * 1e12 * a.utilisation
    print(f"\nPROJECTION (not a measurement) for {a.paper_puzzles} puzzles at "
          f"{a.tflops:g} TFLOP/s x {a.utilisation:g} utilisation = {rate / 1e12:g} TFLOP/s "
          f"sustained (assumed H100-class dense bf16):")
    print(f"{'experiment':<22} {'fwd-eq/puzzle':>14} {'PFLOP':>9} {'minutes':>9}")
    total = 0.0
    for name, f in per.items():
        fl = f * full * a.paper_puzzles
        total += fl / rate / 60
        print(f"{name:<22} {f:14.1f} {fl / 1e15:9.2f} {fl / rate / 60:9.2f}")
    print(f"{'total':<22} {'':>14} {'':>9} {total:9.2f}")

    if not a.project_only:
        n = write_csv(a.csv, a.puzzles, tmp / "puzzles.csv")
        common = [f"out_dir={tmp / 'run'}", f"model.path={a.net}", "threads=1",
                  f"puzzles.source={tmp / 'puzzles.csv'}", f"puzzles.weak_model.path={a.net}",
                  f"ablations.edge.layer={edge}",
                  f"ablations.edge.head={min(a.edge_head, cfg.n_heads - 1)}", *RELAXED]
        stage_fwd = {"activations": per["probes (activations)"],
                     "patching": per["residual patching"] + per["head patching"],
                     "ablations": (per["single-edge ablation"] + per["piece-head ablation"]
                                   + per["head ablation x3"])}
        print(f"\n{n} puzzles from {a.csv.name}, one process per stage, threads=1")
        print(f"{'stage':<12} {'wall s':>8} {'s/puzzle':>9} {'fwd-eq/s':>9} {'peak RSS GB':>12}")
        for stage in STAGES:
            wall, rss = run_stage(stage, common)
            fwd = f"{stage_fwd[stage] * n / wall:9.1f}" if stage in stage_fwd else f"{'-':>9}"
            print(f"{stage:<12} {wall:8.1f} {wall / n:9.2f} {fwd} {rss:12.2f}")
        print("fwd-eq/s: upper-bound full-forward equivalents (see the projection) / wall time, "
              "process start included")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
