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
from leela_interp.experiments import interventions as iv
from leela_interp.outputs.chunked import ChunkedOutput
from leela_interp.outputs.results import label_axes, write_strings

OUTPUT = "piece_heads.h5"
SCHEMA = "leela_interp.piece_heads/1"
PIECE_VARIANTS: tuple[str, ...] = ("main", "other_types", "random_square")
"""Piece-movement-head ablation and its two controls (see :func:`piece_head_ablation`)."""
PIECE_TYPES: dict[str, int] = {"knight": chess.KNIGHT, "bishop": chess.BISHOP,
                               "rook": chess.ROOK}
PIECE_RULES: tuple[str, ...] = ("initial", "moved")
"""Where :func:`moving_piece` reads the piece that plays PV[2]: in the puzzle position
(``initial``, the paper's) or after PV[0] and PV[1] (``moved``)."""
RANDOM_KEY_RULES: tuple[str, ...] = ("any", "exclude_third_move")
"""The ``random_square`` control's key square: any of the 64 tokens (``any``, the paper's), or
never the 3rd move's target or source (``exclude_third_move``)."""


def move_masks() -> np.ndarray:
    """``bool [3, 64, 64]``: ``[piece, query, key]`` true when ``key`` is a move of that piece
    (:data:`PIECE_TYPES` order) away from ``query`` on an empty board (python-chess squares; equally
    tokens, see the module docstring)."""
    masks = np.zeros((len(PIECE_TYPES), 64, 64), bool)
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
    sums = torch.zeros(2, len(PIECE_TYPES), n_layers, n_heads, dtype=torch.float64, device=device)
    counts = np.zeros((2, len(PIECE_TYPES)))
    chance_sum = np.zeros(len(PIECE_TYPES))
    fmt = net.config.input_format
    sizes = masks.sum(-1).cpu().numpy()  # [piece, token]
    for s in range(0, len(boards), batch_size):
        batch = boards[s:s + batch_size]
        own = np.zeros((len(batch), len(PIECE_TYPES), 64), bool)
        for b, board in enumerate(batch):
            squares = tokens_to_squares(np.arange(64), [board.turn] * 64,
                                        transform_for(board, fmt))
            for t, sq in enumerate(squares):
                piece = board.piece_at(int(sq))
                if piece is not None and piece.color == board.turn:
                    for p, kind in enumerate(PIECE_TYPES.values()):
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
    for p, piece in enumerate(PIECE_TYPES):
        heads = [(int(l), int(h)) for l, h in zip(*np.nonzero(passed[p] & (best == p)))]
        lists[piece] = sorted(heads, key=lambda lh: -lift[p][lh])
    return lists


def write(path: str | Path, scores: MovementScores, lists: Mapping[str, Sequence], *,
          min_lift: float, config: Mapping, attrs: Mapping) -> Path:
    """Write ``piece_heads.h5`` (layout: ``docs/interventions.md``) in one step through
    :class:`leela_interp.outputs.chunked.ChunkedOutput` (a temp file renamed when whole), with
    ``config`` as its hash."""

    def fill(f: h5py.File) -> None:
        f.attrs.update({**attrs, "min_lift": float(min_lift),
                        "n_positions": scores.n_positions})
        write_strings(f, "piece_names", list(PIECE_TYPES))
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
        for piece in PIECE_TYPES:
            label_axes(g.create_dataset(piece, data=np.array(lists.get(piece, []),
                                                             np.int64).reshape(-1, 2)),
                       "head", "layer_head")
    return ChunkedOutput(path, schema=SCHEMA, config=config, resume=False).finish(fill)


def read_lists(path: str | Path) -> dict[str, list[tuple[int, int]]]:
    """The ``heads`` group of a ``piece_heads.h5`` as ``{piece: [(layer, head), ...]}``."""
    with h5py.File(path, "r") as f:
        return {piece: [(int(l), int(h)) for l, h in f[f"heads/{piece}"][()]]
                for piece in PIECE_TYPES}


# --------------------------------------------------------------------------- the ablation


def moving_piece(puzzle: iv.Puzzle, rule: str = "initial") -> str:
    """Name (``knight``/``bishop``/``rook``) of the piece type that plays PV[2], else ``""``.

    Args:
        puzzle: the puzzle.
        rule: where the piece is read (:data:`PIECE_RULES`). ``initial`` (the paper's): on
            PV[2]'s source square in the puzzle position, before PV[0]. ``moved``: on that
            square after PV[0] and PV[1].

    The two rules never name different pieces: a piece of the side to move on PV[2]'s source
    square in the puzzle position is the piece that plays PV[2] (the opponent's PV[1] cannot put
    one there, and if PV[0] moved it away, PV[2] could not move from that square). They differ
    on puzzles whose PV[2] piece *arrived* on its source square with PV[0] (including a
    castling rook and a promoted piece): PV[0] moves onto an empty or an enemy square, so
    ``initial`` finds no piece of the side to move there and leaves the puzzle out; ``moved``
    keeps it.

    Raises:
        ConfigError: an unknown ``rule``.
    """
    if rule not in PIECE_RULES:
        raise ConfigError(f"unknown piece rule {rule!r}; choose from {list(PIECE_RULES)}")
    if len(puzzle.pv) < 3:
        return ""
    board = puzzle.clean.copy(stack=False)
    if rule == "moved":
        board.push(puzzle.pv[0])
        board.push(puzzle.pv[1])
    piece = board.piece_at(puzzle.pv[2].from_square)
    if piece is None or piece.color != puzzle.clean.turn:
        return ""
    for name, kind in PIECE_TYPES.items():
        if piece.piece_type == kind:
            return name
    return ""


def check_head_lists(net, head_lists: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, list]:
    """Validate ``{piece: [[layer, head], ...]}`` against the net; returns plain tuples.

    Raises:
        ConfigError: an unknown piece name or a (layer, head) outside the net.
    """
    iv.require_heads(net)
    out: dict[str, list[tuple[int, int]]] = {}
    for piece, heads in head_lists.items():
        if piece not in PIECE_TYPES:
            raise ConfigError(f"unknown piece type {piece!r}; choose from {list(PIECE_TYPES)}")
        pairs = []
        for entry in heads or []:
            if len(entry) != 2:
                raise ConfigError(f"{piece} head {entry!r} is not a [layer, head] pair")
            pairs.append(iv.resolve_head(net, int(entry[0]), int(entry[1])))
        out[piece] = pairs
    for piece in PIECE_TYPES:
        out.setdefault(piece, [])
    return out


@dataclass
class PieceHeadResult:
    """Piece-movement-head ablation for a chunk.

    Attributes:
        effects: ``[P, 3]`` in :data:`PIECE_VARIANTS` order; NaN for puzzles outside the subset
            or whose head list is empty.
        piece: the moving piece's name per puzzle (``""`` = not in the subset).
        random_key: the random key token of the ``random_square`` control (-1 if none).
    """

    effects: np.ndarray
    piece: list[str]
    random_key: np.ndarray


def random_key_token(rule: str, seed: int, index: int, third: int, source: int) -> int:
    """The ``random_square`` control's key token for puzzle ``index`` (seeded by ``seed`` and
    ``index``): any of the 64 tokens (``rule="any"``) or any but the 3rd move's target ``third``
    and source ``source`` (``"exclude_third_move"``).

    Raises:
        ConfigError: an unknown ``rule`` (:data:`RANDOM_KEY_RULES`).
    """
    if rule not in RANDOM_KEY_RULES:
        raise ConfigError(f"unknown random_key rule {rule!r}; choose from "
                          f"{list(RANDOM_KEY_RULES)}")
    choices = [t for t in range(64) if rule == "any" or t not in (third, source)]
    rng = np.random.default_rng([seed, index])
    return choices[int(rng.integers(len(choices)))]


def piece_head_ablation(prep: iv.Prepared, head_lists: Mapping[str, Sequence[Sequence[int]]], *,
                        seed: int = 0, min_pv_length: int = 5, piece_rule: str = "initial",
                        random_key: str = "any") -> PieceHeadResult:
    """Ablate attention *into* the 3rd move's target square in the heads of the moving piece.

    Subset: PV length >= ``min_pv_length`` and PV[2] is played by a knight, bishop or rook
    (:func:`moving_piece` with ``piece_rule``). For each of the piece type's heads, in every
    layer they are in, ``pattern[query, key = 3rd-move target]`` is zeroed for every query
    except the 3rd move's source square (no renormalisation). Controls (the paper's):
    ``other_types`` ablates the same entries in the other two piece types' heads;
    ``random_square`` ablates the piece's own heads with a random key square
    (:func:`random_key_token` with ``random_key``, seeded by ``seed`` and the puzzle's index).

    Raises:
        ConfigError: an unknown piece type, a head outside the net, or an unknown
            ``piece_rule`` / ``random_key``.
    """
    net = prep.net
    lists = check_head_lists(net, head_lists)
    n_layers, n_heads = net.config.n_layers, net.config.n_heads
    effects = np.full((prep.n, len(PIECE_VARIANTS)), np.nan, np.float32)
    pieces = [moving_piece(p, piece_rule) if len(p.pv) >= min_pv_length else ""
              for p in prep.puzzles]
    random_keys = np.full(prep.n, -1, np.int64)
    rows_p, rows_key, rows_mask, rows_v = [], [], [], []
    for i, piece in enumerate(pieces):
        if not piece:
            continue
        random_keys[i] = random_key_token(random_key, seed, prep.puzzles[i].index,
                                          prep.third[i], prep.source3[i])
        others = [pair for name, pairs in lists.items() if name != piece for pair in pairs]
        for v, (heads, key) in enumerate([(lists[piece], prep.third[i]), (others, prep.third[i]),
                                          (lists[piece], random_keys[i])]):
            if not heads:
                continue
            mask = np.zeros((n_layers, n_heads), bool)
            for l, h in heads:
                mask[l, h] = True
            rows_p.append(i)
            rows_key.append(key)
            rows_mask.append(mask)
            rows_v.append(v)
    if not rows_p:
        return PieceHeadResult(effects, pieces, random_keys)
    rp = np.array(rows_p)
    rk = torch.as_tensor(np.array(rows_key))
    rm = torch.as_tensor(np.stack(rows_mask))  # [R, L, H]
    src = torch.as_tensor(prep.source3[rp])
    layers = sorted({int(l) for l in torch.nonzero(rm.any(2).any(0)).flatten()})
    start_layer = layers[0]

    def make_edit(layer):
        def edit(t, rows):
            m = rm[rows, layer].to(t.device)  # [B, H]
            if not m.any():
                return t
            t = t.clone()
            ar = torch.arange(len(rows), device=t.device)
            key = rk[rows].to(t.device)
            qmask = torch.ones(len(rows), 64, dtype=torch.bool, device=t.device)
            qmask[ar, src[rows].to(t.device)] = False
            col = t[ar, :, :, key]  # [B, H, 64 query]
            t[ar, :, :, key] = col.masked_fill(m[:, :, None] & qmask[:, None, :], 0.0)
            return t
        return edit

    edits = [(f"blocks.{l}.attn.hook_pattern", make_edit(l)) for l in layers]
    start = prep.resid_in(start_layer)
    logits = iv.run_rows(net, start_layer, len(rp), lambda rows: start[rp[rows]], edits=edits,
                      batch_size=prep.batch_size)
    effects[rp, np.array(rows_v)] = iv.row_effects(prep, rp, logits)
    return PieceHeadResult(effects, pieces, random_keys)
