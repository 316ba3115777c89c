"""Interventions for the look-ahead experiments: the effect metric, square categories, activation
patching from a corrupted board, head ablations, single-edge and piece-movement-head ablations.

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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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
COLUMNS: tuple[str, ...] = CATEGORIES + (FOLLOW_UP,)
"""Columns of :func:`category_max`: the five categories, then :data:`FOLLOW_UP`."""
OVERLAP_RULES: tuple[str, ...] = ("paper", "third_only")
"""Which puzzles are flagged ``overlap`` (left out of the category means):

- ``paper`` (the paper's notebook, ``other_figures.ipynb`` cell 23): the corrupted squares touch
  the 1st-move target or a target of PV[2:], or the 1st-move target is among PV[2:]'s targets;
- ``third_only``: the corrupted squares touch the 1st or the 3rd move's target (PV[2] only), or
  those two targets coincide.
"""

RESIDUAL_SITES: tuple[str, ...] = ("resid_post", "resid_mid", "resid_pre")
"""Residual-stream hook sites residual patching can patch (``resid_mid``: transformers only)."""
ABLATION_METHODS: tuple[str, ...] = ("zero", "mean", "resample")
"""Head-ablation methods: the head's output ``hook_z`` set to 0, to its mean over the puzzle set
(per square), or to its value on another puzzle's clean board."""
EDGE_VARIANTS: tuple[str, ...] = ("edge", "edge_renorm", "others", "others_renorm")
"""Single-edge ablation variants: zero the one pattern entry (query = 1st-move target, key =
3rd-move target); the control zeroes every *other* entry of the head; ``_renorm`` rescales each
changed query row to sum 1 (rows left with no mass stay zero)."""
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


def category_max(effects: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Per puzzle and layer, the maximum effect over each square category.

    Args:
        effects: ``[puzzle, layer, square]``.
        categories: ``[puzzle, square]`` category indices (:func:`square_categories`).

    Returns:
        ``[puzzle, layer, column]`` float32 in :data:`COLUMNS` order: the five categories, then
        ``follow_up_targets`` (the max over the ``third_target`` and ``later_targets``
        squares); NaN where a column has no square (e.g. no PV[3:]) or the puzzle's effects are
        NaN.
    """
    effects = np.asarray(effects, dtype=np.float64)
    categories = np.asarray(categories)
    follow_up = np.isin(categories, [CATEGORIES.index("third_target"),
                                     CATEGORIES.index("later_targets")])
    masks = [categories == c for c in range(len(CATEGORIES))] + [follow_up]
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


def _effects(prep: Prepared, row_puzzle: np.ndarray, logits: torch.Tensor) -> np.ndarray:
    if len(row_puzzle) == 0:
        return np.zeros(0)
    p = torch.as_tensor(row_puzzle)
    lo = log_odds(logits, prep.legal[p], prep.move[p]).cpu().numpy()
    return prep.clean_log_odds[row_puzzle] - lo


def _require_heads(net) -> None:
    if net.config.body != "transformer" or net.config.n_heads == 0:
        raise ConfigError(f"{net.path or 'this network'} has no attention heads "
                          f"(body {net.config.body!r}); head interventions need a transformer")


# --------------------------------------------------------------------------- patching


def residual_patching(prep: Prepared, *, site: str = "resid_post", skip_identical: bool = True,
                      layers: Sequence[int] | None = None) -> np.ndarray:
    """Patch each (layer, square) of the residual stream with its value on the corrupted board.

    Args:
        prep: the chunk (its puzzles without a usable corrupted board get NaN).
        site: ``resid_post`` (after block l; the paper's choice), ``resid_mid`` (after the
            attention sub-layer; transformers only) or ``resid_pre`` (entering block l).
        skip_identical: record an exact 0 for squares whose corrupted activation equals the clean
            one instead of running them.
        layers: layers to patch (default all); others are NaN.

    Returns:
        Effects ``[P, n_layers, 64]`` (float32; positive = log-odds of PV[0] reduced).
    """
    net = prep.net
    n_layers = net.config.n_layers
    if site not in RESIDUAL_SITES:
        raise ConfigError(f"unknown residual site {site!r}; choose from {list(RESIDUAL_SITES)}")
    if site == "resid_mid" and net.config.body != "transformer":
        raise ConfigError("resid_mid exists only in transformer blocks; this net is a "
                          f"{net.config.body!r}; choose resid_post or resid_pre")
    out = np.full((prep.n, n_layers, 64), np.nan, np.float32)
    ok = np.nonzero(prep.corrupted_ok)[0]
    if len(ok) == 0:
        return out
    name = f"blocks.*.hook_{site}"
    clean = prep.cache("clean", [name, "blocks.*.hook_resid_pre"])
    corr = prep.cache("corrupted", name)
    for layer in (range(n_layers) if layers is None else layers):
        hook = f"blocks.{layer}.hook_{site}"
        base, donor = clean[hook], corr[hook]
        same = (base[ok] == donor[ok]).all(dim=2).cpu().numpy()  # [ok, 64]
        pairs = [(p, s) for j, p in enumerate(ok) for s in range(64)
                 if not (skip_identical and same[j, s])]
        out[ok, layer, :] = 0.0
        if not pairs:
            continue
        rp = np.array([p for p, _ in pairs])
        rs = np.array([s for _, s in pairs])

        def patch(t: torch.Tensor, rows: np.ndarray, rp=rp, rs=rs, donor=donor) -> torch.Tensor:
            t = t.clone()
            t[np.arange(len(rows)), rs[rows]] = donor[rp[rows], rs[rows]].to(t.dtype)
            return t

        if site in ("resid_post", "resid_pre"):  # post[l] is the stream entering block l+1
            start = layer + 1 if site == "resid_post" else layer
            logits = run_rows(net, start, len(rp),
                              lambda rows, b=base: patch(b[rp[rows]], rows),
                              batch_size=prep.batch_size)
        else:
            start = prep.resid_in(layer)
            logits = run_rows(net, layer, len(rp), lambda rows, b=start: b[rp[rows]],
                              edits=[(hook, patch)], batch_size=prep.batch_size)
        out[rp, layer, rs] = _effects(prep, rp, logits)
    return out


def head_patching(prep: Prepared, *, skip_identical: bool = True) -> np.ndarray:
    """Patch each (layer, head)'s output ``hook_z`` (all squares) with its corrupted-run value.

    Returns:
        Effects ``[P, n_layers, n_heads]`` (float32; NaN for puzzles without a usable
        corrupted board).

    Raises:
        ConfigError: the network has no attention heads.
    """
    net = prep.net
    _require_heads(net)
    n_layers, n_heads = net.config.n_layers, net.config.n_heads
    out = np.full((prep.n, n_layers, n_heads), np.nan, np.float32)
    ok = np.nonzero(prep.corrupted_ok)[0]
    if len(ok) == 0:
        return out
    clean = prep.cache("clean", ["blocks.*.attn.hook_z", "blocks.*.hook_resid_pre"])
    corr = prep.cache("corrupted", "blocks.*.attn.hook_z")
    for layer in range(n_layers):
        hook = f"blocks.{layer}.attn.hook_z"
        same = (clean[hook][ok] == corr[hook][ok]).flatten(2).all(2).cpu().numpy()
        pairs = [(p, h) for j, p in enumerate(ok) for h in range(n_heads)
                 if not (skip_identical and same[j, h])]
        out[ok, layer, :] = 0.0
        if not pairs:
            continue
        rp = np.array([p for p, _ in pairs])
        rh = np.array([h for _, h in pairs])
        donor = corr[hook]

        def patch(t, rows, rp=rp, rh=rh, donor=donor):
            t = t.clone()
            t[np.arange(len(rows)), rh[rows]] = donor[rp[rows], rh[rows]].to(t.dtype)
            return t

        start = prep.resid_in(layer)
        logits = run_rows(net, layer, len(rp), lambda rows: start[rp[rows]],
                          edits=[(hook, patch)], batch_size=prep.batch_size)
        out[rp, layer, rh] = _effects(prep, rp, logits)
    return out


# --------------------------------------------------------------------------- head ablations


def head_outputs(net, boards: Sequence[chess.Board], *, batch_size: int = 256) -> torch.Tensor:
    """Every head's output ``hook_z`` on ``boards``: ``[B, n_layers, n_heads, 64, d_head]``."""
    _require_heads(net)
    planes = net.encode(list(boards))
    parts = []
    for s in range(0, len(planes), batch_size):
        with torch.no_grad():
            _, c = net.run_with_cache(planes[s:s + batch_size], names="blocks.*.attn.hook_z")
        parts.append(torch.stack([c[f"blocks.{l}.attn.hook_z"]
                                  for l in range(net.config.n_layers)], dim=1))
    return torch.cat(parts)


class MeanHeadOutputs:
    """Running mean of every head's output over a puzzle set, per square
    (``[n_layers, n_heads, 64, d_head]``, float64): ``add`` chunks, read ``mean``."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, z: torch.Tensor) -> None:
        """Add ``[B, n_layers, n_heads, 64, d_head]`` head outputs."""
        s = z.double().sum(0).cpu()
        self.total = s if self.total is None else self.total + s
        self.count += z.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        if self.total is None or self.count == 0:
            raise ValueError("no head outputs added")
        return self.total / self.count


def resample_donors(n: int, seed: int) -> np.ndarray:
    """For each of ``n`` puzzles a donor puzzle ``!= itself`` (seeded; -1 everywhere if n < 2)."""
    if n < 2:
        return np.full(n, -1, np.int64)
    rng = np.random.default_rng(seed)
    return (np.arange(n) + 1 + rng.integers(0, n - 1, size=n)) % n


def head_ablation(prep: Prepared, method: str, *, mean_z: torch.Tensor | None = None,
                  donor_z: torch.Tensor | None = None) -> np.ndarray:
    """Ablate each (layer, head)'s output ``hook_z`` on the clean board, one head at a time.

    Args:
        prep: the chunk.
        method: ``zero``, ``mean`` (``mean_z`` ``[L, H, 64, d_head]``, e.g.
            :class:`MeanHeadOutputs`) or ``resample`` (``donor_z`` ``[P, L, H, 64, d_head]``:
            the head outputs of each puzzle's donor board, :func:`head_outputs`).

    Returns:
        Effects ``[P, n_layers, n_heads]`` (float32).
    """
    net = prep.net
    _require_heads(net)
    if method not in ABLATION_METHODS:
        raise ConfigError(f"unknown ablation method {method!r}; choose from "
                          f"{list(ABLATION_METHODS)}")
    if method == "mean" and mean_z is None:
        raise ValueError("mean ablation needs mean_z")
    if method == "resample" and donor_z is None:
        raise ValueError("resample ablation needs donor_z")
    n_layers, n_heads = net.config.n_layers, net.config.n_heads
    out = np.full((prep.n, n_layers, n_heads), np.nan, np.float32)
    rp = np.repeat(np.arange(prep.n), n_heads)
    rh = np.tile(np.arange(n_heads), prep.n)
    for layer in range(n_layers):
        hook = f"blocks.{layer}.attn.hook_z"

        def ablate(t, rows, layer=layer):
            t = t.clone()
            ar = np.arange(len(rows))
            if method == "zero":
                t[ar, rh[rows]] = 0.0
            elif method == "mean":
                t[ar, rh[rows]] = mean_z[layer, rh[rows]].to(t.device, t.dtype)
            else:
                t[ar, rh[rows]] = donor_z[rp[rows], layer, rh[rows]].to(t.device, t.dtype)
            return t

        start = prep.resid_in(layer)
        logits = run_rows(net, layer, len(rp), lambda rows: start[rp[rows]],
                          edits=[(hook, ablate)], batch_size=prep.batch_size)
        out[rp, layer, rh] = _effects(prep, rp, logits)
    return out


# --------------------------------------------------------------------------- single edge


def resolve_head(net, layer: int, head: int) -> tuple[int, int]:
    """Check ``(layer, head)`` against the network's sizes; returns it as plain ints.

    Raises:
        ConfigError: the net has no heads, or an index is negative or past the net's last
            layer / head.
    """
    _require_heads(net)
    n_layers, n_heads = net.config.n_layers, net.config.n_heads
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ConfigError(f"(layer {layer!r}, head {head!r}) is outside this net: layers "
                          f"0..{n_layers - 1}, heads 0..{n_heads - 1}")
    return int(layer), int(head)


@dataclass
class EdgeResult:
    """Single-edge ablation of one (layer, head) for a chunk of puzzles.

    Attributes:
        effects: ``[P, 4]`` in :data:`EDGE_VARIANTS` order (NaN where PV has < 3 moves).
        weight: the clean pattern entry (query = 1st-move target, key = 3rd-move target) ``[P]``.
        rank_in_row: its rank within its query row (0 = the row's largest entry) ``[P]``.
        is_head_max: whether it is the largest of the head's 4096 entries ``[P]``.
        sweep: ``[P, 64 query, 64 key]`` single-entry effects, when requested.
    """

    effects: np.ndarray
    weight: np.ndarray
    rank_in_row: np.ndarray
    is_head_max: np.ndarray
    sweep: np.ndarray | None = field(default=None)


def _renorm_rows(head: torch.Tensor, ar: torch.Tensor, q: torch.Tensor) -> None:
    rows = head[ar, q]
    s = rows.sum(-1, keepdim=True)
    head[ar, q] = torch.where(s > 0, rows / s.clamp_min(torch.finfo(rows.dtype).tiny), rows)


def edge_ablation(prep: Prepared, layer: int, head: int, *, full_sweep: bool = False,
                  sweep_renormalize: bool = False) -> EdgeResult:
    """Zero one attention weight of (``layer``, ``head``) on the clean board, and the control.

    Variants (:data:`EDGE_VARIANTS`): ``edge`` zeroes ``pattern[query = 1st-move target, key =
    3rd-move target]``; ``others`` zeroes every other entry of the head (the control); the
    ``_renorm`` variants then rescale each query row that still has mass to sum 1. With
    ``full_sweep`` every one of the 4096 entries is zeroed in turn (``sweep_renormalize``
    rescales its row).
    """
    net = prep.net
    layer, head = resolve_head(net, layer, head)
    hook = f"blocks.{layer}.attn.hook_pattern"
    pattern = prep.cache("clean", hook)[hook][:, head]  # [P, 64, 64]
    valid = np.nonzero(prep.third >= 0)[0]
    effects = np.full((prep.n, len(EDGE_VARIANTS)), np.nan, np.float32)
    weight = np.full(prep.n, np.nan, np.float32)
    rank = np.full(prep.n, -1, np.int64)
    is_max = np.zeros(prep.n, bool)
    sweep = np.full((prep.n, 64, 64), np.nan, np.float32) if full_sweep else None
    if len(valid) == 0:
        return EdgeResult(effects, weight, rank, is_max, sweep)
    q_all = torch.as_tensor(prep.first)
    k_all = torch.as_tensor(prep.third)
    pv = torch.as_tensor(valid)
    w = pattern[pv, q_all[pv], k_all[pv]]
    weight[valid] = w.float().cpu().numpy()
    row = pattern[pv, q_all[pv]]
    rank[valid] = (row > w[:, None]).sum(1).cpu().numpy()
    is_max[valid] = (pattern[pv].flatten(1).max(1).values <= w).cpu().numpy()
    start = prep.resid_in(layer)

    nv = len(EDGE_VARIANTS)
    rp = np.repeat(valid, nv)
    rv = np.tile(np.arange(nv), len(valid))

    def ablate(t, rows):
        t = t.clone()
        hd = t[:, head]  # a view
        p = torch.as_tensor(rp[rows])
        v = torch.as_tensor(rv[rows], device=t.device)
        ar = torch.arange(len(rows), device=t.device)
        q, k = q_all[p].to(t.device), k_all[p].to(t.device)
        kept = hd[ar, q, k].clone()
        edge = (v == 0) | (v == 1)
        others = ~edge
        renorm = (v == 1) | (v == 3)
        hd[ar[edge], q[edge], k[edge]] = 0.0
        if others.any():
            hd[ar[others]] = 0.0
            hd[ar[others], q[others], k[others]] = kept[others]
        if renorm.any():
            _renorm_rows(hd, ar[renorm], q[renorm])
        return t

    logits = run_rows(net, layer, len(rp), lambda rows: start[rp[rows]],
                      edits=[(hook, ablate)], batch_size=prep.batch_size)
    effects[rp, rv] = _effects(prep, rp, logits)
    if full_sweep:
        sp = np.repeat(valid, 4096)
        sq = np.tile(np.arange(4096) // 64, len(valid))
        sk = np.tile(np.arange(4096) % 64, len(valid))

        def single(t, rows):
            t = t.clone()
            hd = t[:, head]
            ar = torch.arange(len(rows), device=t.device)
            q = torch.as_tensor(sq[rows], device=t.device)
            hd[ar, q, torch.as_tensor(sk[rows], device=t.device)] = 0.0
            if sweep_renormalize:
                _renorm_rows(hd, ar, q)
            return t

        logits = run_rows(net, layer, len(sp), lambda rows: start[sp[rows]],
                          edits=[(hook, single)], batch_size=prep.batch_size)
        sweep[sp, sq, sk] = _effects(prep, sp, logits)
    return EdgeResult(effects, weight, rank, is_max, sweep)


# --------------------------------------------------------------------------- piece heads


def moving_piece(puzzle: Puzzle, rule: str = "initial") -> str:
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
    _require_heads(net)
    out: dict[str, list[tuple[int, int]]] = {}
    for piece, heads in head_lists.items():
        if piece not in PIECE_TYPES:
            raise ConfigError(f"unknown piece type {piece!r}; choose from {list(PIECE_TYPES)}")
        pairs = []
        for entry in heads or []:
            if len(entry) != 2:
                raise ConfigError(f"{piece} head {entry!r} is not a [layer, head] pair")
            pairs.append(resolve_head(net, int(entry[0]), int(entry[1])))
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


def piece_head_ablation(prep: Prepared, head_lists: Mapping[str, Sequence[Sequence[int]]], *,
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
    logits = run_rows(net, start_layer, len(rp), lambda rows: start[rp[rows]], edits=edits,
                      batch_size=prep.batch_size)
    effects[rp, np.array(rows_v)] = _effects(prep, rp, logits)
    return PieceHeadResult(effects, pieces, random_keys)
