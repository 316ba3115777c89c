"""The ``puzzles`` stage's library: Lichess puzzles -> filtered, oracle-checked, corrupted set.

:func:`build_puzzles` streams a Lichess puzzle CSV
(:class:`~leela_interp.puzzles.lichess.PuzzleReader`) in chunks of ``chunk_size`` valid puzzles and,
per chunk:

1. **Network pass.** Both networks evaluate the position before each principal-variation (PV)
   ply, batched across puzzles and plies: P(PV move) under a legal-move-masked softmax at
   temperature 1, the network's top (argmax) legal move, and WDL / value at ply 0. Work is done
   lazily, filter by filter, and gives the same numbers as evaluating everything: the weak net
   first sees plies 0 and 1 of every puzzle, the strong net every ply of puzzles that pass the
   ``hard`` filter, the weak net the remaining plies of puzzles that pass every network filter.
2. **Filters**, in this order (each configurable, each with a pass count; defaults are the
   paper's): ``pv_length`` (PV length >= 3), ``hard`` (weak P(PV[0]) < 0.05), ``correct``
   (strong P(PV[i]) > 0.5 for every solver ply i = 0, 2, ...), ``forcing`` (weak P(PV[1]) >
   0.7), ``unique`` (Stockfish: every solver move is its best move and beats the second best by
   ``margin_cp``; :class:`~leela_interp.puzzles.oracle.Oracle`, run only on puzzles that pass the
   network filters).
3. **Corruption** (:mod:`leela_interp.puzzles.corruptions`): every candidate of every surviving
   puzzle of the chunk is scored in large batches: the strong net on every candidate, the weak net
   only on those the strong criteria leave choosable (the others could never be chosen), Stockfish
   (optional) only on those passing every network criterion. Then
   :func:`~leela_interp.puzzles.corruptions.select_corruptions` picks one per puzzle.

Each chunk's kept puzzles and funnel counts are committed as their own file
(:class:`~leela_interp.outputs.results.ChunkedOutput`), and ``puzzles.h5`` (see
``docs/puzzles.md`` for every dataset) is written from them in one pass at the end: a run killed
at any instant continues after its last committed chunk (the reader re-reads the rows before it,
so its counts are whole) and ends with the bytes an uninterrupted run writes. A complete file
for the same configuration and the same input files (by sha256) is not recomputed unless
``force``.

Policies of nets with canonical input formats (>= 3) are compared in the untransformed policy
frame (transform 0), so that a corrupted board whose canonical transform differs from the clean
board's is still compared move by move.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import chess
import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from leela_interp.board.encoding import (CHESS_NUMBERING, TOKEN_NUMBERING, encode_bitboards,
                                         planes_from_bitboards, squares_to_tokens, transform_for)
from leela_interp.board.policy import (NUM_MOVES, legal_mask, legal_moves_and_indices,
                                       policy_index, policy_move)
from leela_interp.errors import ConfigError
from leela_interp.outputs.results import STR, ChunkedOutput, config_hash, is_complete, \
    label_axes, remove_leftovers, sha256_file
from leela_interp.puzzles.corruptions import (CandidateBatch, Corruption, SelectionThresholds,
                                              candidate_mask, jensen_shannon,
                                              log_odds_from_log_prob, select_corruptions, )
from leela_interp.puzzles.lichess import FILTER_REASONS, HISTORIES, READ_ERRORS, REJECT_REASONS, \
    Puzzle, PuzzleReader
from leela_interp.puzzles.ordinary import CONTROL_FILTERS, POSITIONS, ordinary_puzzles
from leela_interp.puzzles.oracle import Oracle, OracleConfig, PuzzleVerdict, find_stockfish
from leela_interp.puzzles.puzzle_set import GROUP

log = logging.getLogger(__name__)

#: ``schema`` attribute of ``puzzles.h5``.
SCHEMA = "leela_interp.puzzles/2"
#: Backends that can run the networks.
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
#: The filter funnel, in order: ``read`` is every puzzle the reader kept; each later entry counts
#: the puzzles that pass that step and every one before it. ``corruption`` counts those that also
#: got a corrupted board (whether or not one is required); ``kept`` is the rows written.
FUNNEL: tuple[str, ...] = ("read", "pv_length", "hard", "correct", "forcing", "unique",
                           "corruption", "kept")


# ============================================================================ configuration


@dataclass(frozen=True)
class NetSpec:
    """One network: its file and, for multi-head nets, which heads (None = lc0's defaults)."""

    path: str
    policy_head: str | None = None
    value_head: str | None = None


@dataclass(frozen=True)
class FilterConfig:
    """The puzzle filters; a threshold of ``None`` turns that filter off (everything passes).

    A ply a puzzle does not have (PV too short) fails the filter that needs it.
    """

    min_pv_length: int = 3
    """``pv_length``: keep puzzles whose PV (solution, both sides' moves) has at least this many
    plies. The paper: > 2."""
    distinct_targets: bool = False
    """Part of ``pv_length``: also require the solver moves among the first ``min_pv_length``
    plies to have distinct targets (:meth:`~leela_interp.puzzles.Puzzle.distinct_solver_targets`;
    with ``min_pv_length`` 5 or 7, a fork's deeper look-ahead puzzle sets). Not in the paper."""
    hard_max_weak_prob: float | None = 0.05
    """``hard``: weak net's P(PV[0]) must be *below* this."""
    correct_min_strong_prob: float | None = 0.5
    """``correct``: strong net's P(PV[i]) must be *above* this at every solver ply (0, 2, ...)."""
    forcing_min_weak_prob: float | None = 0.7
    """``forcing``: weak net's P(PV[1]) (the opponent's reply) must be *above* this."""
    unique: bool = False
    """``unique``: every solver move is Stockfish's best and beats the second by the oracle's
    ``margin_cp`` (needs the oracle)."""

    def __post_init__(self) -> None:
        if not isinstance(self.min_pv_length, int) or self.min_pv_length < 1:
            raise ConfigError(f"filters.min_pv_length must be an integer >= 1, "
                              f"got {self.min_pv_length!r}")
        if not isinstance(self.distinct_targets, bool):
            raise ConfigError(f"filters.distinct_targets must be true or false, "
                              f"got {self.distinct_targets!r}")
        for name in ("hard_max_weak_prob", "correct_min_strong_prob", "forcing_min_weak_prob"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ConfigError(f"filters.{name} must be a probability in [0, 1] or null, "
                                  f"got {value!r}")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything :func:`build_puzzles` needs; :meth:`from_sections` builds it from the Hydra
    ``model`` and ``puzzles`` sections (keys documented in
    ``leela_interp/conf/puzzles/paper.yaml``).

    Raises:
        ConfigError: On construction, for an invalid value (the message shows it).
    """

    source: str
    """The Lichess puzzle CSV (plain or ``.zst``)."""
    strong: NetSpec
    """The strong network (the one under study)."""
    weak: NetSpec
    """The weak network."""
    backend: str = "torch"
    """``torch`` (native module) or ``onnxruntime``, for both nets."""
    device: str | None = None
    """torch device of the native modules; None = cuda when available, else cpu."""
    dtype: str = "float32"
    """float32, float16 or bfloat16 (native modules)."""
    batch_size: int = 256
    """Positions per forward pass."""
    history: str = "none"
    """What history the networks see for a puzzle (:data:`~leela_interp.puzzles.lichess.HISTORIES`):
    ``none`` (the bare position after the setup move; the paper's) or ``setup`` (the setup move
    and the PV moves so far as history; corruptions then edit every history position). Used for
    every network pass of this stage and recorded in ``puzzles.h5`` for the later stages."""
    threads: int | None = None
    """CPU threads of the network passes (torch intra-op, or onnxruntime's); None = leave
    torch's setting / onnxruntime's default. On a busy machine 1 can be much faster."""
    limit: int | None = None
    min_rating: int | None = None
    max_rating: int | None = None
    include_themes: tuple[str, ...] | None = None
    exclude_themes: tuple[str, ...] = ("mateIn1",)
    shard: int = 0
    num_shards: int = 1
    chunk_size: int = 1000
    """Valid puzzles per chunk: the unit of work and of resumption."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    oracle_enabled: bool = False
    """Run Stockfish on puzzles that pass the network filters (evaluations are stored)."""
    oracle: OracleConfig = field(default_factory=OracleConfig)
    oracle_cache: str | None = "oracle_cache.sqlite"
    """sqlite cache of Stockfish results, relative to the run folder; None = no cache."""
    corruptions_enabled: bool = True
    """Look for a corrupted board for each puzzle that passes the filters."""
    require_corruption: bool = False
    """Keep only puzzles that got a corrupted board (the paper's patching set)."""
    thresholds: SelectionThresholds = field(default_factory=SelectionThresholds)
    """Corruption selection criteria (paper defaults)."""
    branching: bool = False
    """Branching corruptions: a candidate must also keep the strong net's top-2 legal moves on
    the clean board legal (:func:`top_moves`; a fork's two-branch corruptions). Not in the
    paper."""
    positions: str = "puzzles"
    """What the set holds (:data:`~leela_interp.puzzles.ordinary.POSITIONS`): ``puzzles`` (the
    rows' puzzles, the paper's) or ``ordinary`` (the control: each row's game position with the
    strong net's own move instead of the setup move, and its greedy line;
    :func:`~leela_interp.puzzles.ordinary.ordinary_puzzles`). :meth:`from_sections` turns the
    puzzle filters off for ``ordinary``."""
    ordinary_plies: int | None = None
    """``positions=ordinary``: plies of each greedy line; None = the row's own PV length."""

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ConfigError(f"puzzles.positions must be one of {list(POSITIONS)}, "
                              f"got {self.positions!r}")
        if self.ordinary_plies is not None and (not isinstance(self.ordinary_plies, int)
                                                or self.ordinary_plies < 1):
            raise ConfigError(f"puzzles.ordinary_plies must be an integer >= 1 or null, "
                              f"got {self.ordinary_plies!r}")
        if self.history not in HISTORIES:
            raise ConfigError(f"puzzles.history must be one of {list(HISTORIES)}, "
                              f"got {self.history!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"puzzles.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or null, got {self.threads!r}")
        for name in ("batch_size", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.oracle_enabled:
            if self.filters.unique:
                raise ConfigError("filters.unique needs the oracle; set puzzles.filters.unique="
                                  "false to run with puzzles.oracle.enabled=false")
            if self.thresholds.min_oracle_drop_cp is not None:
                raise ConfigError("corruptions.min_oracle_drop_cp needs the oracle; set it to "
                                  "null to run with puzzles.oracle.enabled=false")
        if not isinstance(self.branching, bool):
            raise ConfigError(f"corruptions.branching must be true or false, "
                              f"got {self.branching!r}")
        if self.require_corruption and not self.corruptions_enabled:
            raise ConfigError("corruptions.required=true needs corruptions.enabled=true")

    @classmethod
    def from_sections(cls, model: Mapping, puzzles: Mapping) -> PipelineConfig:
        """Build from the ``model`` section (strong net, device, dtype, batch size) and the
        ``puzzles`` section, as plain mappings (``OmegaConf.to_container``); with
        ``positions: ordinary`` the filters of
        :data:`~leela_interp.puzzles.ordinary.CONTROL_FILTERS` are off."""
        try:
            weak = puzzles["weak_model"]
            filters = dict(puzzles.get("filters") or {})
            positions = puzzles.get("positions", "puzzles")
            if positions == "ordinary":
                filters.update(CONTROL_FILTERS)
            oracle = dict(puzzles.get("oracle") or {})
            corruptions = dict(puzzles.get("corruptions") or {})
            oracle_enabled = bool(oracle.pop("enabled", False))
            oracle_cache = oracle.pop("cache", "oracle_cache.sqlite")
            corruptions_enabled = bool(corruptions.pop("enabled", True))
            require = bool(corruptions.pop("required", False))
            branching = corruptions.pop("branching", False)
            include = puzzles.get("include_themes")
            return cls(
                source=str(puzzles["source"]),
                strong=NetSpec(str(model["path"]), model.get("policy_head"),
                               model.get("value_head")),
                weak=NetSpec(str(weak["path"]), weak.get("policy_head"), weak.get("value_head")),
                backend=puzzles.get("backend", "torch"),
                device=model.get("device"),
                dtype=model.get("dtype", "float32"),
                batch_size=int(model.get("batch_size", 256)),
                history=puzzles.get("history", "none"),
                threads=puzzles.get("threads"),
                limit=puzzles.get("limit"),
                min_rating=puzzles.get("min_rating"),
                max_rating=puzzles.get("max_rating"),
                include_themes=None if include is None else tuple(include),
                exclude_themes=tuple(puzzles.get("exclude_themes") or ()),
                shard=int(puzzles.get("shard", 0)),
                num_shards=int(puzzles.get("num_shards", 1)),
                chunk_size=int(puzzles.get("chunk_size", 1000)),
                filters=FilterConfig(**filters),
                oracle_enabled=oracle_enabled,
                oracle=OracleConfig(**oracle),
                oracle_cache=oracle_cache,
                corruptions_enabled=corruptions_enabled,
                require_corruption=require,
                thresholds=SelectionThresholds(**corruptions),
                branching=branching,
                positions=positions,
                ordinary_plies=puzzles.get("ordinary_plies"),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid puzzles/model config: {exc}") from None

    def reader(self) -> PuzzleReader:
        """The :class:`PuzzleReader` of :attr:`source` with this config's options."""
        return PuzzleReader(self.source, limit=self.limit, min_rating=self.min_rating,
                            max_rating=self.max_rating, include_themes=self.include_themes,
                            exclude_themes=self.exclude_themes, shard=self.shard,
                            num_shards=self.num_shards)

    def to_dict(self) -> dict:
        """Plain nested dicts (JSON-serialisable): what the output's ``config`` attribute holds."""
        return dataclasses.asdict(self)


# ============================================================================ networks


def load_net(spec: NetSpec, *, backend: str = "torch", device: str | None = None,
             dtype: str = "float32", threads: int | None = None):
    """Load a network for evaluation: a :class:`~leela_interp.network.net.LeelaNet`, or for
    ``backend="onnxruntime"`` an :class:`~leela_interp.network.onnx.OnnxRuntimeNet` (an ``.onnx``
    file directly, any other lc0 file exported in memory; ``threads`` = its intra-op threads).

    Raises:
        ConfigError: Unknown backend, or onnxruntime asked for but unavailable.
        WeightsFormatError: The file is not a readable network.
    """
    from leela_interp.network import load_network

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnxruntime":
        try:
            from leela_interp.network.onnx import OnnxRuntimeNet
        except ImportError as exc:
            raise ConfigError(f"backend onnxruntime is unavailable ({exc}); use backend=torch "
                              "or install onnxruntime") from None
        if Path(spec.path).suffix == ".onnx":
            return OnnxRuntimeNet(spec.path, threads=threads)
        return OnnxRuntimeNet(load_network(spec.path, policy_head=spec.policy_head,
                                           value_head=spec.value_head), threads=threads)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_network(spec.path, policy_head=spec.policy_head, value_head=spec.value_head,
                        device=device, dtype=dtype)


@dataclass
class _Batch:
    boards: Sequence[chess.Board]
    transforms: np.ndarray
    logits: torch.Tensor  # float32 [b, 1858], illegal moves -inf
    value: torch.Tensor  # float32 [b]
    wdl: torch.Tensor | None  # float32 [b, 3]


def _forward(net, boards: Sequence[chess.Board], batch_size: int) -> Iterator[tuple[int, _Batch]]:
    """Run ``net`` over ``boards`` in batches; yields (start index, outputs with a legal mask)."""
    input_format = net.config.input_format
    for start in range(0, len(boards), batch_size):
        part = boards[start:start + batch_size]
        masks, values, transforms = encode_bitboards(part, input_format=input_format)
        with torch.no_grad():
            out = net(planes_from_bitboards(masks, values))
        logits = out.policy_logits.detach().float().cpu()
        logits = logits.masked_fill(~legal_mask(part, transforms), -math.inf)
        wdl = None if out.wdl is None else out.wdl.detach().float().cpu()
        yield start, _Batch(part, transforms, logits, out.value.detach().float().cpu().reshape(-1),
                            wdl)


@dataclass
class MoveEval:
    """A network's view of positions, one entry per (board, move) pair."""

    prob: np.ndarray
    """float32 ``[n]``: the move's probability under the legal-masked softmax (temperature 1)."""
    top_move: list[str]
    """The network's most probable legal move (UCI)."""
    value: np.ndarray
    """float32 ``[n]``: W - L (or the tanh value), side to move's view."""
    wdl: np.ndarray
    """float32 ``[n, 3]``: win, draw, loss probabilities (side to move); NaN without WDL head."""


def evaluate_moves(net, boards: Sequence[chess.Board], moves: Sequence[chess.Move],
                   batch_size: int = 256) -> MoveEval:
    """Probability of ``moves[i]`` on ``boards[i]`` (with their move stacks as history), the
    top move, value and WDL, in batches of ``batch_size``."""
    n = len(boards)
    result = MoveEval(np.full(n, np.nan, np.float32), [""] * n, np.full(n, np.nan, np.float32),
                      np.full((n, 3), np.nan, np.float32))
    for start, batch in _forward(net, boards, batch_size):
        probs = torch.softmax(batch.logits, dim=-1)
        top = batch.logits.argmax(dim=-1)
        for j, (board, transform) in enumerate(zip(batch.boards, batch.transforms)):
            i = start + j
            index = policy_index(board, moves[i], transform=int(transform))
            result.prob[i] = float(probs[j, index])
            result.top_move[i] = policy_move(board, int(top[j]), transform=int(transform)).uci()
        result.value[start:start + len(batch.boards)] = batch.value.numpy()
        if batch.wdl is not None:
            result.wdl[start:start + len(batch.boards)] = batch.wdl.numpy()
    return result


def _untransformed(values: torch.Tensor, batch: _Batch, fill: float) -> torch.Tensor:
    """``values`` ``[b, 1858]`` re-indexed from each board's canonical frame to transform 0;
    indices of no legal move get ``fill``."""
    if not np.any(batch.transforms):
        return values
    out = values.clone()
    for j, (board, transform) in enumerate(zip(batch.boards, batch.transforms)):
        if transform:
            _, transformed = legal_moves_and_indices(board, int(transform))
            _, plain = legal_moves_and_indices(board, 0)
            out[j] = fill
            out[j, torch.from_numpy(plain)] = values[j, torch.from_numpy(transformed)]
    return out


def _log_policies(net, boards: Sequence[chess.Board], batch_size: int) -> Iterator[
        tuple[int, torch.Tensor, torch.Tensor]]:
    """Yields (start, float64 log-probabilities ``[b, 1858]`` of the legal-masked policy in the
    transform-0 frame (``-inf`` off the legal moves), value ``[b]``)."""
    for start, batch in _forward(net, boards, batch_size):
        log_p = torch.log_softmax(batch.logits.double(), dim=-1)
        yield start, _untransformed(log_p, batch, -math.inf), batch.value


# ============================================================================ corruptions


@dataclass
class CorruptionResult:
    """The corruption chosen for each of several puzzles."""

    chosen: list[Corruption | None]
    """Per puzzle, the chosen candidate, or None."""
    n_candidates: np.ndarray
    """int32 ``[n_puzzles]``: valid candidates per puzzle."""
    scores: dict[str, np.ndarray]
    """Per puzzle, the chosen candidate's ``weak_log_odds_drop``, ``strong_value_drop``,
    ``strong_prob``, ``jsd`` and ``oracle_drop_cp`` (float64, NaN when none)."""


def top_moves(net, boards: Sequence[chess.Board], k: int, batch_size: int = 256
              ) -> list[list[chess.Move]]:
    """Each board's ``k`` most probable legal moves under ``net`` (fewer where it has fewer
    legal moves), best first."""
    out: list[list[chess.Move]] = []
    for _, log_p, _ in _log_policies(net, boards, batch_size):
        for row in log_p:
            board = boards[len(out)]
            moves, index = legal_moves_and_indices(board, 0)
            order = np.argsort(-row[torch.as_tensor(index)].numpy(), kind="stable")[:k]
            out.append([moves[j] for j in order])
    return out


def choose_corruptions(boards: Sequence[chess.Board], moves: Sequence[chess.Move], *, weak,
                       strong, strong_clean_value: np.ndarray, batch_size: int = 256,
                       also_legal: Sequence[Sequence[chess.Move]] | None = None,
                       thresholds: SelectionThresholds = SelectionThresholds(),
                       oracle: Oracle | None = None, progress: bool = False) -> CorruptionResult:
    """Score every corruption candidate of every puzzle in large batches and choose one each.

    Equivalent to :func:`leela_interp.puzzles.corruptions.score_candidates` and
    :func:`~leela_interp.puzzles.corruptions.select_corruption` per puzzle, but batched across
    puzzles, without holding candidate policies in memory, and skipping work that cannot change the
    choice (the strong net runs only on candidates that pass the weak criterion with JSD <=
    ``max_jsd``; Stockfish only on those that pass every network criterion).

    Args:
        boards: Clean positions (with history), one per puzzle.
        moves: The move each corruption must keep legal and make bad: ``PV[0]``.
        also_legal: Per puzzle, moves every candidate must keep legal too (the branching
            criterion: :func:`top_moves` of the strong net); None = none.
        weak, strong: The networks (anything :func:`load_net` returns).
        strong_clean_value: float ``[n_puzzles]``: the strong net's value of each clean board.
        thresholds: Selection criteria.
        oracle: Required when ``thresholds.min_oracle_drop_cp`` is set.
    """
    n = len(boards)
    candidates = CandidateBatch.build(boards, moves, also_legal)
    owner = candidates.puzzle_index
    total = len(candidates)
    move_index = torch.tensor([policy_index(b, m) for b, m in zip(boards, moves)], dtype=torch.long)
    # Log-probabilities throughout: the weak net's log-odds are exact even where P(PV[0]) is
    # tiny on both boards (a clamp would make them equal and pass the criterion).
    clean_log_p = torch.full((n, NUM_MOVES), -math.inf, dtype=torch.float64)
    for start, log_p, _ in _log_policies(weak, boards, batch_size):
        clean_log_p[start:start + len(log_p)] = log_p
    clean = clean_log_p.exp()
    clean_log_odds = log_odds_from_log_prob(clean_log_p[torch.arange(n), move_index])

    # The strong criteria are the most selective, so the strong net sees every candidate and the
    # weak net only those the strong criteria leave choosable.
    value_drop = np.full(total, np.nan)
    strong_prob = np.full(total, np.nan)
    clean_value = torch.as_tensor(np.asarray(strong_clean_value, dtype=np.float64))
    bar = tqdm(total=total, unit="board", desc="corruptions", leave=False,
               disable=not progress or None)
    for start, log_p, value in _log_policies(strong, _LazyBoards(candidates), batch_size):
        rows = torch.from_numpy(owner[start:start + len(log_p)])
        stop = start + len(log_p)
        strong_prob[start:stop] = log_p[torch.arange(len(log_p)), move_index[rows]].exp().numpy()
        value_drop[start:stop] = (clean_value[rows] - value.double()).numpy()
        bar.update(len(log_p))
    choosable = np.flatnonzero((value_drop > thresholds.min_strong_value_drop)
                               & (strong_prob < thresholds.max_strong_prob))
    bar.total = total + len(choosable)
    weak_drop = np.full(total, np.nan)
    jsd = np.full(total, np.nan)
    for start, log_p, _ in _log_policies(weak, _LazyBoards(candidates, choosable), batch_size):
        index = choosable[start:start + len(log_p)]
        rows = torch.from_numpy(owner[index])
        lo_move = log_odds_from_log_prob(log_p[torch.arange(len(log_p)), move_index[rows]])
        weak_drop[index] = (clean_log_odds[rows] - lo_move).numpy()
        jsd[index] = jensen_shannon(clean[rows], log_p.exp()).numpy()
        bar.update(len(log_p))
    bar.close()

    oracle_drop = None
    if thresholds.min_oracle_drop_cp is not None:
        if oracle is None:
            raise ValueError("thresholds.min_oracle_drop_cp is set but no oracle was given")
        oracle_drop = np.full(total, np.nan)
        network_ok = np.flatnonzero(
            candidate_mask(weak_drop, value_drop, strong_prob,
                           thresholds=dataclasses.replace(thresholds, min_oracle_drop_cp=None))
            & (jsd <= thresholds.max_jsd))
        if len(network_ok):
            pairs = []
            for i in network_ok:
                k = owner[i]
                pairs.append((boards[k].fen(), moves[k]))
                pairs.append((candidates.board(int(i)).fen(), moves[k]))
            scores = np.asarray(oracle.score_moves(pairs), dtype=np.float64).reshape(-1, 2)
            oracle_drop[network_ok] = scores[:, 0] - scores[:, 1]

    chosen = select_corruptions(candidates.offsets, weak_drop, value_drop, strong_prob, jsd,
                                oracle_drop_cp=oracle_drop, thresholds=thresholds)
    columns = {"weak_log_odds_drop": weak_drop, "strong_value_drop": value_drop,
               "strong_prob": strong_prob, "jsd": jsd,
               "oracle_drop_cp": np.full(total, np.nan) if oracle_drop is None else oracle_drop}
    scores = {name: np.array([np.nan if c is None else values[c] for c in chosen])
              for name, values in columns.items()}
    return CorruptionResult(
        chosen=[None if c is None else candidates.corruptions[c] for c in chosen],
        n_candidates=np.diff(candidates.offsets).astype(np.int32), scores=scores)


class _LazyBoards(Sequence):
    """The corrupted boards of a :class:`CandidateBatch` (or of the candidates ``index`` of
    it), built when sliced (keeps memory flat)."""

    def __init__(self, candidates: CandidateBatch, index: np.ndarray | None = None) -> None:
        self._candidates = candidates
        self._index = np.arange(len(candidates)) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._candidates.board(int(k)) for k in self._index[index]]
        return self._candidates.board(int(self._index[index]))


# ============================================================================ output layout


@dataclass(frozen=True)
class Column:
    """One dataset of the ``/puzzles`` group (one row per kept puzzle)."""

    name: str
    dtype: object
    width: int | None
    """None: ``[puzzle]``; 0: ``[puzzle, ply]`` padded to the longest PV; k: ``[puzzle, k]``."""
    fill: object
    axes: tuple[str, ...]
    description: str
    attrs: dict = field(default_factory=dict)


_P = ("puzzle",)
_PP = ("puzzle", "ply")
_NAN = np.nan
_STM = {"pov": "side_to_move"}
_TOK = {"numbering": TOKEN_NUMBERING}
_SQ = {"numbering": CHESS_NUMBERING}
_CP = {"pov": "side_to_move", "units": "centipawns",
       "mate": "mate in n for the side to move = 100000 - n; being mated in n = -(100000 - n)"}

#: Every dataset of ``/puzzles``, in the order they are written. The first five are
#: :class:`~leela_interp.puzzles.puzzle_set.PuzzleSet`'s.
COLUMNS: tuple[Column, ...] = (
    Column("id", STR, None, "", _P, "Lichess PuzzleId"),
    Column("fen", STR, None, "", _P, "Lichess FEN: the position before the setup move"),
    Column("moves", STR, None, "", _P,
           "Lichess Moves: setup move then the PV, UCI, space-separated"),
    Column("corrupted_fen", STR, None, "", _P,
           "chosen corrupted position (the clean position with some pieces changed; FEN with "
           "en_passant='fen'); the networks' board is built from it and the history setting by "
           "corruptions.counterfactual_pair; '' if none"),
    Column("different_targets", bool, None, False, _P,
           "targets of PV[0], PV[1], PV[2] are three distinct squares"),
    Column("source_row", np.int64, None, -1, _P,
           "0-based data row of the source file (header excluded; every shard's rows counted)"),
    Column("rating", np.int32, None, -1, _P, "Lichess puzzle rating; -1 if unknown"),
    Column("themes", STR, None, "", _P, "Lichess themes, space-separated"),
    Column("pv_length", np.int32, None, 0, _P, "plies in the PV (valid columns of [puzzle, ply])"),
    Column("white_to_move", bool, None, False, _P, "side to move of the clean board (the solver)"),
    Column("transform", np.int8, None, 0, _P,
           "canonical transform of the clean board in the strong net's input format (0 = none; "
           "encoding.transform_for): with white_to_move it maps squares to tokens"),
    Column("pv_targets", np.int8, 0, -1, _PP,
           "target square of PV[ply] as a token of the clean board; -1 past pv_length", _TOK),
    Column("pv_sources", np.int8, 0, -1, _PP,
           "source square of PV[ply] as a token of the clean board; -1 past pv_length", _TOK),
    Column("strong_pv_prob", np.float32, 0, _NAN, _PP,
           "strong net: P(PV[ply]), legal-masked softmax, temperature 1; NaN past pv_length"),
    Column("weak_pv_prob", np.float32, 0, _NAN, _PP,
           "weak net: P(PV[ply]), legal-masked softmax, temperature 1; NaN past pv_length"),
    Column("strong_top_move", STR, 0, "", _PP, "strong net's most probable legal move (UCI)"),
    Column("weak_top_move", STR, 0, "", _PP, "weak net's most probable legal move (UCI)"),
    Column("strong_wdl", np.float32, 3, _NAN, ("puzzle", "wdl"),
           "strong net's win/draw/loss probabilities at ply 0; NaN for a classical value head",
           _STM),
    Column("weak_wdl", np.float32, 3, _NAN, ("puzzle", "wdl"),
           "weak net's win/draw/loss probabilities at ply 0; NaN for a classical value head",
           _STM),
    Column("strong_value", np.float32, None, _NAN, _P, "strong net's value W - L at ply 0", _STM),
    Column("weak_value", np.float32, None, _NAN, _P, "weak net's value W - L at ply 0", _STM),
    Column("oracle_eval_cp", np.float32, 0, _NAN, _PP,
           "Stockfish's score of the position before PV[ply]; NaN past pv_length or no oracle",
           _CP),
    Column("oracle_best_move", STR, 0, "", _PP, "Stockfish's best move before PV[ply] (UCI)"),
    Column("oracle_margin_cp", np.float32, 0, _NAN, _PP,
           "best minus second-best score before PV[ply]; NaN with one legal move", _CP),
    Column("oracle_unique", bool, 0, False, _PP,
           "PV[ply] is Stockfish's best move and beats the second by margin_cp"),
    Column("unique", bool, None, False, _P, "every solver move (even plies) is oracle_unique"),
    Column("has_corruption", bool, None, False, _P, "a corrupted board was chosen"),
    Column("corruption_description", STR, None, "", _P,
           "'remove d5', 'add black pawn e4' or 'move Nf3 to g5'; '' if none"),
    Column("corruption_kind", STR, None, "", _P, "remove_pawn, add_pawn or move_piece; ''"),
    Column("corruption_squares", np.int16, 2, -1, ("puzzle", "changed_square"),
           "changed squares as tokens of the clean board (the numbering of every square axis "
           "of every file): the pawn's square and -1, or a move's (from, to); -1 if none", _TOK),
    Column("corruption_squares_chess", np.int16, 2, -1, ("puzzle", "changed_square"),
           "corruption_squares in python-chess numbering (a1 = 0, h8 = 63); -1 if none", _SQ),
    Column("corruption_candidates", np.int32, None, -1, _P,
           "valid corruption candidates of the puzzle; -1 if not searched"),
    Column("corruption_weak_log_odds_drop", np.float64, None, _NAN, _P,
           "chosen corruption: weak net's log-odds of PV[0], clean minus corrupted", _STM),
    Column("corruption_strong_value_drop", np.float64, None, _NAN, _P,
           "chosen corruption: strong net's value, clean minus corrupted", _STM),
    Column("corruption_strong_prob", np.float64, None, _NAN, _P,
           "chosen corruption: strong net's P(PV[0]) on the corrupted board"),
    Column("corruption_jsd", np.float64, None, _NAN, _P,
           "chosen corruption: Jensen-Shannon divergence (nats) of the weak net's policies"),
    Column("corruption_oracle_drop_cp", np.float64, None, _NAN, _P,
           "chosen corruption: Stockfish's score of PV[0], clean minus corrupted; NaN if unused",
           _CP),
)


def _block(column: Column, n: int, width: int) -> np.ndarray:
    shape = (n,) if column.width is None else (n, width if column.width == 0 else column.width)
    dtype = object if column.dtype is STR else column.dtype
    return np.full(shape, column.fill, dtype=dtype)


def _write_columns(group: h5py.Group, chunks: Sequence[Mapping[str, np.ndarray]]) -> int:
    """Every column of the kept rows of ``chunks`` (in order), per-ply columns padded to the
    longest PV with their fill value; returns the number of rows.

    The datasets are resizable and chunked (as :mod:`leela_interp.puzzles.shards` expects) but
    written once, whole, in a fresh file.
    """
    plies = max((c[col.name].shape[1] for c in chunks for col in COLUMNS if col.width == 0),
                default=0)
    rows = 0
    for column in COLUMNS:
        parts = []
        for chunk in chunks:
            data = chunk[column.name]
            if column.width == 0:
                block = _block(column, len(data), plies)
                block[:, :data.shape[1]] = data
                data = block
            parts.append(data)
        data = np.concatenate(parts) if parts else _block(column, 0, plies)
        rows = len(data)
        if column.width is None:
            maxshape, chunk_shape = (None,), (4096,)
        elif column.width == 0:
            maxshape, chunk_shape = (None, None), (1024, 8)
        else:
            maxshape, chunk_shape = (None, column.width), (1024, column.width)
        fill = None if column.dtype is STR else column.fill
        ds = group.create_dataset(column.name, data=data, maxshape=maxshape, chunks=chunk_shape,
                                  dtype=column.dtype, fillvalue=fill)
        label_axes(ds, *column.axes, description=column.description, **column.attrs)
    return rows


# ============================================================================ the chunk


class _Pipeline:
    """The per-chunk work, with the nets and (lazily) the oracle."""

    def __init__(self, config: PipelineConfig, strong, weak, oracle_cache: Path | None) -> None:
        self.config = config
        self.strong = strong
        self.weak = weak
        self._oracle_cache = oracle_cache
        self._oracle: Oracle | None = None

    @property
    def oracle(self) -> Oracle:
        if self._oracle is None:
            self._oracle = Oracle(self.config.oracle, cache_path=self._oracle_cache)
        return self._oracle

    def close(self) -> None:
        if self._oracle is not None:
            self._oracle.close()
            self._oracle = None

    def _eval(self, net, puzzles: Sequence[Puzzle], boards: Sequence[list[chess.Board]],
              wanted: Iterable[tuple[int, int]], into: dict[str, np.ndarray], prefix: str) -> None:
        """Evaluate (puzzle, ply) pairs with ``net`` and store into ``into[prefix + ...]``."""
        wanted = [(i, ply) for i, ply in wanted if ply < len(boards[i])]
        if not wanted:
            return
        result = evaluate_moves(net, [boards[i][ply] for i, ply in wanted],
                                [puzzles[i].pv_moves[ply] for i, ply in wanted],
                                self.config.batch_size)
        for k, (i, ply) in enumerate(wanted):
            into[f"{prefix}_pv_prob"][i, ply] = result.prob[k]
            into[f"{prefix}_top_move"][i, ply] = result.top_move[k]
            if ply == 0:
                into[f"{prefix}_value"][i] = result.value[k]
                into[f"{prefix}_wdl"][i] = result.wdl[k]

    def process(self, numbered: Sequence[tuple[int, Puzzle]],
                funnel: dict[str, int]) -> dict[str, np.ndarray]:
        """Filter one chunk of (source row, puzzle) pairs; returns the columns of its kept
        puzzles and adds to ``funnel``."""
        cfg, filters = self.config, self.config.filters
        puzzles = [puzzle for _, puzzle in numbered]
        if cfg.positions == "ordinary":
            puzzles = ordinary_puzzles(puzzles, self.strong, plies=cfg.ordinary_plies,
                                       history=cfg.history, batch_size=cfg.batch_size)
        n = len(puzzles)
        width = max((len(p.pv) for p in puzzles), default=0)
        data = {c.name: _block(c, n, width) for c in COLUMNS}
        boards = [p.boards(history=cfg.history) for p in puzzles]
        pv_length = np.array([len(p.pv) for p in puzzles], dtype=np.int32)
        data["pv_length"] = pv_length

        def ply(name: str, k: int) -> np.ndarray:
            return data[name][:, k] if k < width else np.full(n, np.nan, np.float32)

        alive = pv_length >= filters.min_pv_length
        if filters.distinct_targets:
            alive &= np.array([p.distinct_solver_targets(filters.min_pv_length)
                               for p in puzzles], bool)
        funnel["read"] += n
        funnel["pv_length"] += int(alive.sum())
        self._eval(self.weak, puzzles, boards, ((i, k) for i in np.flatnonzero(alive)
                                                for k in (0, 1)), data, "weak")
        if filters.hard_max_weak_prob is not None:
            alive &= ply("weak_pv_prob", 0) < filters.hard_max_weak_prob
        funnel["hard"] += int(alive.sum())
        self._eval(self.strong, puzzles, boards, ((i, k) for i in np.flatnonzero(alive)
                                                  for k in range(pv_length[i])), data, "strong")
        if filters.correct_min_strong_prob is not None:
            for i in np.flatnonzero(alive):
                solver = data["strong_pv_prob"][i, 0:pv_length[i]:2]
                alive[i] = bool(np.all(solver > filters.correct_min_strong_prob))
        funnel["correct"] += int(alive.sum())
        if filters.forcing_min_weak_prob is not None:
            alive &= ply("weak_pv_prob", 1) > filters.forcing_min_weak_prob
        funnel["forcing"] += int(alive.sum())
        self._eval(self.weak, puzzles, boards, ((i, k) for i in np.flatnonzero(alive)
                                                for k in range(2, pv_length[i])), data, "weak")

        if cfg.oracle_enabled and alive.any():
            index = np.flatnonzero(alive)
            verdicts = self.oracle.check_puzzles([puzzles[i] for i in index])
            for i, verdict in zip(index, verdicts):
                _store_verdict(data, i, verdict)
            if filters.unique:
                alive &= data["unique"]
        funnel["unique"] += int(alive.sum())

        if cfg.corruptions_enabled and alive.any():
            index = np.flatnonzero(alive)
            clean = [boards[i][0] for i in index]
            result = choose_corruptions(
                clean, [puzzles[i].pv_moves[0] for i in index],
                also_legal=top_moves(self.strong, clean, 2, cfg.batch_size)
                if cfg.branching else None,
                weak=self.weak, strong=self.strong,
                strong_clean_value=data["strong_value"][index].astype(np.float64),
                batch_size=cfg.batch_size, thresholds=cfg.thresholds,
                oracle=self.oracle if cfg.thresholds.min_oracle_drop_cp is not None else None,
                progress=True)
            _store_corruptions(data, index, result)
            funnel["corruption"] += int(data["has_corruption"][index].sum())
            if cfg.require_corruption:
                alive &= data["has_corruption"]

        data["source_row"] = np.array([row for row, _ in numbered], dtype=np.int64)
        _store_tokens(data, boards, puzzles, self.strong.config.input_format)
        for i, puzzle in enumerate(puzzles):
            data["id"][i] = puzzle.id
            data["fen"][i] = puzzle.fen
            data["moves"][i] = " ".join(puzzle.moves)
            data["different_targets"][i] = puzzle.different_targets
            data["rating"][i] = -1 if puzzle.rating is None else puzzle.rating
            data["themes"][i] = " ".join(puzzle.themes)
        keep = np.flatnonzero(alive)
        funnel["kept"] += len(keep)
        kept_width = int(pv_length[keep].max()) if len(keep) else 0
        out = {}
        for column in COLUMNS:
            values = data[column.name][keep]
            out[column.name] = values[:, :kept_width] if column.width == 0 else values
        return out


def _store_verdict(data: dict[str, np.ndarray], i: int, verdict: PuzzleVerdict) -> None:
    plies = len(verdict.evals_cp)
    data["oracle_eval_cp"][i, :plies] = verdict.evals_cp
    data["oracle_best_move"][i, :plies] = verdict.best_moves
    data["oracle_margin_cp"][i, :plies] = [np.nan if m is None else m for m in verdict.margins_cp]
    data["oracle_unique"][i, :plies] = verdict.is_unique
    data["unique"][i] = verdict.solver_unique


def _store_tokens(data: dict[str, np.ndarray], boards: Sequence[list[chess.Board]],
                  puzzles: Sequence[Puzzle], input_format: int) -> None:
    """Side to move, canonical transform and the PV's squares as tokens of the clean board;
    the corruption's squares as tokens (after :func:`_store_corruptions`)."""
    for i, (puzzle, plies) in enumerate(zip(puzzles, boards)):
        clean = plies[0]
        transform = transform_for(clean, input_format)
        data["white_to_move"][i] = clean.turn
        data["transform"][i] = transform
        moves = puzzle.pv_moves
        data["pv_targets"][i, :len(moves)] = squares_to_tokens(
            [[m.to_square for m in moves]], [clean.turn], transform)[0]
        data["pv_sources"][i, :len(moves)] = squares_to_tokens(
            [[m.from_square for m in moves]], [clean.turn], transform)[0]
    data["corruption_squares"][:] = squares_to_tokens(
        data["corruption_squares_chess"], data["white_to_move"], data["transform"])


def _store_corruptions(data: dict[str, np.ndarray], index: np.ndarray,
                       result: CorruptionResult) -> None:
    data["corruption_candidates"][index] = result.n_candidates
    for k, (i, chosen) in enumerate(zip(index, result.chosen)):
        for name, values in result.scores.items():
            data[f"corruption_{name}"][i] = values[k]
        if chosen is None:
            continue
        data["has_corruption"][i] = True
        data["corrupted_fen"][i] = chosen.fen
        data["corruption_description"][i] = chosen.description
        data["corruption_kind"][i] = chosen.kind
        squares = list(chosen.squares) + [-1] * (2 - len(chosen.squares))
        data["corruption_squares_chess"][i] = squares


# ============================================================================ the stage


@dataclass
class BuildSummary:
    """What :func:`build_puzzles` did."""

    path: Path
    """The complete ``puzzles.h5``."""
    skipped: bool
    """True if the file was already complete for this config and inputs (nothing was done)."""
    rows: int
    """Kept puzzles (rows of the file)."""
    funnel: dict[str, int]
    """The filter funnel (see :data:`FUNNEL`)."""


def nothing_to_analyse(path: str | Path) -> str | None:
    """Why the stages that analyse puzzles have nothing to do: ``path`` (``puzzles.h5``) is
    complete and kept no puzzle; names the funnel step that removed the last ones. None when
    there are puzzles (or no complete file)."""
    path = Path(path)
    if not is_complete(path):
        return None
    with h5py.File(path, "r") as f:
        if f["puzzles/id"].shape[0]:
            return None
        counts = dict(f["counts/filters"].attrs) if "counts/filters" in f else {}
        rows = int(f["counts"].attrs.get("rows", 0)) if "counts" in f else 0
    last = None
    for step in FUNNEL:
        if int(counts.get(step, 0)) == 0:
            last = step
            break
    where = f"no puzzle passed the {last!r} step of the funnel" if last and last != "read" \
        else "no row of the source was a valid puzzle"
    return f"{path} kept 0 puzzles ({where}; {rows} rows read); loosen puzzles.filters or " \
           f"give another puzzles.source"


def input_hashes(config: PipelineConfig) -> dict[str, str]:
    """sha256 of the source file and both networks (part of the output's identity).

    Raises:
        FileNotFoundError: A file does not exist.
    """
    return {"source_sha256": sha256_file(config.source),
            "strong_sha256": sha256_file(config.strong.path),
            "weak_sha256": sha256_file(config.weak.path)}


def _numbered(reader: PuzzleReader) -> Iterator[tuple[int, Puzzle]]:
    """(source row, puzzle) pairs. The reader counts a row in ``counts.rows`` before it yields
    the row's puzzle, so while a puzzle is being yielded ``counts.rows - 1`` is its row."""
    for puzzle in reader:
        yield reader.counts.rows - 1, puzzle


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def build_puzzles(config: PipelineConfig, out_path: str | Path, *, force: bool = False,
                  after_chunk: Callable[[int], None] | None = None) -> BuildSummary:
    """Build ``out_path`` (``puzzles.h5``), resuming the committed chunks of the same config.

    Args:
        config: The stage's settings.
        out_path: The output file; its folder is the run folder (the oracle cache goes there).
        force: Recompute even if the file is complete for this config and inputs, and discard
            committed chunks instead of resuming them.
        after_chunk: Called with each chunk's index once it is committed (tests use it to
            interrupt a run).

    Raises:
        FileNotFoundError: The source or a network file does not exist.
        StockfishNotFoundError: The oracle is on but Stockfish cannot be run.
        ConfigError, WeightsFormatError: Bad settings or network files.
    """
    out_path = Path(out_path)
    # The schema is hashed too: a file of an older layout is not "up to date".
    hashed = {**config.to_dict(), "inputs": input_hashes(config), "schema": SCHEMA}
    if not force and is_complete(out_path, config_hash(hashed)):
        log.info("%s is up to date for this config; skipping (force=true redoes it)", out_path)
        remove_leftovers(out_path)
        with h5py.File(out_path, "r") as f:
            funnel = {k: int(v) for k, v in f["counts/filters"].attrs.items()}
            return BuildSummary(out_path, True, int(f[GROUP]["id"].shape[0]), funnel)
    if config.oracle_enabled:
        find_stockfish(config.oracle.path)
    log.info("puzzles: loading strong %s and weak %s (%s)", config.strong.path, config.weak.path,
             config.backend)
    options = dict(backend=config.backend, device=config.device, dtype=config.dtype,
                   threads=config.threads)
    strong = load_net(config.strong, **options)
    weak = load_net(config.weak, **options)
    cache = None if config.oracle_cache is None else out_path.parent / config.oracle_cache
    pipeline = _Pipeline(config, strong, weak, cache)
    reader = config.reader()
    torch_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    funnel = dict.fromkeys(FUNNEL, 0)
    try:
        out = ChunkedOutput(out_path, schema=SCHEMA, config=hashed, resume=not force)
        bar = tqdm(total=config.limit, unit="row", desc="puzzles", mininterval=1.0)
        for index, chunk in enumerate(_chunks(_numbered(reader), config.chunk_size)):
            bar.update(reader.counts.rows - bar.n)
            if index in out.keys:
                continue
            chunk_funnel = dict.fromkeys(FUNNEL, 0)
            out.commit(index, pipeline.process(chunk, chunk_funnel), {"funnel": chunk_funnel})
            log.info("chunk %d: %d puzzles; funnel of the chunk %s", index, len(chunk),
                     chunk_funnel)
            if after_chunk is not None:
                after_chunk(index)
        bar.update(reader.counts.rows - bar.n)
        bar.close()
        engine = pipeline.oracle.engine_name if config.oracle_enabled else None
        committed = list(out.chunks())
        for chunk in committed:
            for key, value in chunk.meta["funnel"].items():
                funnel[key] += int(value)
        rows = sum(len(chunk.arrays["id"]) for chunk in committed)
        out.finish(lambda f: _finish(f, [c.arrays for c in committed], config,
                                     hashed["inputs"], reader, funnel, engine,
                                     strong.config.input_format))
    finally:
        torch.set_num_threads(torch_threads)
        pipeline.close()
    log.info("%s: %d puzzles kept; funnel %s; rejected rows %s", out_path, rows, funnel,
             reader.counts.rejected)
    return BuildSummary(out_path, False, rows, funnel)


def _finish(f: h5py.File, chunks: Sequence[Mapping[str, np.ndarray]], config: PipelineConfig,
            inputs: dict[str, str], reader: PuzzleReader, funnel: dict[str, int],
            engine: str | None, input_format: int) -> None:
    """Write the whole final file from the committed chunks: the columns, the counts, the
    attributes (only from the chunks, the config and the reader's counts, so a resumed run
    writes the same bytes)."""
    group = f.create_group(GROUP)
    _write_columns(group, chunks)
    group.attrs["history"] = config.history
    counts = reader.counts
    top = f.create_group("counts", track_order=True)
    top.attrs.update({"rows": counts.rows, "valid": counts.kept,
                      "other_shard": counts.other_shard})
    for name, keys, table in (("rejected", REJECT_REASONS, counts.rejected),
                              ("filtered", FILTER_REASONS, counts.filtered),
                              ("read_errors", READ_ERRORS, counts.read_errors),
                              ("filters", FUNNEL, funnel)):
        sub = top.create_group(name, track_order=True)
        for key in keys:
            sub.attrs[key] = int(table.get(key, 0))
    top.attrs["examples"] = json.dumps(counts.examples, sort_keys=True)
    f.attrs.update({"source": str(config.source), **inputs, "positions": config.positions,
                    "oracle_engine": engine or "", "history": config.history,
                    "token_input_format": int(input_format)})
