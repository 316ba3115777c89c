"""The network passes of the ``puzzles`` stage: each net's P(move), top move, value and WDL on
many boards (:func:`evaluate_moves`), its top moves (:func:`top_moves`), and the batched scoring
and choice of every puzzle's corrupted board (:func:`choose_corruptions`).

Policies of nets with canonical input formats (>= 3) are compared in the untransformed policy
frame (transform 0), so that a corrupted board whose canonical transform differs from the clean
board's is still compared move by move.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import chess
import numpy as np
import torch
from tqdm.auto import tqdm

from leela_interp.board.encoding import encode_bitboards, planes_from_bitboards
from leela_interp.board.policy import (NUM_MOVES, legal_mask, legal_moves_and_indices,
                                       policy_index, policy_move)
from leela_interp.errors import ConfigError
from leela_interp.puzzles.config import BACKENDS, NetSpec
from leela_interp.puzzles.corruptions import (CandidateBatch, Corruption, SelectionThresholds,
                                              candidate_mask, jensen_shannon,
                                              log_odds_from_log_prob, select_corruptions)
from leela_interp.puzzles.oracle import Oracle


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
    """The corrupted boards of a :class:`~leela_interp.puzzles.corruptions.CandidateBatch` (or
    of the candidates ``index`` of it), built when sliced (keeps memory flat)."""

    def __init__(self, candidates: CandidateBatch, index: np.ndarray | None = None) -> None:
        self._candidates = candidates
        self._index = np.arange(len(candidates)) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._candidates.board(int(k)) for k in self._index[index]]
        return self._candidates.board(int(self._index[index]))
