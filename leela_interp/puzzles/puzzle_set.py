"""The puzzle set every look-ahead experiment runs on: ``puzzles.h5``'s ``/puzzles`` group.

The ``puzzles`` stage writes it; ``activations``, ``patching``, ``ablations`` and ``probes``
read it through :class:`PuzzleSet`. Required datasets (one row per kept puzzle):

- ``id``: Lichess puzzle id (UTF-8).
- ``fen``: the Lichess FEN, i.e. the position *before* the opponent's setup move.
- ``moves``: the Lichess ``Moves`` field, space-separated UCI; ``moves[0]`` is the setup move,
  the principal variation (PV) is ``moves[1:]``.
- ``corrupted_fen``: the counterfactual position (empty string when the puzzle has none).
- ``different_targets``: bool, targets of PV[0], PV[1], PV[2] all distinct.

and the group attribute ``history`` (:data:`leela_interp.puzzles.puzzle.HISTORIES`): what history
the networks see. Each required dataset is an attribute named as its plural (``id`` ->
:attr:`PuzzleSet.ids`, ``corrupted_fen`` -> :attr:`PuzzleSet.corrupted_fens`; ``moves`` split
into lists); every other dataset of the group (``rating``, ``pv_targets``, the nets' scores, ...:
:data:`leela_interp.puzzles.layout.COLUMNS`) is in :attr:`PuzzleSet.columns` under its own name.
Every stage builds a puzzle's boards with :meth:`PuzzleSet.pair` (that is,
:func:`leela_interp.puzzles.corruptions.counterfactual_pair`), so the clean and corrupted inputs of
every network pass differ only by the corruption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import chess
import h5py
import numpy as np

from leela_interp.errors import ConfigError
from leela_interp.outputs.results import read_array, read_strings, write_strings
from leela_interp.puzzles.corruptions import counterfactual_pair
from leela_interp.puzzles.puzzle import HISTORIES

GROUP = "puzzles"
#: The datasets of ``/puzzles`` that are :class:`PuzzleSet`'s own attributes.
REQUIRED = ("id", "fen", "moves", "corrupted_fen", "different_targets")


@dataclass
class PuzzleSet:
    """Puzzles as parallel lists; index ``i`` is one puzzle."""

    ids: list[str]
    fens: list[str]
    moves: list[list[str]]
    corrupted_fens: list[str]
    different_targets: np.ndarray
    history: str = "none"
    """What history the networks see (:data:`leela_interp.puzzles.puzzle.HISTORIES`)."""
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    """Every other dataset of the ``/puzzles`` group read by :meth:`load`, by name (strings as
    object arrays of ``str``); empty for a set built in memory."""

    def __post_init__(self) -> None:
        if self.history not in HISTORIES:
            raise ConfigError(f"unknown history {self.history!r}; choose one of "
                              f"{list(HISTORIES)}")

    def __len__(self) -> int:
        return len(self.ids)

    def pv(self, i: int) -> list[str]:
        """The principal variation (solution line, both sides' moves) in UCI."""
        return self.moves[i][1:]

    def pair(self, i: int) -> tuple[chess.Board, chess.Board | None]:
        """Puzzle ``i``'s (clean, corrupted) boards as the networks see them, with this set's
        :attr:`history` (:func:`~leela_interp.puzzles.corruptions.counterfactual_pair`); the
        corrupted board is ``None`` when the puzzle has none."""
        return counterfactual_pair(self.fens[i], self.moves[i], self.corrupted_fens[i],
                                   history=self.history)

    def clean_board(self, i: int) -> chess.Board:
        """The puzzle position (after the setup move) with this set's :attr:`history`."""
        return self.pair(i)[0]

    def corrupted_board(self, i: int) -> chess.Board:
        """The counterfactual board (same history as :meth:`clean_board`).

        Raises:
            ValueError: the puzzle has no corrupted board.
        """
        corrupted = self.pair(i)[1]
        if corrupted is None:
            raise ValueError(f"puzzle {self.ids[i]!r} has no corrupted board")
        return corrupted

    def clean_boards(self) -> list[chess.Board]:
        return [self.clean_board(i) for i in range(len(self))]

    def corrupted_boards(self) -> list[chess.Board]:
        return [self.corrupted_board(i) for i in range(len(self))]

    def select(self, rows: Sequence[int] | np.ndarray) -> "PuzzleSet":
        """The puzzles ``rows`` (in that order) as a new set with the same history, e.g. a
        shard's rows (:func:`leela_interp.outputs.shards.shard_rows`)."""
        rows = [int(i) for i in rows]
        return PuzzleSet(ids=[self.ids[i] for i in rows], fens=[self.fens[i] for i in rows],
                         moves=[self.moves[i] for i in rows],
                         corrupted_fens=[self.corrupted_fens[i] for i in rows],
                         different_targets=np.asarray(self.different_targets)[rows],
                         history=self.history)

    @classmethod
    def load(cls, path: str | Path) -> "PuzzleSet":
        """Read the ``/puzzles`` group of a ``puzzles.h5``.

        Raises:
            ConfigError: the file is missing or lacks the group (names the stage to run).
        """
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path} not found: run the puzzles stage first "
                              f"(leela-interp stage=puzzles out_dir={path.parent})")
        with h5py.File(path, "r") as f:
            if GROUP not in f:
                raise ConfigError(f"{path} has no /{GROUP} group; is it a puzzles.h5?")
            g = f[GROUP]
            if "history" not in g.attrs:
                raise ConfigError(f"{path} was written by an older leela-interp (no "
                                  f"/{GROUP} history attribute): rerun the puzzles stage "
                                  f"(leela-interp stage=puzzles force=true "
                                  f"out_dir={path.parent})")
            columns = {name: read_array(ds) for name, ds in g.items() if name not in REQUIRED}
            return cls(ids=read_strings(g["id"]), fens=read_strings(g["fen"]),
                       moves=[m.split() for m in read_strings(g["moves"])],
                       corrupted_fens=read_strings(g["corrupted_fen"]),
                       different_targets=g["different_targets"][()].astype(bool),
                       history=str(g.attrs["history"]), columns=columns)

    def write(self, group: h5py.Group) -> None:
        """Write the required datasets into ``group`` (normally ``f.require_group("puzzles")``);
        :attr:`columns` are not written (the puzzles stage writes its own layout)."""
        write_strings(group, "id", self.ids)
        write_strings(group, "fen", self.fens)
        write_strings(group, "moves", [" ".join(m) for m in self.moves])
        write_strings(group, "corrupted_fen", self.corrupted_fens)
        if "different_targets" in group:
            del group["different_targets"]
        group.create_dataset("different_targets", data=np.asarray(self.different_targets, bool))
        group.attrs["history"] = self.history
