"""The filters of the ``puzzles`` stage, one chunk of puzzles at a time
(:class:`ChunkFilter`): the network filters, the oracle, the corruption, and the columns of the
kept puzzles (the order and the lazy network passes: :mod:`leela_interp.puzzles.pipeline`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import chess
import numpy as np

from leela_interp.board.encoding import squares_to_tokens, transform_for
from leela_interp.puzzles.config import PipelineConfig
from leela_interp.puzzles.evaluation import (CorruptionResult, choose_corruptions,
                                             evaluate_moves, top_moves)
from leela_interp.puzzles.layout import COLUMNS, empty_block
from leela_interp.puzzles.oracle import Oracle, PuzzleVerdict
from leela_interp.puzzles.ordinary import ordinary_puzzles
from leela_interp.puzzles.puzzle import Puzzle


class ChunkFilter:
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
        data = {c.name: empty_block(c, n, width) for c in COLUMNS}
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
