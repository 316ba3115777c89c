"""The layout of ``puzzles.h5`` (every dataset: ``docs/puzzles.md``): the ``/puzzles``
columns (:data:`COLUMNS`), the filter funnel (:data:`FUNNEL`), the counts and attributes
(:func:`write_file`), and :func:`nothing_to_analyse`, which reads them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from leela_interp.board.encoding import CHESS_NUMBERING, TOKEN_NUMBERING
from leela_interp.outputs.results import STR, is_complete, label_axes
from leela_interp.puzzles.config import PipelineConfig
from leela_interp.puzzles.lichess import FILTER_REASONS, READ_ERRORS, REJECT_REASONS, PuzzleReader
from leela_interp.puzzles.puzzle_set import GROUP

#: ``schema`` attribute of ``puzzles.h5``.
SCHEMA = "leela_interp.puzzles/2"
#: The filter funnel, in order: ``read`` is every puzzle the reader kept; each later entry counts
#: the puzzles that pass that step and every one before it. ``corruption`` counts those that also
#: got a corrupted board (whether or not one is required); ``kept`` is the rows written.
FUNNEL: tuple[str, ...] = ("read", "pv_length", "hard", "correct", "forcing", "unique",
                           "corruption", "kept")


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


def empty_block(column: Column, n: int, width: int) -> np.ndarray:
    """``n`` rows of ``column`` (per-ply columns ``width`` plies wide) at its fill value."""
    shape = (n,) if column.width is None else (n, width if column.width == 0 else column.width)
    dtype = object if column.dtype is STR else column.dtype
    return np.full(shape, column.fill, dtype=dtype)


def write_columns(group: h5py.Group, chunks: Sequence[Mapping[str, np.ndarray]]) -> int:
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
                block = empty_block(column, len(data), plies)
                block[:, :data.shape[1]] = data
                data = block
            parts.append(data)
        data = np.concatenate(parts) if parts else empty_block(column, 0, plies)
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


def write_file(f: h5py.File, chunks: Sequence[Mapping[str, np.ndarray]], config: PipelineConfig,
            inputs: dict[str, str], reader: PuzzleReader, funnel: dict[str, int],
            engine: str | None, input_format: int) -> None:
    """Write the whole final file from the committed chunks: the columns, the counts, the
    attributes (only from the chunks, the config and the reader's counts, so a resumed run
    writes the same bytes)."""
    group = f.create_group(GROUP)
    write_columns(group, chunks)
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
    f.attrs.update({"source": str(config.source), **inputs,
                    "oracle_engine": engine or "", "history": config.history,
                    "token_input_format": int(input_format)})


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
