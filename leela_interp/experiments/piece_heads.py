"""Piece-movement heads found from attention patterns, not picked by hand.

The paper picked its 78 knight / bishop / rook heads by looking at attention patterns; this
module scores every head instead. For a piece type P, a head's **score** is the mean attention
mass its query rows put on the squares a P move away, over the query squares on which the
side to move has a P:

    score[P, layer, head] = mean over (position, query q holding the mover's P) of
                            sum over keys k a P move away from q of pattern[head, q, k]

"A P move away" is the piece's movement on an empty board (:func:`move_masks`: the 8 knight
jumps, the whole diagonals, the whole rank and file), whatever stands in between. Those sets
are unchanged by every flip and transpose of the board, so they are the same in token
numbering as on the board. Beside the score: the **control**, the same mass from the query
squares that do not hold the mover's P (a head with a fixed, piece-blind pattern scores the
same on both), and the **chance** level, the mean share of the 64 squares that are a P move
away from the queries of the score (what a uniform row would put there).

:func:`select_heads` lists, per piece type, the heads whose score is at least a set multiple of
chance (``ablations.piece_heads.find.min_lift``; a head that passes for several types goes to the
type where its score is the largest multiple of chance). :func:`write` stores scores and lists
in ``piece_heads.h5``; the ablations stage runs the piece-movement-head ablation from those
lists when none are configured (``docs/interventions.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import chess
import h5py
import numpy as np
import torch

from leela_interp.board.encoding import tokens_to_squares, transform_for
from leela_interp.errors import ConfigError
from leela_interp.experiments.interventions import PIECE_TYPES as PIECES
from leela_interp.outputs.results import ChunkedOutput, label_axes, write_strings

OUTPUT = "piece_heads.h5"
SCHEMA = "leela_interp.piece_heads/1"


def move_masks() -> np.ndarray:
    """``bool [3, 64, 64]``: ``[piece, query, key]`` true when ``key`` is a move of that piece
    (:data:`PIECES` order) away from ``query`` on an empty board (python-chess squares; equally
    tokens, see the module docstring)."""
    masks = np.zeros((len(PIECES), 64, 64), bool)
    for q in chess.SQUARES:
        bbs = (chess.BB_KNIGHT_ATTACKS[q], chess.BB_DIAG_ATTACKS[q][0],
               chess.BB_RANK_ATTACKS[q][0] | chess.BB_FILE_ATTACKS[q][0])
        for p, bb in enumerate(bbs):
            masks[p, q, list(chess.SquareSet(bb))] = True
    return masks


@dataclass
class MovementScores:
    """Every head's piece-movement scores (see the module docstring).

    Attributes:
        score: ``[piece, layer, head]`` mean attention mass on the piece's move squares from
            query squares holding the mover's piece (NaN for a type with no such query).
        control: ``[piece, layer, head]`` the same mass from every other query square.
        chance: ``[piece]`` mean share of the 64 keys that are move squares, over the score's
            queries (a uniform row's score).
        n_queries: ``[piece]`` (position, query) pairs behind each score.
        n_positions: positions scored.
    """

    score: np.ndarray
    control: np.ndarray
    chance: np.ndarray
    n_queries: np.ndarray
    n_positions: int


@torch.no_grad()
def movement_scores(net, boards: Sequence[chess.Board], *,
                    batch_size: int = 64) -> MovementScores:
    """Score every head of ``net`` on ``boards`` (one forward pass per batch; each layer's
    ``blocks.{layer}.attn.hook_pattern`` is reduced as it is computed, never stored).

    Raises:
        ConfigError: ``net`` has no attention heads, or ``boards`` is empty.
    """
    if net.config.body != "transformer" or net.config.n_heads == 0:
        raise ConfigError(f"{net.path} has no attention heads ({net.config.body} body): "
                          f"piece-movement heads need a transformer")
    if not boards:
        raise ConfigError("no positions to score the piece-movement heads on")
    n_layers, n_heads = net.config.n_layers, net.config.n_heads
    device = next(net.parameters()).device
    masks = torch.as_tensor(move_masks(), device=device)
    sums = torch.zeros(2, len(PIECES), n_layers, n_heads, dtype=torch.float64, device=device)
    counts = np.zeros((2, len(PIECES)))
    chance_sum = np.zeros(len(PIECES))
    fmt = net.config.input_format
    sizes = masks.sum(-1).cpu().numpy()  # [piece, token]
    for s in range(0, len(boards), batch_size):
        batch = boards[s:s + batch_size]
        own = np.zeros((len(batch), len(PIECES), 64), bool)
        for b, board in enumerate(batch):
            squares = tokens_to_squares(np.arange(64), [board.turn] * 64,
                                        transform_for(board, fmt))
            for t, sq in enumerate(squares):
                piece = board.piece_at(int(sq))
                if piece is not None and piece.color == board.turn:
                    for p, kind in enumerate(PIECES.values()):
                        own[b, p, t] = piece.piece_type == kind
        counts[0] += own.sum((0, 2))
        counts[1] += (~own).sum((0, 2))
        chance_sum += (own * sizes[None]).sum((0, 2)) / 64
        sel = torch.as_tensor(own, device=device).to(torch.float64)  # [B, piece, query]

        def reduce(pattern: torch.Tensor, hook) -> None:
            layer = int(hook.name.split(".")[1])
            # mass[b, piece, head, query] on that piece's move squares
            mass = torch.einsum("bhqk,pqk->bphq", pattern.double(), masks.double())
            sums[0, :, layer] += torch.einsum("bphq,bpq->ph", mass, sel)
            sums[1, :, layer] += torch.einsum("bphq,bpq->ph", mass, 1 - sel)

        net.run_with_hooks(net.encode(batch).to(device),
                           fwd_hooks=[("blocks.*.attn.hook_pattern", reduce)])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums.cpu().numpy() / counts[:, :, None, None]
        chance = chance_sum / counts[0]
    return MovementScores(means[0].astype(np.float32), means[1].astype(np.float32),
                          chance, counts[0].astype(np.int64), len(boards))


def select_heads(scores: MovementScores, min_lift: float) -> dict[str, list[tuple[int, int]]]:
    """``{piece: [(layer, head), ...]}``: the heads whose score is at least ``min_lift`` times
    the piece's chance level, best first; a head that passes for several piece types is listed
    only under the type where its score is the largest multiple of chance.

    Raises:
        ConfigError: ``min_lift`` not above 1 (a uniform row scores chance, lift 1).
    """
    if not min_lift > 1:
        raise ConfigError(f"piece-movement heads: min_lift={min_lift!r}; give a number above 1 "
                          f"(the score as a multiple of a uniform row's)")
    lift = np.nan_to_num(scores.score / scores.chance[:, None, None], nan=0.0)
    passed = lift >= min_lift
    best = np.argmax(np.where(passed, lift, -np.inf), axis=0)  # [layer, head]
    lists = {}
    for p, piece in enumerate(PIECES):
        heads = [(int(l), int(h)) for l, h in zip(*np.nonzero(passed[p] & (best == p)))]
        lists[piece] = sorted(heads, key=lambda lh: -lift[p][lh])
    return lists


def write(path: str | Path, scores: MovementScores, lists: Mapping[str, Sequence], *,
          min_lift: float, config: Mapping, attrs: Mapping) -> Path:
    """Write ``piece_heads.h5`` (layout: ``docs/interventions.md``) in one step through
    :class:`leela_interp.outputs.results.ChunkedOutput` (a temp file renamed when whole), with
    ``config`` as its hash."""

    def fill(f: h5py.File) -> None:
        f.attrs.update({**attrs, "min_lift": float(min_lift),
                        "n_positions": scores.n_positions})
        write_strings(f, "piece_names", list(PIECES))
        what = "attention mass on the piece's empty-board move squares"
        label_axes(f.create_dataset("score", data=scores.score), "piece", "layer", "head",
                   meaning=f"mean {what}, from query squares holding the mover's piece")
        label_axes(f.create_dataset("control", data=scores.control), "piece", "layer", "head",
                   meaning=f"mean {what}, from the other query squares")
        label_axes(f.create_dataset("chance", data=scores.chance), "piece",
                   meaning="mean share of the 64 keys that are move squares (a uniform row)")
        label_axes(f.create_dataset("n_queries", data=scores.n_queries), "piece",
                   meaning="(position, query square) pairs behind each score")
        g = f.create_group("heads")
        g.attrs["meaning"] = (f"[layer, head] rows per piece type: score >= min_lift ({min_lift}) "
                              f"x chance, best first; each head under one type at most")
        for piece in PIECES:
            label_axes(g.create_dataset(piece, data=np.array(lists.get(piece, []),
                                                             np.int64).reshape(-1, 2)),
                       "head", "layer_head")
    return ChunkedOutput(path, schema=SCHEMA, config=config, resume=False).finish(fill)


def read_lists(path: str | Path) -> dict[str, list[tuple[int, int]]]:
    """The ``heads`` group of a ``piece_heads.h5`` as ``{piece: [(layer, head), ...]}``."""
    with h5py.File(path, "r") as f:
        return {piece: [(int(l), int(h)) for l, h in f[f"heads/{piece}"][()]]
                for piece in PIECES}

