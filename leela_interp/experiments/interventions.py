"""What every intervention of the look-ahead experiments shares: the effect metric, square
categories, the prepared batch of clean and corrupted runs (:func:`prepare`) and the row runner
(:func:`run_rows`). The interventions themselves stand beside the files they fill: activation
patching in :mod:`leela_interp.experiments.patching`, head and single-edge ablations in
:mod:`leela_interp.experiments.ablations`, the piece-movement-head ablation in
:mod:`leela_interp.experiments.piece_heads`.

Conventions (the same in every function, in the HDF5 files and in ``docs/interventions.md``):

- **Metric.** The log-odds of the clean top move ``m`` = PV[0] under a softmax over the *legal*
  moves only: ``lo = log p_m - log(1 - p_m) = x_m - logsumexp_{j legal, j != m} x_j`` for policy
  logits ``x`` (computed in float64). A position with a single legal move has ``lo = +inf`` and
  every effect NaN.
- **Sign.** ``effect = lo(clean run) - lo(intervened run)``: **positive = the intervention reduced
  the log-odds of the clean top move** (the paper's plots use this sign; its global-patching
  code stored the opposite).
- **Tokens.** Squares are network tokens (``rank*8+file`` in the side to move's frame, after the
  position's canonical transform; :func:`leela_interp.board.encoding.square_to_token`) of the
  *clean* board. Move targets are python-chess ``to_square`` (castling: the king's destination).

Efficiency: one clean and one corrupted forward pass per puzzle (caching what the experiments
need), then every intervention at layer ``l`` restarts from the cached clean stream entering
block ``l`` (``net(start_at_layer=l, resid=...)``) instead of recomputing blocks ``0..l-1``, with
many interventions (rows) stacked into one batch of up to ``batch_size`` rows. Interventions
whose patched activation equals the clean one exactly are skipped and recorded as an exact 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import chess
import numpy as np
import torch

from leela_interp.board.encoding import square_to_token, squares_to_tokens, transform_for
from leela_interp.board.policy import legal_mask, policy_index
from leela_interp.errors import ConfigError

METRIC = ("log-odds of the clean top move PV[0] under a softmax over legal moves: "
          "log p - log(1 - p)")
"""The ``metric`` attribute stored next to every effect."""
SIGN = ("effect = log-odds(clean) - log-odds(intervened); positive = the intervention "
        "reduced the log-odds of the clean top move PV[0]")
"""The ``sign`` attribute stored next to every effect."""

CATEGORIES: tuple[str, ...] = ("first_target", "third_target", "later_targets", "corrupted",
                               "other")
"""Square categories of residual patching (a partition of the 64 squares), in their storage
order:

- ``first_target``: target square of PV[0] (the move being scored);
- ``third_target``: target square of PV[2] exactly (the player's next move);
- ``later_targets``: targets of PV[3:] (both sides' moves), kept apart from the 3rd move's;
- ``corrupted``: squares whose piece differs between the clean and the corrupted board;
- ``other``: every remaining square.

A square belongs to one category, the first that applies in the order first_target,
third_target, corrupted, later_targets, other. Which puzzles are left out of the category means
is the overlap rule's (:data:`OVERLAP_RULES`).
"""
CATEGORY_PRIORITY: tuple[str, ...] = ("first_target", "third_target", "corrupted",
                                      "later_targets", "other")
FOLLOW_UP = "follow_up_targets"
"""The paper's "3rd-move target" category: the targets of PV[2:] (its code counts every later
PV move's target as a follow-up square). Not part of the partition: it is the union of
``third_target`` and ``later_targets``, equal to the squares of PV[2:]'s targets on every puzzle
the paper's overlap rule keeps."""
DEEP_TARGETS: dict[str, int] = {"fifth_target": 4, "seventh_target": 6}
"""Deeper look-ahead columns of :func:`category_max` and the PV ply each reads: the effect on
the target square of PV[4] (the side to move's 5th move) and of PV[6] (its 7th), where that
square is one of the puzzle's ``later_targets`` squares (not also the 1st or 3rd move's target
or a corrupted square); NaN when the PV is shorter or the square is shared. Not in the paper
(a fork of its code studied the 5th move)."""
COLUMNS: tuple[str, ...] = CATEGORIES + (FOLLOW_UP,) + tuple(DEEP_TARGETS)
"""Columns of :func:`category_max`: the five categories, :data:`FOLLOW_UP`, then
:data:`DEEP_TARGETS`."""
OVERLAP_RULES: tuple[str, ...] = ("paper", "third_only")
"""Which puzzles are flagged ``overlap`` (left out of the category means):

- ``paper`` (the paper's notebook, ``other_figures.ipynb`` cell 23): the corrupted squares touch
  the 1st-move target or a target of PV[2:], or the 1st-move target is among PV[2:]'s targets;
- ``third_only``: the corrupted squares touch the 1st or the 3rd move's target (PV[2] only), or
  those two targets coincide.
"""

RESIDUAL_SITES: tuple[str, ...] = ("resid_post", "resid_mid", "resid_pre")
"""Residual-stream hook sites residual patching can patch (``resid_mid``: transformers only)."""


# --------------------------------------------------------------------------- puzzles


@dataclass(frozen=True)
class Puzzle:
    """One puzzle as the interventions see it.

    Attributes:
        clean: the position the network is asked about (its move stack is the history).
        pv: the principal variation from ``clean``; ``pv[0]`` is the move whose log-odds is
            measured, ``pv[2]`` the "3rd move".
        corrupted: the counterfactual board (None when there is none; patching skips it).
        index: the puzzle's index in its set; seeds per-puzzle random choices, so results do not
            depend on how the set is chunked.
    """

    clean: chess.Board
    pv: tuple[chess.Move, ...]
    corrupted: chess.Board | None = None
    index: int = 0

    @classmethod
    def from_set(cls, puzzles, i: int) -> "Puzzle":
        """Puzzle ``i`` of a :class:`leela_interp.puzzles.puzzle_set.PuzzleSet`, its boards built by
        :meth:`~leela_interp.puzzles.puzzle_set.PuzzleSet.pair` (with the set's history)."""
        clean, corrupted = puzzles.pair(i)
        return cls(clean=clean, pv=tuple(chess.Move.from_uci(m) for m in puzzles.pv(i)),
                   corrupted=corrupted, index=i)


def corrupted_squares(clean: chess.Board, corrupted: chess.Board) -> list[chess.Square]:
    """Board squares whose piece (type and colour) differs between the two boards."""
    return [sq for sq in chess.SQUARES if clean.piece_at(sq) != corrupted.piece_at(sq)]


def square_categories(puzzle: Puzzle, input_format: int = 1, *,
                      overlap_rule: str = "paper") -> tuple[np.ndarray, bool]:
    """Each token's category index (into :data:`CATEGORIES`) and the puzzle's ``overlap`` flag.

    Args:
        puzzle: the puzzle (its corrupted board, if any, gives the ``corrupted`` squares).
        input_format: the network's input format (canonical transforms of formats >= 3).
        overlap_rule: ``paper`` or ``third_only`` (:data:`OVERLAP_RULES`).

    Returns:
        ``(categories, overlap)``: ``int8 [64]`` indexed by token, and whether the puzzle is
        left out of the category means under ``overlap_rule``.

    Raises:
        ConfigError: an unknown ``overlap_rule``.
    """
    if overlap_rule not in OVERLAP_RULES:
        raise ConfigError(f"unknown overlap rule {overlap_rule!r}; choose from "
                          f"{list(OVERLAP_RULES)}")
    board = puzzle.clean
    tf = transform_for(board, input_format)

    def tok(sq: chess.Square) -> int:
        return square_to_token(sq, board.turn, tf)

    members: dict[str, set[int]] = {c: set() for c in CATEGORIES}
    first = tok(puzzle.pv[0].to_square)
    members["first_target"].add(first)
    third = tok(puzzle.pv[2].to_square) if len(puzzle.pv) > 2 else None
    if third is not None:
        members["third_target"].add(third)
    members["later_targets"].update(tok(m.to_square) for m in puzzle.pv[3:])
    corrupt: set[int] = set()
    if puzzle.corrupted is not None:
        corrupt = {tok(sq) for sq in corrupted_squares(board, puzzle.corrupted)}
    members["corrupted"] = corrupt
    cats = np.full(64, CATEGORIES.index("other"), dtype=np.int8)
    for name in reversed(CATEGORY_PRIORITY[:-1]):  # higher priority written last
        for t in members[name]:
            cats[t] = CATEGORIES.index(name)
    if overlap_rule == "paper":
        follow_up = members["third_target"] | members["later_targets"]
        overlap = bool(corrupt & ({first} | follow_up)) or first in follow_up
    else:
        overlap = first in corrupt or (third is not None and (third in corrupt or third == first))
    return cats, overlap


def deep_target_tokens(puzzles: Sequence[Puzzle], transforms: Sequence[int]) -> np.ndarray:
    """``int64 [P, len(DEEP_TARGETS)]``: the clean-board token of each :data:`DEEP_TARGETS`
    ply's target square (-1 where the PV is shorter)."""
    out = np.full((len(puzzles), len(DEEP_TARGETS)), -1, np.int64)
    for i, (p, tf) in enumerate(zip(puzzles, transforms)):
        for j, ply in enumerate(DEEP_TARGETS.values()):
            if len(p.pv) > ply:
                out[i, j] = square_to_token(p.pv[ply].to_square, p.clean.turn, tf)
    return out


def category_max(effects: np.ndarray, categories: np.ndarray,
                 deep_targets: np.ndarray | None = None) -> np.ndarray:
    """Per puzzle and layer, the maximum effect over each square category.

    Args:
        effects: ``[puzzle, layer, square]``.
        categories: ``[puzzle, square]`` category indices (:func:`square_categories`).
        deep_targets: ``[puzzle, len(DEEP_TARGETS)]`` tokens (:func:`deep_target_tokens`);
            None = those columns NaN.

    Returns:
        ``[puzzle, layer, column]`` float32 in :data:`COLUMNS` order: the five categories,
        ``follow_up_targets`` (the max over the ``third_target`` and ``later_targets``
        squares), then the :data:`DEEP_TARGETS` squares' effects (only where the square is a
        ``later_targets`` square); NaN where a column has no square (e.g. no PV[3:]) or the
        puzzle's effects are NaN.
    """
    effects = np.asarray(effects, dtype=np.float64)
    categories = np.asarray(categories)
    later = categories == CATEGORIES.index("later_targets")
    follow_up = later | (categories == CATEGORIES.index("third_target"))
    masks = [categories == c for c in range(len(CATEGORIES))] + [follow_up]
    for j in range(len(DEEP_TARGETS)):
        mask = np.zeros_like(later)
        if deep_targets is not None:
            rows = np.flatnonzero(np.asarray(deep_targets)[:, j] >= 0)
            mask[rows, deep_targets[rows, j]] = True
        masks.append(mask & later)
    out = np.full(effects.shape[:2] + (len(COLUMNS),), np.nan)
    for c, mask in enumerate(masks):
        mask = mask[:, None, :]
        has = mask.any(axis=2)
        vals = np.where(mask, effects, -np.inf).max(axis=2)
        out[..., c] = np.where(has & np.isfinite(vals), vals, np.nan)
    return out.astype(np.float32)


def mean_and_err(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-ignoring mean, 2-sigma error of the mean (``2 * std / sqrt(n)``, ddof 1) and count."""
    values = np.asarray(values, dtype=np.float64)
    n = np.sum(np.isfinite(values), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.nansum(np.where(np.isfinite(values), values, 0.0), axis=axis)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(values), values - np.expand_dims(mean, axis), 0.0)
        var = np.sum(dev ** 2, axis=axis) / np.maximum(n - 1, 1)
        err = np.where(n > 1, 2.0 * np.sqrt(var / np.maximum(n, 1)), np.nan)
    return mean, err, n


# --------------------------------------------------------------------------- metric


def log_odds(logits: torch.Tensor, legal: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
    """Log-odds of ``move`` under the legal-masked softmax of ``logits`` (float64, ``[B]``).

    Args:
        logits: policy logits ``[B, 1858]``.
        legal: bool ``[B, 1858]``, True at legal moves.
        move: the scored move's policy index ``[B]`` (must be legal).
    """
    x = logits.double().masked_fill(~legal.to(logits.device), float("-inf"))
    move = move.to(logits.device).long()[:, None]
    top = x.gather(1, move).squeeze(1)
    others = x.scatter(1, move, float("-inf"))
    return top - torch.logsumexp(others, dim=1)


# --------------------------------------------------------------------------- prepared batch


class Prepared:
    """A chunk of puzzles with what every intervention needs: planes, legal masks, tokens,
    categories, clean log-odds, and cached clean / corrupted activations.

    Build with :func:`prepare`. Activations are cached lazily by :meth:`cache`; name them up
    front (``prepare(..., clean_hooks=, corrupted_hooks=)``) to get one forward pass per board.

    Attributes:
        puzzles: the puzzles.
        move: policy index of PV[0] per puzzle ``[P]``.
        legal: legal-move mask ``[P, 1858]``.
        first, third, source3: tokens of PV[0]'s target, PV[2]'s target and PV[2]'s source
            (-1 where the PV is shorter than 3 moves) ``[P]``.
        deep_targets: tokens of the :data:`DEEP_TARGETS` plies' targets ``[P, 2]`` (-1 where
            the PV is shorter).
        categories: ``int8 [P, 64]`` square categories; ``overlap``: bool ``[P]`` under the
            overlap rule the chunk was prepared with (:data:`OVERLAP_RULES`).
        corrupted_ok: bool ``[P]``: the puzzle has a usable corrupted board;
        skip_reason: why not ("" when usable).
        clean_log_odds, corrupted_log_odds: float64 ``[P]`` (NaN without a corrupted board).
        clean_top_is_pv0: bool ``[P]``: the network's own argmax (legal moves) is PV[0].
    """

    def __init__(self, net, puzzles: Sequence[Puzzle], batch_size: int, *,
                 overlap_rule: str = "paper") -> None:
        self.net = net
        self.puzzles = list(puzzles)
        self.batch_size = int(batch_size)
        fmt = net.config.input_format
        self.n = len(self.puzzles)
        clean = [p.clean for p in self.puzzles]
        self.transforms = [transform_for(b, fmt) for b in clean]
        self.legal = legal_mask(clean, self.transforms)
        self.move = torch.tensor([policy_index(p.clean, p.pv[0], transform=t)
                                  for p, t in zip(self.puzzles, self.transforms)])
        if not bool(self.legal[torch.arange(self.n), self.move].all()):
            bad = [p.pv[0].uci() for p, ok in zip(
                self.puzzles, self.legal[torch.arange(self.n), self.move]) if not ok]
            raise ValueError(f"PV[0] is illegal on its clean board: {bad!r}")
        squares = np.array([[p.pv[0].to_square] + ([p.pv[2].to_square, p.pv[2].from_square]
                                                   if len(p.pv) > 2 else [-1, -1])
                            for p in self.puzzles], np.int64).reshape(self.n, 3)
        self.first, self.third, self.source3 = squares_to_tokens(
            squares, [p.clean.turn for p in self.puzzles], self.transforms).T.copy()
        self.deep_targets = deep_target_tokens(self.puzzles, self.transforms)
        self.categories = np.zeros((self.n, 64), np.int8)
        self.overlap = np.zeros(self.n, bool)
        self.corrupted_ok = np.zeros(self.n, bool)
        self.skip_reason = [""] * self.n
        for i, (p, tf) in enumerate(zip(self.puzzles, self.transforms)):
            self.categories[i], self.overlap[i] = square_categories(p, fmt,
                                                                    overlap_rule=overlap_rule)
            if p.corrupted is None:
                self.skip_reason[i] = "no corrupted board"
            elif p.corrupted.turn != p.clean.turn:
                self.skip_reason[i] = "corrupted board has the other side to move"
            elif transform_for(p.corrupted, fmt) != tf:
                self.skip_reason[i] = ("corrupted board has another canonical transform "
                                       "(its tokens are not the clean board's squares)")
            else:
                self.corrupted_ok[i] = True
        self._planes = {"clean": net.encode(clean),
                        "corrupted": net.encode([p.corrupted if ok else p.clean for p, ok in
                                                 zip(self.puzzles, self.corrupted_ok)])}
        self._cache: dict[str, dict[str, torch.Tensor]] = {"clean": {}, "corrupted": {}}
        self._logits: dict[str, torch.Tensor] = {}
        self._clean_lo: np.ndarray | None = None
        self.full_forwards = 0
        """Full forward passes this object ran, in boards (for cost accounting)."""

    def cache(self, which: str, names: Iterable[str] | str = ()) -> dict[str, torch.Tensor]:
        """Activations of the ``clean`` or ``corrupted`` boards for hook ``names`` (exact names
        or globs), computed on first use with one forward pass over the chunk."""
        names = [names] if isinstance(names, str) else list(names)
        wanted = self.net.match_hooks(names) if names else []
        have = self._cache[which]
        missing = [n for n in wanted if n not in have]
        if missing or which not in self._logits:
            logits, cache = [], {}
            planes = self._planes[which]
            for s in range(0, self.n, self.batch_size):
                with torch.no_grad():
                    out, c = self.net.run_with_cache(planes[s:s + self.batch_size],
                                                     names=missing or (lambda name: False))
                logits.append(out.policy_logits.float())
                for k, v in c.items():
                    cache.setdefault(k, []).append(v)
            self.full_forwards += self.n
            have.update({k: torch.cat(v) for k, v in cache.items()})
            self._logits[which] = torch.cat(logits)
        return {n: have[n] for n in wanted}

    def planes(self, which: str) -> torch.Tensor:
        """Input planes ``[P, 112, 8, 8]`` of the ``clean`` or ``corrupted`` boards (a puzzle
        without a usable corrupted board has its clean planes there)."""
        return self._planes[which]

    def logits(self, which: str) -> torch.Tensor:
        """Policy logits ``[P, 1858]`` of the clean or corrupted boards."""
        if which not in self._logits:
            self.cache(which)
        return self._logits[which]

    @property
    def clean_log_odds(self) -> np.ndarray:
        if self._clean_lo is None:
            self._clean_lo = log_odds(self.logits("clean"), self.legal, self.move).cpu().numpy()
        return self._clean_lo

    @property
    def corrupted_log_odds(self) -> np.ndarray:
        lo = log_odds(self.logits("corrupted"), self.legal, self.move).cpu().numpy()
        return np.where(self.corrupted_ok, lo, np.nan)

    @property
    def clean_top_is_pv0(self) -> np.ndarray:
        x = self.logits("clean").masked_fill(~self.legal.to(self.logits("clean").device),
                                             float("-inf"))
        return (x.argmax(1).cpu() == self.move).numpy()

    def resid_in(self, layer: int) -> torch.Tensor:
        """Clean residual stream entering block ``layer`` (``layer == n_layers``: the body's
        output), ``[P, 64, d]``."""
        n_layers = self.net.config.n_layers
        if layer < n_layers:
            return self.cache("clean", f"blocks.{layer}.hook_resid_pre")[
                f"blocks.{layer}.hook_resid_pre"]
        return self.cache("clean", f"blocks.{n_layers - 1}.hook_resid_post")[
            f"blocks.{n_layers - 1}.hook_resid_post"]


def prepare(net, puzzles: Sequence[Puzzle], *, batch_size: int = 256,
            clean_hooks: Iterable[str] = (), corrupted_hooks: Iterable[str] = (),
            overlap_rule: str = "paper") -> Prepared:
    """A :class:`Prepared` chunk, with ``clean_hooks`` / ``corrupted_hooks`` cached up front
    (one forward pass each) and ``overlap`` flagged by ``overlap_rule``."""
    prep = Prepared(net, puzzles, batch_size, overlap_rule=overlap_rule)
    prep.cache("clean", list(clean_hooks))
    corrupted_hooks = list(corrupted_hooks)
    if corrupted_hooks and any(prep.corrupted_ok):
        prep.cache("corrupted", corrupted_hooks)
    return prep


# --------------------------------------------------------------------------- the row runner

#: ``edit(tensor, rows)`` -> the replacement tensor, for the sub-batch's row indices ``rows``.
Edit = Callable[[torch.Tensor, np.ndarray], torch.Tensor]


def run_rows(net, start_layer: int, n_rows: int, resid: Callable[[np.ndarray], torch.Tensor],
             edits: Sequence[tuple[str, Edit]] = (), batch_size: int = 256) -> torch.Tensor:
    """Run ``n_rows`` interventions from the stream entering block ``start_layer``.

    Args:
        net: the network.
        start_layer: first block to run (``n_layers`` = heads only).
        n_rows: how many rows (interventions).
        resid: ``resid(rows)`` builds the ``[len(rows), 64, d]`` stream for those row indices.
        edits: ``(hook name, edit)``; ``edit(tensor, rows)`` returns the hook's replacement.
        batch_size: rows per forward pass.

    Returns:
        Policy logits ``[n_rows, 1858]`` (float32, on the net's device).
    """
    out = []
    for s in range(0, n_rows, batch_size):
        rows = np.arange(s, min(s + batch_size, n_rows))
        hooks = [(name, (lambda t, hook, e=e, rows=rows: e(t, rows))) for name, e in edits]
        with torch.no_grad():
            res = net.run_with_hooks(start_at_layer=start_layer, resid=resid(rows),
                                     fwd_hooks=hooks)
        out.append(res.policy_logits.float())
    if not out:
        return torch.zeros(0, 1858)
    return torch.cat(out)


def row_effects(prep: Prepared, row_puzzle: np.ndarray, logits: torch.Tensor) -> np.ndarray:
    """The effects of :func:`run_rows`'s ``logits``: each row's puzzle's clean log-odds minus
    the row's (``row_puzzle[i]`` is row ``i``'s puzzle)."""
    if len(row_puzzle) == 0:
        return np.zeros(0)
    p = torch.as_tensor(row_puzzle)
    lo = log_odds(logits, prep.legal[p], prep.move[p]).cpu().numpy()
    return prep.clean_log_odds[row_puzzle] - lo


def require_heads(net) -> None:
    """Raises ConfigError unless ``net`` has attention heads (a transformer with heads)."""
    if net.config.body != "transformer" or net.config.n_heads == 0:
        raise ConfigError(f"{net.path or 'this network'} has no attention heads "
                          f"(body {net.config.body!r}); head interventions need a transformer")


def resolve_head(net, layer: int, head: int) -> tuple[int, int]:
    """Check ``(layer, head)`` against the network's sizes; returns it as plain ints.

    Raises:
        ConfigError: the net has no heads, or an index is negative or past the net's last
            layer / head.
    """
    require_heads(net)
    n_layers, n_heads = net.config.n_layers, net.config.n_heads
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ConfigError(f"(layer {layer!r}, head {head!r}) is outside this net: layers "
                          f"0..{n_layers - 1}, heads 0..{n_heads - 1}")
    return int(layer), int(head)
