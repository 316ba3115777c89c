"""Forward throughput: native module vs onnxruntime vs onnx2torch on the same ONNX export.

    python scripts/bench_onnx.py [--batch 256] [--threads 2] [--batches 4] [--rounds 3]

CPU, fp32, ``torch.set_num_threads(threads)`` and onnxruntime ``intra_op_num_threads=threads``.
Nets: maia-1900 (../shared/nets, skipped if absent) and a seeded random 256x6x8h PE_DENSE smolgen
transformer (mish). Each net is exported with :func:`leela_interp.network.onnx.export_onnx`; the
same file is run by onnxruntime and converted by onnx2torch (the approach of the leela-interp
paper's code). For maia-1900 lc0's own ``leela2onnx`` export (../shared/nets/onnx) is also run.
Positions/s is the best of ``rounds`` timings of ``batches`` batches of identical planes (board
encoding excluded), the backends timed in turn within each round; the load average is printed
with each net, since a busy machine slows every backend. The max |policy logit| difference from the native module is printed too.

onnx2torch (``pip install --no-deps onnx2torch``) imports torchvision for its NMS and RoIAlign
converters only; when torchvision is absent a placeholder module is installed so that the import
succeeds (lc0 graphs use neither op).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from leela_interp import load_network
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.network.onnx import OnnxRuntimeNet, export_onnx

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TRANSFORMER = dict(body="transformer", policy="attention", d_model=256, layers=6, heads=8,
                   d_ff=512, embedding="PE_DENSE", smolgen=True, default_activation="mish")


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


def import_onnx2torch():
    """onnx2torch's ``convert``, or the reason it cannot be used."""
    if importlib.util.find_spec("onnx2torch") is None:
        return None, "not installed (pip install --no-deps onnx2torch)"
    if importlib.util.find_spec("torchvision") is None:
        stub = types.ModuleType("torchvision")
        stub.ops = types.ModuleType("torchvision.ops")

        def unavailable(*args, **kwargs):
            raise RuntimeError("torchvision is not installed")

        stub.ops.roi_align = stub.ops.nms = stub.ops.box_convert = unavailable
        sys.modules.setdefault("torchvision", stub)
        sys.modules.setdefault("torchvision.ops", stub.ops)
    try:
        from onnx2torch import convert
    except Exception as e:  # report any import failure instead of crashing the benchmark
        return None, f"import failed: {type(e).__name__}: {e}"
    return convert, ""


def rates(fns: list, planes, batches: int, rounds: int, gap: float = 0.1) -> list[float]:
    """Positions/s of each function: best of ``rounds``, the functions timed in turn each round
    (so that a change in the machine's load affects all of them alike).

    Each timing starts after ``gap`` seconds idle: onnxruntime's and OpenMP's worker threads
    spin for a while after a call, and without the pause they take CPU from the candidate
    timed next (on 2 cores that cost the native forward timed after onnxruntime ~15%).
    """
    for fn in fns:  # warm-up
        fn(planes)
        fn(planes)
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            time.sleep(gap)
            start = time.perf_counter()
            for _ in range(batches):
                fn(planes)
            best[i] = min(best[i], time.perf_counter() - start)
    return [planes.shape[0] * batches / t for t in best]


def bench(label: str, pb_path: Path, lc0_onnx: Path | None, args, tmp: Path, convert) -> None:
    net = load_network(pb_path)
    planes = net.encode(positions(args.batch))
    onnx_path = export_onnx(net, tmp / (pb_path.name.split(".")[0] + ".onnx"))
    with torch.inference_mode():
        reference = net(planes).policy_logits

        def native(p):
            return net(p)

        rows = [("native forward (leela_interp)", native, reference)]
        ort_net = OnnxRuntimeNet(onnx_path, threads=args.threads)
        rows.append(("onnxruntime, our export", ort_net, ort_net(planes).policy_logits))
        if lc0_onnx is not None and lc0_onnx.exists():
            lc0_net = OnnxRuntimeNet(lc0_onnx, threads=args.threads, input_format=1)
            rows.append(("onnxruntime, lc0 leela2onnx export", lc0_net,
                         lc0_net(planes).policy_logits))
        if convert is not None:
            converted = convert(str(onnx_path)).eval()
            rows.append(("onnx2torch, our export", converted, converted(planes)[0]))
        speeds = rates([fn for _, fn, _ in rows], planes, args.batches, args.rounds)
        print(f"\n{label}: batch {args.batch}, {args.threads} threads, CPU fp32 "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        for (name, _, policy), speed in zip(rows, speeds):
            err = float((policy - reference).abs().max())
            print(f"  {name:38s} {speed:9.0f} positions/s   (max |d policy| vs native "
                  f"{err:.1e})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    convert, why = import_onnx2torch()
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, onnx2torch "
          + (importlib.metadata.version("onnx2torch") if convert else f"unavailable: {why}"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        maia = SHARED / "nets" / "maia-1900.pb.gz"
        if maia.exists():
            bench("maia-1900 (64x6 SE-CNN)", maia, SHARED / "nets" / "onnx" / "maia-1900.onnx",
                  args, tmp, convert)
        else:
            print(f"\nmaia-1900: skipped ({maia} is absent)")
        path = write_random_net(tmp / "t256x6x8h.pb.gz", seed=0, **TRANSFORMER)
        bench("random 256x6x8h PE_DENSE smolgen transformer", path, None, args, tmp, convert)


if __name__ == "__main__":
    import importlib.metadata

    main()
