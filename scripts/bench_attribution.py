"""Attribution patching against exact patching: agreement and cost per puzzle.

For one network, builds puzzles from a Lichess puzzle CSV (the setup move pushed, so the board
has a move of history; PV = the remaining moves; the corrupted board is the first candidate of
:func:`leela_interp.puzzles.corruptions.corruption_candidates` that removes a pawn off the 1st
and 3rd moves' targets and applies to the history; *not* the paper's selection, which needs two
nets and Stockfish: for comparing two estimates of the same patches any corruption does), then

- exact patching (``residual_patching`` at ``resid_post`` and, for a transformer,
  ``head_patching``) on the first ``--exact-puzzles`` puzzles, timed;
- attribution patching (:func:`leela_interp.experiments.attribution.attribution_patching`) on all
  ``--puzzles``, timed;
- per-layer Pearson and Spearman correlation and the top-k overlap of locations
  (:func:`leela_interp.experiments.attribution.agreement`) on the puzzles both ran.

Each timing includes the chunk's preparation (its clean and corrupted forward passes).

Usage::

    python scripts/bench_attribution.py --net /work/shared/nets/maia-1900.pb.gz --puzzles 32
    python scripts/bench_attribution.py --random 768x15x24h --puzzles 8 --exact-puzzles 1
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import chess
import numpy as np
import torch

from leela_interp.experiments import attribution
from leela_interp.experiments import interventions as iv
from leela_interp.experiments import patching as pt
from leela_interp import load_network
from leela_interp.puzzles.corruptions import corruption_candidates
from leela_interp.network.lc0.random_net import write_random_net

CSV = Path(__file__).resolve().parents[1] / "../shared/data/puzzles/lichess_sample.csv"


def lichess_puzzles(path: Path, n: int) -> list[iv.Puzzle]:
    out: list[iv.Puzzle] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            moves = row["Moves"].split()
            if len(moves) < 4:
                continue
            board = chess.Board(row["FEN"])
            board.push_uci(moves[0])
            pv = tuple(chess.Move.from_uci(m) for m in moves[1:])
            keep = {pv[0].to_square, pv[2].to_square}
            for c in corruption_candidates(board, pv[0]):
                if c.kind == "remove_pawn" and not keep & set(c.squares):
                    try:
                        out.append(iv.Puzzle(board, pv, c.apply(board), len(out)))
                    except ValueError:
                        continue
                    break
            if len(out) == n:
                return out
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", help="an lc0 network file")
    ap.add_argument("--random", help="a random transformer DxLxHh (e.g. 768x15x24h) instead")
    ap.add_argument("--d-ff", type=int, default=None, help="random net's FFN width (default D*4/3)")
    ap.add_argument("--puzzles", type=int, default=16)
    ap.add_argument("--exact-puzzles", type=int, default=None, help="default: all --puzzles")
    ap.add_argument("--batch", type=int, default=256, help="rows per forward pass")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=10, help="top-k locations per puzzle")
    ap.add_argument("--csv", type=Path, default=CSV)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.random:
        d, layers, heads = (int(x) for x in args.random.rstrip("h").split("x"))
        path = write_random_net(Path(tempfile.mkdtemp()) / "r.pb.gz", seed=0,
                                body="transformer", policy="attention", d_model=d,
                                layers=layers, heads=heads, d_ff=args.d_ff or d * 4 // 3,
                                embedding="PE_MAP", smolgen=True, default_activation="mish")
    else:
        path = args.net
    net = load_network(path)
    has_heads = net.config.body == "transformer"
    puzzles = lichess_puzzles(args.csv, args.puzzles)
    n_exact = min(args.exact_puzzles or len(puzzles), len(puzzles))
    hooks = ["blocks.*.hook_resid_post", "blocks.*.hook_resid_pre"] + (
        ["blocks.*.attn.hook_z"] if has_heads else [])
    print(f"net {path}: {net.config.body} {net.config.d_model}x{net.config.n_layers}"
          f"x{net.config.n_heads}h; {len(puzzles)} puzzles ({n_exact} exact); "
          f"threads {args.threads}")

    def run_exact():
        prep = iv.prepare(net, puzzles[:n_exact], batch_size=args.batch, clean_hooks=hooks,
                          corrupted_hooks=hooks)
        return (pt.residual_patching(prep), pt.head_patching(prep) if has_heads else None)

    def run_attribution():
        prep = iv.prepare(net, puzzles, batch_size=args.batch, corrupted_hooks=hooks)
        return attribution.attribution_patching(prep, heads=has_heads)

    (exact_res, exact_heads), t_exact = timed(run_exact)
    est, t_att = timed(run_attribution)
    per_exact, per_att = t_exact / n_exact, t_att / len(puzzles)
    print(f"exact       {t_exact:8.2f} s for {n_exact} puzzles: {per_exact:8.3f} s/puzzle")
    print(f"attribution {t_att:8.2f} s for {len(puzzles)} puzzles: {per_att:8.3f} s/puzzle")
    print(f"attribution is {per_exact / per_att:.1f}x cheaper per puzzle")
    parts = [("residual resid_post [layer, square]", exact_res, est.residual["resid_post"])]
    if has_heads:
        parts.append(("heads hook_z [layer, head]", exact_heads, est.heads))
    for label, exact, estimate in parts:
        r = attribution.agreement(exact, estimate[:n_exact], k=args.k)
        print(f"{label}: {r['n_puzzles']} puzzles; top-{args.k} overlap mean "
              f"{np.mean(r['top_k_overlap']):.2f} (min {np.min(r['top_k_overlap']):.2f})")
        print("  layer " + " ".join(f"{l:5d}" for l in range(len(r["pearson"]))))
        print("  pears " + " ".join(f"{x:5.2f}" for x in r["pearson"]))
        print("  spear " + " ".join(f"{x:5.2f}" for x in r["spearman"]))


if __name__ == "__main__":
    main()
