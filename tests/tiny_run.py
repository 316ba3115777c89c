"""Tiny real runs of the pipeline: a Lichess CSV and two random nets, and the config that lets
random nets keep the puzzles (every filter relaxed, no oracle, every puzzle analysed).

:func:`make_run` runs every stage once on :data:`ROWS` (the ``tiny_run`` fixture of
``conftest.py``): the summary and report tests compare its files with hand computations and
with each other. Its rows are chosen so that every selection matters: puzzles with and without
``different_targets``, puzzles left out by the overlap rule in both subsets (some by their PV
alone: a later move returns to PV[0]'s target), PVs of 3 plies (no ``later_targets``) and
longer, and ``max_puzzles`` leaving out rows of both subsets (patching 3, ablations 2).
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from leela_interp.cli import CONFIG_PATH
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.puzzles.lichess import COLUMNS

CONF = Path(CONFIG_PATH)
# Real Lichess rows (CC0, ../shared/data/puzzles/lichess_sample.csv): FEN, Moves.
ROWS = [
    "r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24,f2g3 e6e7 b2b1 b3c1 b1c1 h6c1",
    "5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27,d3d6 f8d8 d6d8 f6d8",
    "8/8/1p6/k7/P1R5/1K5r/8/8 w - - 26 64,c4c3 h3c3 b3c3 a5a4 c3b2 a4b4",
    "r2qr1k1/b1p2ppp/pp4n1/P1P1p3/4P1n1/B2P2Pb/3NBP1P/RN1QR1K1 b - - 1 16,b6c5 e2g4 h3g4 d1g4",
    "6k1/pp1r1pp1/1qp1p2p/4P2P/5Q2/1P4R1/P1Pr1PP1/R5K1 b - - 4 23,b6d4 f4f6 d4f2 f6f2 d2f2 g1f2",
    "2r3k1/2r4p/4p1p1/1p1q1pP1/p1bP1P1Q/P6R/5B2/2R3K1 b - - 5 34,c4e2 h4h7 c7h7 c1c8 g8g7 c8c7",
    "8/4R3/1p2P3/p4r2/P6p/1P3Pk1/4K3/8 w - - 1 64,e7f7 f5e5 e2f1 e5e6",
    "r4k1r/1pp2p2/p2p3p/3N4/3P2q1/8/PPP5/1K2Q1NR b - - 1 23,a8e8 e1e8 f8e8 d5f6 e8e7 f6g4",
    "8/7R/8/5p2/4bk1P/8/2r2K2/6R1 w - - 7 51,f2f1 f4f3 f1e1 c2c1 e1d2 c1g1",
    "2R2r1k/pQ4pp/5rp1/3B4/q2n4/7P/P4PP1/5RK1 w - - 3 30,c8c7 d4e2 g1h2 a4f4 h2h1 e2g3 f2g3 f4f1",
    "6k1/5p2/4p3/P1B5/2P4P/4Pnp1/Rb1rN3/5K2 b - - 1 33,d2e2 f1e2 g3g2 e3e4 f3d4 e2f2",
    "6nr/pp3p1p/k1p5/8/1QN5/2P1P3/4KPqP/8 b - - 5 26,b7b5 b4a5 a6b7 c4d6 b7b8 a5d8",
    "8/8/8/3N2p1/5b2/3p3P/5kP1/3K4 w - - 16 56,d5f4 g5f4 h3h4 f2g2 h4h5 f4f3 d1d2 f3f2",
    "7r/p2q1pk1/1pp3p1/8/6P1/4Q3/PP1R1P1r/5KN1 b - - 0 38,d7g4 e3e5 f7f6 e5c7 g7h6 c7h2",
    "r2q4/pp1n1kbp/3P2b1/6N1/6Q1/P3P3/6P1/4K2R b K - 1 21,f7g8 g4c4 g8h8 h1h7 g6h7 g5f7",
    "r6k/q1pb1p1p/1b3Pr1/p1ppP2Q/3P2p1/4B3/PP2NRPP/3R2K1 b - - 1 25,"
    "d7e6 e2f4 c5d4 f4g6 f7g6 h5h6",
]
#: Puzzles of :func:`make_run`: the 16 rows, then the first 8 again under new ids (so that the
#: probes are tested on puzzles they also trained on and their accuracies are not all 0).
N_PUZZLES = 24
#: ``patching.max_puzzles`` and ``ablations.max_puzzles`` of :func:`make_run`.
PATCHING_MAX = 21
ABLATIONS_MAX = 22
METHODS = ("zero", "mean")
"""``ablations.method`` of :func:`make_run`."""
SPLITS = ("all", "different_targets", "same_targets")
"""``probes.splits`` of :func:`make_run`."""
PIECE_HEADS = {"knight": [[0, 1]], "bishop": [[1, 2]], "rook": [[1, 3]]}


def write_inputs(root: Path, rows: list[str], n: int) -> tuple[Path, Path, Path]:
    """Write ``puzzles.csv`` (``n`` puzzles cycling through ``rows``, ids ``p000``...), a random
    2-layer, 4-head transformer (the strong net) and a random CNN (the weak net) under ``root``;
    returns their paths ``(csv, strong, weak)``."""
    csv = root / "puzzles.csv"
    lines = [",".join(COLUMNS)]
    for i in range(n):
        fen, moves = rows[i % len(rows)].split(",")
        lines.append(f"p{i:03d},{fen},{moves},,,,,,,")
    csv.write_text("\n".join(lines) + "\n")
    strong = write_random_net(root / "strong.pb.gz", body="transformer", policy="attention",
                              d_model=32, layers=2, heads=4, d_ff=32, seed=1)
    weak = write_random_net(root / "weak.pb.gz", seed=2)
    return csv, strong, weak


def overrides(inputs: tuple[Path, Path, Path], out_dir: Path, *extra: str) -> list[str]:
    """The command-line overrides of ``stage=all`` on :func:`write_inputs`' files, with every
    puzzle filter relaxed so that random nets keep the puzzles, the cheapest probes and
    ablations, no figures, and every puzzle with a corruption analysed (a random net rarely ranks
    PV[0] first); ``extra`` overrides come last."""
    csv, strong, weak = inputs
    return [
        "stage=all", f"out_dir={out_dir}", f"model.path={strong}", "threads=1",
        f"puzzles.source={csv}", f"puzzles.weak_model.path={weak}",
        "puzzles.oracle.enabled=false", "puzzles.filters.hard_max_weak_prob=0.5",
        "puzzles.filters.correct_min_strong_prob=0.0", "puzzles.filters.forcing_min_weak_prob=0.0",
        "puzzles.filters.unique=false", "puzzles.corruptions.max_weak_log_odds_drop=5.0",
        "puzzles.corruptions.min_strong_value_drop=0.0", "puzzles.corruptions.max_strong_prob=1.0",
        "puzzles.corruptions.max_jsd=5.0", "ablations.method=[zero]", "probes.seeds=[0]",
        "probes.splits=[all]", "probes.bilinear.epochs=1", "patching.figures=false",
        "ablations.figures=false", "patching.require_pv0_top=false",
        "ablations.require_pv0_top=false", *extra]


def compose_config(inputs: tuple[Path, Path, Path], out_dir: Path, *extra: str) -> DictConfig:
    """The config of :func:`overrides`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides(inputs, out_dir, *extra))


def make_run(root: Path) -> Path:
    """Run every stage on :data:`N_PUZZLES` puzzles of :data:`ROWS` under ``root``; returns the
    run folder (``puzzles.h5`` ... ``probes.h5``, ``report.md``)."""
    from leela_interp.stages import run_stages

    out = root / "run"
    pieces = [f"ablations.piece_heads.heads.{piece}={heads}".replace(" ", "")
              for piece, heads in PIECE_HEADS.items()]
    run_stages(compose_config(
        write_inputs(root, ROWS, N_PUZZLES), out, f"patching.max_puzzles={PATCHING_MAX}",
        f"ablations.max_puzzles={ABLATIONS_MAX}", f"ablations.method=[{','.join(METHODS)}]",
        "ablations.piece_heads.min_pv_length=3", *pieces, "probes.seeds=[0,1]",
        f"probes.splits=[{','.join(SPLITS)}]"))
    return out
