"""Counterfactual ("corrupted") puzzle boards, as in Jenner et al. (2024), and how one is chosen.

A corruption is a small edit of the puzzle position that keeps the first solver move ``PV[0]``
legal but makes it bad. Candidates (:func:`corruption_candidates`), in this order:

1. for each square a1..h8: remove the pawn on it (``"remove d5"``), or, if it is empty, add a
   white then a black pawn (``"add white pawn e4"``, ``"add black pawn e4"``);
2. for each non-pawn piece (kings included, as in the paper's code), a1..h8: move it to each
   empty square (``"move Nf3 to g5"``; the letter is upper case for both colours).

Only candidates with ``board.is_valid()`` that keep ``PV[0]`` legal (and any ``also_legal``
moves: the branching criterion keeps the strong net's top-2 clean moves legal) are returned.
Side to move, castling rights, en-passant square and move counters are left as they were (the
board's full state: a corrupted board is the clean board with some pieces changed, nothing
else), so an edit that makes them inconsistent (moving a castling rook or king, removing the
pawn that just moved two squares) gives an invalid board and is dropped, as in the paper.

A corruption is a *piece edit* (:attr:`Corruption.pieces`: the new contents of the changed
squares). :func:`apply_corruption` applies it to a clean board *with its history*: a board
without a move stack is edited in place of a copy; a board with one (``puzzles.history=setup``)
gets the edit in its root position and its moves replayed, so every history position carries
the corruption. :func:`counterfactual_pair` is the one function that builds a puzzle's (clean,
corrupted) pair from what ``puzzles.h5`` stores; the two boards' input planes differ only in the
piece planes of the changed squares.

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
>>> [(c.description, c.squares, c.pieces) for c in candidates if c.kind == "move_piece"][0]
('move Kg1 to a1', (6, 0), ((6, ''), (0, 'K')))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import chess
import numpy as np
import torch

from leela_interp.errors import ConfigError
from leela_interp.puzzles.puzzle import Puzzle

#: Kinds of corruption (:attr:`Corruption.kind`).
KINDS: tuple[str, ...] = ("remove_pawn", "add_pawn", "move_piece")


@dataclass(frozen=True)
class Corruption:
    """One candidate corrupted board."""

    fen: str
    """The corrupted position, with the clean board's side to move, castling rights, en-passant
    square and counters, written with ``en_passant="fen"`` so that ``chess.Board(fen)`` restores
    the en-passant square even when no capture is legal."""
    description: str
    """What changed: ``"remove d5"``, ``"add black pawn e4"`` or ``"move Nf3 to g5"``."""
    squares: tuple[chess.Square, ...]
    """The changed squares (python-chess numbering, a1 = 0): the removed or added pawn's, or
    (from, to) of a move."""
    kind: str
    """One of :data:`KINDS`."""
    pieces: tuple[tuple[chess.Square, str], ...] = ()
    """The edit: ``(square, symbol)`` for each changed square, ``symbol`` the new piece
    (``"P"``, ``"n"``, ...) or ``""`` for an emptied square."""

    def apply(self, board: chess.Board) -> chess.Board:
        """This corruption applied to the clean ``board`` and its history
        (:func:`apply_corruption`).

        Raises:
            ValueError: the edit cannot be applied to that board's history.
        """
        corrupted = apply_corruption(board, self.pieces)
        if corrupted is None:
            raise ValueError(f"corruption {self.description!r} cannot be applied to the history "
                             f"of {board.fen()!r}")
        return corrupted


def piece_edit(clean: chess.Board, corrupted: chess.Board) -> tuple[tuple[chess.Square, str], ...]:
    """The edit that turns ``clean``'s pieces into ``corrupted``'s (:attr:`Corruption.pieces`)."""
    edit = []
    for square in chess.SQUARES:
        before, after = clean.piece_at(square), corrupted.piece_at(square)
        if before != after:
            edit.append((square, after.symbol() if after else ""))
    return tuple(edit)


def _set_pieces(board: chess.Board, pieces: Sequence[tuple[chess.Square, str]]) -> None:
    for square, symbol in pieces:
        if symbol:
            board.set_piece_at(square, chess.Piece.from_symbol(symbol))
        else:
            board.remove_piece_at(square)


def apply_corruption(board: chess.Board,
                     pieces: Sequence[tuple[chess.Square, str]]) -> chess.Board | None:
    """The corrupted board of ``board`` for the edit ``pieces``, with the same history.

    - ``board`` without a move stack: a copy with the pieces changed and everything else (side
      to move, castling rights, en-passant square, counters) kept.
    - ``board`` with a move stack: the edit is applied to its root position and the moves are
      replayed, so that every history position carries the corruption. ``None`` when that is
      impossible: a move becomes illegal, the replay does not end on the edited position, the
      edited root is invalid, or the edit changes whether an en-passant capture is legal now
      (lc0's encoder derives that flag from the history, so the planes would differ by more
      than the pieces).

    >>> board = chess.Board("6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1")
    >>> apply_corruption(board, [(chess.F7, "")]).fen()
    '6k1/6pp/8/8/8/8/5PPP/3R2K1 w - - 0 1'
    """
    if not board.move_stack:
        new = board.copy(stack=False)
        _set_pieces(new, pieces)
        return new
    root = board.root()
    _set_pieces(root, pieces)
    if not root.is_valid():
        return None
    for move in board.move_stack:
        if not root.is_legal(move):
            return None
        root.push(move)
    target = board.copy(stack=False)
    _set_pieces(target, pieces)
    if root.board_fen() != target.board_fen():
        return None
    if root.has_legal_en_passant() != board.has_legal_en_passant():
        return None
    return root


def counterfactual_pair(fen: str, moves: Sequence[str], corrupted_fen: str, *,
                        history: str) -> tuple[chess.Board, chess.Board | None]:
    """The (clean, corrupted) boards of a puzzle, as every stage feeds them to a network.

    The one place that builds a puzzle's pair. ``clean`` is the position after the setup move
    ``moves[0]`` with the ``history`` of :data:`leela_interp.puzzles.puzzle.HISTORIES`;
    ``corrupted`` is ``clean`` with the pieces changed to those of ``corrupted_fen`` (which only
    says *which* pieces: every other part of the state, and the history, comes from ``clean``), or
    ``None`` when ``corrupted_fen`` is empty.

    Args:
        fen: the Lichess FEN (before the setup move).
        moves: the Lichess moves (setup move, then the PV), UCI.
        corrupted_fen: the corrupted position (``puzzles.h5``'s ``corrupted_fen``), or ``""``.
        history: ``"none"`` or ``"setup"``.

    Raises:
        ValueError: the corruption cannot be applied to the clean board's history.
    """
    clean = Puzzle(id="", fen=fen, moves=list(moves)).board(history=history)
    if not corrupted_fen:
        return clean, None
    edit = piece_edit(clean, chess.Board(corrupted_fen))
    corrupted = apply_corruption(clean, edit)
    if corrupted is None:
        raise ValueError(f"the corrupted board {corrupted_fen!r} cannot be built with history "
                         f"{history!r} from {fen!r} + {moves[0]!r}")
    return clean, corrupted


def corruption_candidates(board: chess.Board, move: chess.Move | str, *,
                          also_legal: Sequence[chess.Move | str] = ()) -> list[Corruption]:
    """Every valid corruption of ``board`` in which ``move`` stays legal, in the order of the
    module docstring.

    Args:
        board: The clean position as the networks see it: its full state is kept, and a
            candidate must be applicable to its move stack (:func:`apply_corruption`).
        move: The move that must stay legal, usually ``PV[0]``; UCI or a move.
        also_legal: Moves that must stay legal too (the branching criterion,
            ``puzzles.corruptions.branching``: the strong net's top-2 moves).

    Raises:
        ValueError: ``move`` or one of ``also_legal`` is not legal on ``board``.
    """
    base = board.copy(stack=False)
    move = chess.Move.from_uci(move) if isinstance(move, str) else move
    required = [move] + [chess.Move.from_uci(m) if isinstance(m, str) else m for m in also_legal]
    for m in required:
        if m not in base.legal_moves:
            raise ValueError(f"move {m.uci()!r} is not legal in {base.fen()!r}")
    found: list[Corruption] = []
    has_history = bool(board.move_stack)

    def keep(
        new: chess.Board, description: str, squares: tuple[chess.Square, ...], kind: str
    ) -> None:
        if not (new.is_valid() and all(new.is_legal(m) for m in required)):
            return
        pieces = tuple((sq, new.piece_at(sq).symbol() if new.piece_at(sq) else "")
                       for sq in squares)
        if has_history and apply_corruption(board, pieces) is None:
            return
        found.append(Corruption(new.fen(en_passant="fen"), description, squares, kind, pieces))

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

    Puzzle ``i``'s candidates are ``corruptions[offsets[i]:offsets[i + 1]]``; its clean board
    (with history) is ``clean[i]``.
    """

    corruptions: list[Corruption]
    """All candidates, puzzle by puzzle."""
    offsets: np.ndarray
    """``int64 [n_puzzles + 1]``: where each puzzle's candidates start; the last is the total."""
    clean: list[chess.Board]
    """The clean boards the candidates edit, one per puzzle."""

    @classmethod
    def build(
        cls, boards: Sequence[chess.Board], moves: Sequence[chess.Move | str],
        also_legal: Sequence[Sequence[chess.Move | str]] | None = None,
    ) -> CandidateBatch:
        """The candidates of each (board, move) pair (see :func:`corruption_candidates`), with
        each puzzle's ``also_legal`` moves (None = none)."""
        if len(boards) != len(moves):
            raise ValueError(f"{len(boards)} boards but {len(moves)} moves")
        also_legal = [()] * len(boards) if also_legal is None else also_legal
        corruptions: list[Corruption] = []
        offsets = [0]
        for board, move, extra in zip(boards, moves, also_legal):
            corruptions.extend(corruption_candidates(board, move, also_legal=extra))
            offsets.append(len(corruptions))
        return cls(corruptions, np.asarray(offsets, dtype=np.int64), list(boards))

    def __len__(self) -> int:
        return len(self.corruptions)

    @property
    def puzzle_index(self) -> np.ndarray:
        """``int64 [n_candidates]``: the puzzle each candidate belongs to."""
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))

    def board(self, k: int) -> chess.Board:
        """Candidate ``k``'s corrupted board, with its puzzle's history."""
        return self.corruptions[k].apply(self.clean[int(self.puzzle_index[k])])

    def boards(self) -> list[chess.Board]:
        """Every candidate's corrupted board (with its puzzle's history), in order."""
        owner = self.puzzle_index
        return [c.apply(self.clean[int(i)]) for c, i in zip(self.corruptions, owner)]


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


def log_odds(p: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` elementwise, in float64, without a clamp: ``p = 0`` gives ``-inf``
    and ``p = 1`` gives ``+inf``.

    Probabilities lose the tails (a float32 ``p`` below ~1e-45 is 0); where the log-probability
    is at hand use :func:`log_odds_from_log_prob`, which is exact there too. (The paper's code
    computes the same quantity from probabilities; an earlier version of this project clamped
    ``p`` to ``[1e-6, 1 - 1e-6]``, which made the log-odds of two tiny probabilities equal.)

    >>> log_odds(torch.tensor([0.5, 0.0])).tolist()
    [0.0, -inf]
    """
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p) - torch.log1p(-p)


def log_odds_from_log_prob(log_p: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` from ``log p`` (float64), stable at both ends:
    ``log p - log(-expm1(log p))``. ``log p = 0`` (a single legal move) gives ``+inf``.

    >>> round(float(log_odds_from_log_prob(torch.tensor(-800.0))), 3)  # p = e^-800
    -800.0
    """
    log_p = torch.as_tensor(log_p, dtype=torch.float64)
    return log_p - torch.log(-torch.expm1(log_p))


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
    :meth:`leela_interp.puzzles.oracle.Oracle.score_moves`, so that both are the same kind of
    search. NaN fails every criterion.

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
