"""Counterfactual ("corrupted") puzzle boards, as in Jenner et al. (2024), and how one is chosen.

A corruption is a small edit of the puzzle position that keeps the first solver move ``PV[0]``
legal but makes it bad. Candidates (:func:`corruption_candidates`), in this order:

1. for each square a1..h8: remove the pawn on it (``"remove d5"``), or, if it is empty, add a
   white then a black pawn (``"add white pawn e4"``, ``"add black pawn e4"``);
2. for each non-pawn piece (kings included, as in the paper's code), a1..h8: move it to each
   empty square (``"move Nf3 to g5"``; the letter is upper case for both colours).

Only candidates with ``board.is_valid()`` that keep ``PV[0]`` legal are returned. Side to move,
castling rights, en-passant square and move counters are left as they were, so an edit that
makes them inconsistent (moving a castling rook or king, removing the pawn that just moved two
squares) gives an invalid board and is dropped, as in the paper. The corrupted board has no
move history.

:func:`select_corruption` then applies the paper's criteria to per-candidate network numbers
(plain arrays, so any network can supply them; :func:`score_candidates` computes them from
policies and values):

- the weak net's log-odds of the move drop by less than 0.2 (the edit is not obviously bad),
- the strong net's value drops by more than 0.1 (the position got worse for the mover),
- the strong net gives the move less than 0.1 on the corrupted board (the move got bad),
- optionally, Stockfish rates the move at least some centipawns worse,

and among the survivors picks the one with the smallest Jensen-Shannon divergence between the
weak net's clean and corrupted policies, if that is at most 0.2.

>>> board = chess.Board("6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1")
>>> candidates = corruption_candidates(board, "d1d8")
>>> [c.description for c in candidates[:3]]
['add white pawn a2', 'add black pawn a2', 'add white pawn b2']
>>> [(c.description, c.squares) for c in candidates if c.kind == "move_piece"][0]
('move Kg1 to a1', (6, 0))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import chess
import numpy as np
import torch

from leela_interp.errors import ConfigError

#: Kinds of corruption (:attr:`Corruption.kind`).
KINDS: tuple[str, ...] = ("remove_pawn", "add_pawn", "move_piece")


@dataclass(frozen=True)
class Corruption:
    """One candidate corrupted board."""

    fen: str
    """The corrupted position (same side to move, castling, en passant and counters)."""
    description: str
    """What changed: ``"remove d5"``, ``"add black pawn e4"`` or ``"move Nf3 to g5"``."""
    squares: tuple[chess.Square, ...]
    """The changed squares (a1 = 0): the removed or added pawn's, or (from, to) of a move."""
    kind: str
    """One of :data:`KINDS`."""

    def board(self) -> chess.Board:
        """The corrupted position as a board without history."""
        return chess.Board(self.fen)


def corruption_candidates(board: chess.Board, move: chess.Move | str) -> list[Corruption]:
    """Every valid corruption of ``board`` in which ``move`` stays legal, in the order of the
    module docstring.

    Args:
        board: The clean position (its move stack is ignored).
        move: The move that must stay legal, usually ``PV[0]``; UCI or a move.

    Raises:
        ValueError: ``move`` is not legal on ``board``.
    """
    base = chess.Board(board.fen())
    move = chess.Move.from_uci(move) if isinstance(move, str) else move
    if move not in base.legal_moves:
        raise ValueError(f"move {move.uci()!r} is not legal in {base.fen()!r}")
    found: list[Corruption] = []

    def keep(
        new: chess.Board, description: str, squares: tuple[chess.Square, ...], kind: str
    ) -> None:
        if new.is_valid() and move in new.legal_moves:
            found.append(Corruption(new.fen(), description, squares, kind))

    back_ranks = chess.BB_RANK_1 | chess.BB_RANK_8
    for square in chess.SQUARES:
        name = chess.square_name(square)
        piece = base.piece_at(square)
        if piece is not None and piece.piece_type == chess.PAWN:
            new = base.copy(stack=False)
            new.remove_piece_at(square)
            keep(new, f"remove {name}", (square,), "remove_pawn")
        elif piece is None and not chess.BB_SQUARES[square] & back_ranks:
            for color in chess.COLORS:
                new = base.copy(stack=False)
                new.set_piece_at(square, chess.Piece(chess.PAWN, color))
                keep(new, f"add {chess.COLOR_NAMES[color]} pawn {name}", (square,), "add_pawn")

    empty = [square for square in chess.SQUARES if base.piece_at(square) is None]
    for source in chess.SQUARES:
        piece = base.piece_at(source)
        if piece is None or piece.piece_type == chess.PAWN:
            continue
        letter = piece.symbol().upper()
        for target in empty:
            new = base.copy(stack=False)
            new.remove_piece_at(source)
            new.set_piece_at(target, piece)
            description = f"move {letter}{chess.square_name(source)} to {chess.square_name(target)}"
            keep(new, description, (source, target), "move_piece")
    return found


@dataclass(frozen=True)
class CandidateBatch:
    """The candidates of many puzzles in one flat list, for batched network passes.

    Puzzle ``i``'s candidates are ``corruptions[offsets[i]:offsets[i + 1]]``.
    """

    corruptions: list[Corruption]
    """All candidates, puzzle by puzzle."""
    offsets: np.ndarray
    """``int64 [n_puzzles + 1]``: where each puzzle's candidates start; the last is the total."""

    @classmethod
    def build(
        cls, boards: Sequence[chess.Board], moves: Sequence[chess.Move | str]
    ) -> CandidateBatch:
        """The candidates of each (board, move) pair (see :func:`corruption_candidates`)."""
        if len(boards) != len(moves):
            raise ValueError(f"{len(boards)} boards but {len(moves)} moves")
        corruptions: list[Corruption] = []
        offsets = [0]
        for board, move in zip(boards, moves):
            corruptions.extend(corruption_candidates(board, move))
            offsets.append(len(corruptions))
        return cls(corruptions, np.asarray(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.corruptions)

    @property
    def puzzle_index(self) -> np.ndarray:
        """``int64 [n_candidates]``: the puzzle each candidate belongs to."""
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))

    def boards(self) -> list[chess.Board]:
        """Every candidate's corrupted board, in order."""
        return [corruption.board() for corruption in self.corruptions]


@dataclass(frozen=True)
class SelectionThresholds:
    """The criteria of :func:`select_corruption`; defaults are the paper's.

    Raises:
        ConfigError: On construction, for a negative or NaN threshold.
    """

    max_weak_log_odds_drop: float = 0.2
    """Keep a candidate only if the weak net's log-odds of the move drop by *less* than this."""
    min_strong_value_drop: float = 0.1
    """... and the strong net's value (W - L, mover's view) drops by *more* than this."""
    max_strong_prob: float = 0.1
    """... and the strong net's probability of the move on the corrupted board is *below* this."""
    max_jsd: float = 0.2
    """Choose nothing if the smallest weak-net Jensen-Shannon divergence (nats) exceeds this."""
    min_oracle_drop_cp: float | None = None
    """If set, also require Stockfish's score of the move to drop by *at least* this (cp)."""

    def __post_init__(self) -> None:
        for name in (
            "max_weak_log_odds_drop",
            "min_strong_value_drop",
            "max_strong_prob",
            "max_jsd",
        ):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"corruption threshold {name} must be >= 0, got {value!r}")
        if self.min_oracle_drop_cp is not None and not self.min_oracle_drop_cp >= 0:
            raise ConfigError(
                "corruption threshold min_oracle_drop_cp must be >= 0 or None, "
                f"got {self.min_oracle_drop_cp!r}"
            )


#: The paper's selection criteria (the defaults of :class:`SelectionThresholds`).
PAPER_THRESHOLDS = SelectionThresholds()


@dataclass(frozen=True)
class CandidateScores:
    """Per-candidate numbers for :func:`select_corruption`, each ``float [n_candidates]``."""

    weak_log_odds_drop: np.ndarray
    """Weak net: log-odds of the move on the clean board minus on the corrupted board."""
    strong_value_drop: np.ndarray
    """Strong net: value on the clean board minus on the corrupted board (mover's view)."""
    strong_prob: np.ndarray
    """Strong net: probability of the move on the corrupted board."""
    jsd: np.ndarray
    """Jensen-Shannon divergence (nats) between the weak net's clean and corrupted policies."""


def log_odds(p: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """``log(p / (1 - p))`` elementwise, in float64, with ``p`` clamped to ``[eps, 1 - eps]``.

    The clamp keeps log-odds finite when a float32 probability rounds to exactly 0 or 1 (the
    paper's code has no clamp and then gets infinities or NaN).
    """
    p = torch.as_tensor(p, dtype=torch.float64).clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """The Jensen-Shannon divergence between probability distributions along ``dim``, in nats.

    ``JSD(p, q) = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``, and ``0 log 0 = 0``,
    so zeros (illegal moves) are fine. Between 0 and ``log 2``; symmetric. ``p`` and ``q``
    broadcast against each other. Not the Jensen-Shannon *distance* (its square root) that
    ``scipy.spatial.distance.jensenshannon`` returns.

    >>> p = torch.tensor([1.0, 0.0])
    >>> round(float(jensen_shannon(p, torch.tensor([0.0, 1.0]))), 6)  # log 2
    0.693147
    """
    p, q = torch.broadcast_tensors(torch.as_tensor(p), torch.as_tensor(q))
    m = (p + q) / 2
    terms_p = torch.where(p > 0, p * (torch.log(p) - torch.log(m)), torch.zeros_like(p))
    terms_q = torch.where(q > 0, q * (torch.log(q) - torch.log(m)), torch.zeros_like(q))
    return (terms_p.sum(dim) + terms_q.sum(dim)) / 2


def score_candidates(
    *,
    move_index: int,
    weak_clean_policy: torch.Tensor,
    weak_corrupted_policy: torch.Tensor,
    strong_clean_value: float | torch.Tensor,
    strong_corrupted_value: torch.Tensor,
    strong_corrupted_policy: torch.Tensor,
) -> CandidateScores:
    """The numbers :func:`select_corruption` needs, from one puzzle's network outputs.

    Policies are probabilities over the same move indexing (e.g. lc0's 1858 moves, after a
    legal-move mask and softmax); values are the mover's expected score (W - L or similar).

    Args:
        move_index: The index of the move (``PV[0]``) in the policies.
        weak_clean_policy: ``[n_moves]``, the weak net on the clean board.
        weak_corrupted_policy: ``[n_candidates, n_moves]``, the weak net on each candidate.
        strong_clean_value: Scalar, the strong net's value of the clean board.
        strong_corrupted_value: ``[n_candidates]``, the strong net's value of each candidate.
        strong_corrupted_policy: ``[n_candidates, n_moves]``, the strong net on each candidate.
    """
    weak_clean = torch.as_tensor(weak_clean_policy).detach().cpu()
    weak_corrupted = torch.as_tensor(weak_corrupted_policy).detach().cpu()
    drop = log_odds(weak_clean[move_index]) - log_odds(weak_corrupted[:, move_index])
    value_drop = (
        torch.as_tensor(strong_clean_value).detach().cpu().double()
        - torch.as_tensor(strong_corrupted_value).detach().cpu().double()
    )
    strong_prob = torch.as_tensor(strong_corrupted_policy).detach().cpu()[:, move_index]
    jsd = jensen_shannon(weak_clean.double().unsqueeze(0), weak_corrupted.double())
    return CandidateScores(
        drop.numpy(), value_drop.numpy(), strong_prob.double().numpy(), jsd.numpy()
    )


def _as_array(values: object, name: str, size: int | None) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape!r}")
    if size is not None and len(array) != size:
        raise ValueError(f"{name} has {len(array)} entries, expected {size}")
    return array


def candidate_mask(
    weak_log_odds_drop: object,
    strong_value_drop: object,
    strong_prob: object,
    *,
    oracle_drop_cp: object | None = None,
    thresholds: SelectionThresholds = PAPER_THRESHOLDS,
) -> np.ndarray:
    """``bool [n_candidates]``: which candidates meet every criterion but the JSD one.

    Arguments are 1-D arrays or tensors (see :class:`CandidateScores`); ``oracle_drop_cp`` is
    Stockfish's score of the move on the clean board minus on the corrupted board, required when
    ``thresholds.min_oracle_drop_cp`` is set: take both from
    :meth:`leela_interp.oracle.Oracle.score_moves`, so that both are the same kind of search.
    NaN fails every criterion.

    Raises:
        ValueError: Arrays of different lengths or not 1-D, or ``oracle_drop_cp`` missing.
    """
    weak = _as_array(weak_log_odds_drop, "weak_log_odds_drop", None)
    mask = (
        (weak < thresholds.max_weak_log_odds_drop)
        & (
            _as_array(strong_value_drop, "strong_value_drop", len(weak))
            > thresholds.min_strong_value_drop
        )
        & (_as_array(strong_prob, "strong_prob", len(weak)) < thresholds.max_strong_prob)
    )
    if thresholds.min_oracle_drop_cp is not None:
        if oracle_drop_cp is None:
            raise ValueError(
                f"min_oracle_drop_cp is {thresholds.min_oracle_drop_cp!r} "
                "but no oracle_drop_cp was given"
            )
        mask &= (
            _as_array(oracle_drop_cp, "oracle_drop_cp", len(weak)) >= thresholds.min_oracle_drop_cp
        )
    return mask


def select_corruption(
    weak_log_odds_drop: object,
    strong_value_drop: object,
    strong_prob: object,
    jsd: object,
    *,
    oracle_drop_cp: object | None = None,
    thresholds: SelectionThresholds = PAPER_THRESHOLDS,
) -> int | None:
    """The index of the chosen candidate of one puzzle, or ``None`` if none qualifies.

    Among the candidates of :func:`candidate_mask`, the one with the smallest ``jsd`` (the
    first on ties), if that is at most ``thresholds.max_jsd``. Zero candidates give ``None``.

    >>> select_corruption([0.1, 0.0, 0.5], [0.3, 0.3, 0.3], [0.05, 0.05, 0.0], [0.15, 0.1, 0.01])
    1
    """
    mask = candidate_mask(
        weak_log_odds_drop,
        strong_value_drop,
        strong_prob,
        oracle_drop_cp=oracle_drop_cp,
        thresholds=thresholds,
    )
    divergence = _as_array(jsd, "jsd", len(mask))
    scores = np.where(mask & ~np.isnan(divergence), divergence, np.inf)
    if len(scores) == 0:
        return None
    best = int(np.argmin(scores))
    return best if scores[best] <= thresholds.max_jsd else None


def select_corruptions(
    offsets: object,
    weak_log_odds_drop: object,
    strong_value_drop: object,
    strong_prob: object,
    jsd: object,
    *,
    oracle_drop_cp: object | None = None,
    thresholds: SelectionThresholds = PAPER_THRESHOLDS,
) -> list[int | None]:
    """:func:`select_corruption` for each puzzle of a :class:`CandidateBatch`.

    Args:
        offsets: ``[n_puzzles + 1]``, as :attr:`CandidateBatch.offsets`.
        weak_log_odds_drop, strong_value_drop, strong_prob, jsd, oracle_drop_cp: Flat
            ``[n_candidates]`` arrays over all puzzles' candidates.
        thresholds: The criteria.

    Returns:
        Per puzzle, the chosen candidate's index into the *flat* list, or ``None``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets must start at 0 and never decrease, got {offsets!r}")
    arrays = [
        _as_array(values, name, int(offsets[-1]))
        for values, name in (
            (weak_log_odds_drop, "weak_log_odds_drop"),
            (strong_value_drop, "strong_value_drop"),
            (strong_prob, "strong_prob"),
            (jsd, "jsd"),
        )
    ]
    oracle = (
        None
        if oracle_drop_cp is None
        else _as_array(oracle_drop_cp, "oracle_drop_cp", int(offsets[-1]))
    )
    chosen: list[int | None] = []
    for start, stop in zip(offsets[:-1], offsets[1:]):
        part = [array[start:stop] for array in arrays]
        index = select_corruption(
            *part,
            oracle_drop_cp=None if oracle is None else oracle[start:stop],
            thresholds=thresholds,
        )
        chosen.append(None if index is None else int(start) + index)
    return chosen
