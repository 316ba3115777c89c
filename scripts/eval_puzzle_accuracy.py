"""First-move accuracy of lc0 networks on a Lichess-format puzzle CSV.

For each puzzle, the position is the one after the setup move ``Moves[0]`` (with that move as
history), and the network's policy is soft-maxed over the legal moves only (temperature 1).
Reported per network:

* ``accuracy``: fraction of puzzles where the argmax over legal moves is the solution's first
  move ``Moves[1]`` (= PV[0]);
* ``mean_p``: mean probability of PV[0];
* the same split by puzzles with and without the ``mateIn1`` theme.

Every row is read (``mateIn1`` puzzles included) unless ``--exclude-themes`` says otherwise.

    python scripts/eval_puzzle_accuracy.py data/nets/strong-bt-64x4.pb.gz \\
        data/nets/weak-bt-32x2.pb.gz --puzzles ../shared/data/puzzles/lichess_sample.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leela_interp.network.loading import load_network  # noqa: E402
from leela_interp.puzzles.lichess import read_puzzles  # noqa: E402


def evaluate(net, puzzles, batch_size: int = 512) -> dict[str, float]:
    hits, probs = [], []
    for start in range(0, len(puzzles), batch_size):
        chunk = puzzles[start:start + batch_size]
        boards = [p.board() for p in chunk]
        for puzzle, dist in zip(chunk, net.move_probabilities(boards)):
            target = puzzle.pv[0]
            probs.append(dist.get(target, 0.0))
            hits.append(max(dist, key=dist.get) == target)
    hits, probs = np.array(hits), np.array(probs)
    mate1 = np.array(["mateIn1" in p.themes for p in puzzles])
    result = {"puzzles": len(puzzles), "accuracy": float(hits.mean()),
              "mean_p": float(probs.mean())}
    for name, sel in (("mateIn1", mate1), ("not_mateIn1", ~mate1)):
        if sel.any():
            result[f"accuracy_{name}"] = float(hits[sel].mean())
            result[f"n_{name}"] = int(sel.sum())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nets", nargs="+", type=Path)
    parser.add_argument("--puzzles", type=Path,
                        default=Path("../shared/data/puzzles/lichess_sample.csv"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--exclude-themes", nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    puzzles, counts = read_puzzles(args.puzzles, limit=args.limit,
                                   exclude_themes=args.exclude_themes)
    print(f"{len(puzzles)} puzzles from {args.puzzles} (rejected: {counts.rejected})")
    results = {}
    for path in args.nets:
        t0 = time.time()
        net = load_network(path)
        r = evaluate(net, puzzles)
        r["seconds"] = round(time.time() - t0, 1)
        results[str(path)] = r
        print(f"{path}: first-move accuracy {r['accuracy']:.4f}, mean P(PV[0]) "
              f"{r['mean_p']:.4f}  {json.dumps(r)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
