"""What the look-ahead probes predict, and on which puzzles: target specs
(:func:`parse_targets`), their labels from each puzzle's principal variation
(:func:`target_labels`), and the puzzle splits and train/test cuts (:func:`split_rows`,
:func:`train_test`). Conventions (tokens, ply numbering): :mod:`leela_interp.experiments.probes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import chess
import numpy as np

from leela_interp.board.encoding import square_to_token, transform_for
from leela_interp.errors import ConfigError

#: Puzzle subsets a probe can be trained and tested on.
SPLITS = ("all", "different_targets", "same_targets")
SQUARE_KINDS = ("from", "to")


@dataclass(frozen=True)
class TargetSpec:
    """What one probe predicts, and which square's residual it is conditioned on.

    Build from config with :func:`parse_targets`.
    """

    name: str
    """Name in ``probes.h5`` (e.g. ``"target"``)."""
    ply: int
    """PV ply whose square is predicted (0-based; 2 = the side to move's next move)."""
    square: str
    """``"to"`` (the move's target square) or ``"from"`` (its source square)."""
    condition_ply: int
    """PV ply whose square's residual the probe is conditioned on."""
    condition_square: str
    """``"to"`` or ``"from"``: which square of ``condition_ply``."""
    chain: str | None = None
    """Name of an earlier target: train on the true condition square, but *evaluate* at the
    square that target's probe predicted (the paper's chained source probe). None = the true
    PV square at train and test time."""
    joint: str | None = None
    """Chained targets only: also report ``joint``, the accuracy of getting both this target and
    its chain target right (the paper's headline "move" accuracy)."""


def parse_targets(items: Iterable[Mapping]) -> list[TargetSpec]:
    """Target specs from config entries.

    Each entry: ``name``, ``ply``, ``square`` (``to``/``from``), ``condition`` (either
    ``{ply, square}``: a PV square; or ``{target: NAME}``: chained on an earlier target), and
    optionally ``joint`` (chained targets only).

    Raises:
        ConfigError: a missing or bad field, a duplicate name, a chain to a later/unknown target.
    """
    specs: list[TargetSpec] = []
    names: set[str] = set()
    for item in items:
        item = dict(item)
        try:
            name, ply, square, cond = item["name"], int(item["ply"]), item["square"], \
                dict(item["condition"])
        except KeyError as e:
            raise ConfigError(f"probe target {item!r} lacks {e.args[0]!r}") from None
        if name in names or name in [s.joint for s in specs]:
            raise ConfigError(f"duplicate probe target name {name!r}")
        if ply < 0 or square not in SQUARE_KINDS:
            raise ConfigError(f"target {name!r}: ply must be >= 0 and square one of "
                              f"{SQUARE_KINDS}, got ply={ply!r}, square={square!r}")
        chain, joint = cond.get("target"), item.get("joint")
        if chain is not None:
            earlier = {s.name: s for s in specs}
            if chain not in earlier:
                raise ConfigError(f"target {name!r} chains on {chain!r}, which is not an "
                                  f"earlier target; choose one of {sorted(earlier)}")
            c_ply, c_square = earlier[chain].ply, earlier[chain].square
        else:
            if joint is not None:
                raise ConfigError(f"target {name!r}: joint needs a chained condition")
            try:
                c_ply, c_square = int(cond["ply"]), cond["square"]
            except KeyError as e:
                raise ConfigError(f"target {name!r}: condition {cond!r} needs 'target', or "
                                  f"'ply' and 'square' (missing {e.args[0]!r})") from None
            if c_ply < 0 or c_square not in SQUARE_KINDS:
                raise ConfigError(f"target {name!r}: bad condition {cond!r}")
        specs.append(TargetSpec(name, ply, square, c_ply, c_square, chain, joint))
        names.add(name)
    if not specs:
        raise ConfigError("no probe targets configured")
    return specs


def output_names(specs: Sequence[TargetSpec]) -> list[str]:
    """The ``target`` axis of ``probes.h5``: every target, each joint metric after its target."""
    out: list[str] = []
    for s in specs:
        out.append(s.name)
        if s.joint:
            out.append(s.joint)
    return out


@dataclass
class TargetLabels:
    """Per-puzzle labels of one target (arrays of length N, the puzzles' order)."""

    label: np.ndarray
    """Token to predict, -1 where undefined (PV too short)."""
    condition: np.ndarray
    """True conditioning token, -1 where undefined."""
    piece: np.ndarray
    """``chess.PieceType`` of the piece making the probed move (0 where undefined)."""

    @property
    def valid(self) -> np.ndarray:
        """Puzzles on which this target is defined."""
        return (self.label >= 0) & (self.condition >= 0)


def pv_squares(boards: Sequence[chess.Board], pvs: Sequence[Sequence[str]], input_format: int,
               plies: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of the first ``plies`` PV moves' squares, and the piece type making each move.

    Args:
        boards: puzzle positions (the clean boards; their turn and canonical transform fix the
            frame of every token, including the opponent's moves).
        pvs: each puzzle's PV in UCI.
        input_format: the network's input format (for :func:`transform_for`).
        plies: how many PV moves to map.

    Returns:
        ``tokens [N, plies, 2]`` (``[..., 0]`` from, ``[..., 1]`` to; -1 past the PV's end) and
        ``pieces [N, plies]`` (``chess.PieceType``, 0 past the end).
    """
    n = len(boards)
    tokens = np.full((n, plies, 2), -1, np.int64)
    pieces = np.zeros((n, plies), np.int8)
    for i, (root, pv) in enumerate(zip(boards, pvs)):
        board = root.copy(stack=False)
        turn, transform = root.turn, transform_for(root, input_format)
        for k, uci in enumerate(pv[:plies]):
            move = chess.Move.from_uci(uci)
            tokens[i, k, 0] = square_to_token(move.from_square, turn, transform)
            tokens[i, k, 1] = square_to_token(move.to_square, turn, transform)
            pieces[i, k] = board.piece_type_at(move.from_square) or 0
            board.push(move)
    return tokens, pieces


def target_labels(boards: Sequence[chess.Board], pvs: Sequence[Sequence[str]],
                  specs: Sequence[TargetSpec], input_format: int) -> dict[str, TargetLabels]:
    """Labels of every target for every puzzle (see :class:`TargetLabels`).

    A chained target's true condition is its chain target's label, and it is valid only where
    the chain target is.
    """
    plies = 1 + max(max(s.ply, s.condition_ply) for s in specs)
    tokens, pieces = pv_squares(boards, pvs, input_format, plies)
    col = {"from": 0, "to": 1}
    out: dict[str, TargetLabels] = {}
    for s in specs:
        label = tokens[:, s.ply, col[s.square]].copy()
        if s.chain is not None:
            condition = np.where(out[s.chain].valid, out[s.chain].label, -1)
        else:
            condition = tokens[:, s.condition_ply, col[s.condition_square]].copy()
        out[s.name] = TargetLabels(label, condition, pieces[:, s.ply].copy())
    return out


# --------------------------------------------------------------------------- splits


def split_rows(different: np.ndarray, split: str) -> np.ndarray:
    """Indices of the puzzles in ``split`` (``all``, ``different_targets``, ``same_targets``).

    Raises:
        ConfigError: an unknown split.
    """
    different = np.asarray(different, bool)
    if split == "all":
        mask = np.ones_like(different)
    elif split == "different_targets":
        mask = different
    elif split == "same_targets":
        mask = ~different
    else:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    return np.flatnonzero(mask)


def train_test(rows: np.ndarray, seed: int, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``rows`` with ``seed`` and cut them: the first ``round(f * n)`` train, the rest test.

    The split is by puzzle (every square and target of a puzzle lands on the same side). Both
    halves come back sorted, which keeps HDF5 and numpy reads sequential.
    """
    if not 0 < train_fraction < 1:
        raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    perm = np.random.default_rng(seed).permutation(np.asarray(rows))
    cut = int(round(train_fraction * len(perm)))
    return np.sort(perm[:cut]), np.sort(perm[cut:])
