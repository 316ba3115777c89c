"""The ``puzzles`` stage's library: Lichess puzzles -> filtered, oracle-checked, corrupted set.

:func:`build_puzzles` streams a Lichess puzzle CSV
(:class:`~leela_interp.puzzles.lichess.PuzzleReader`) in chunks of ``chunk_size`` valid puzzles and,
per chunk (with ``positions=ordinary`` each row is first turned into its ordinary-position
control, :func:`~leela_interp.puzzles.ordinary.ordinary_puzzles`, and the puzzle filters
``hard``, ``correct``, ``forcing``, ``unique`` are off):

1. **Network pass** (:mod:`leela_interp.puzzles.evaluation`). Both networks evaluate the
   position before each principal-variation (PV) ply, batched across puzzles and plies: P(PV
   move) under a legal-move-masked softmax at temperature 1, the network's top (argmax) legal
   move, and WDL / value at ply 0. Work is done lazily, filter by filter, and gives the same
   numbers as evaluating everything: the weak net first sees plies 0 and 1 of every puzzle, the
   strong net every ply of puzzles that pass the ``hard`` filter, the weak net the remaining
   plies of puzzles that pass every network filter.
2. **Filters** (:class:`~leela_interp.puzzles.filters.ChunkFilter`), in this order (each
   configurable, each with a pass count; defaults are the paper's): ``pv_length`` (PV length
   >= 3), ``hard`` (weak P(PV[0]) < 0.05), ``correct`` (strong P(PV[i]) > 0.5 for every solver
   ply i = 0, 2, ...), ``forcing`` (weak P(PV[1]) > 0.7), ``unique`` (Stockfish: every solver
   move is its best move and beats the second best by ``margin_cp``;
   :class:`~leela_interp.puzzles.oracle.Oracle`, run only on puzzles that pass the network
   filters).
3. **Corruption** (:mod:`leela_interp.puzzles.corruptions`): every candidate of every surviving
   puzzle of the chunk is scored in large batches: the strong net on every candidate, the weak net
   only on those the strong criteria leave choosable (the others could never be chosen), Stockfish
   (optional) only on those passing every network criterion. Then
   :func:`~leela_interp.puzzles.corruptions.select_corruptions` picks one per puzzle
   (:func:`~leela_interp.puzzles.evaluation.choose_corruptions`).

Each chunk's kept puzzles and funnel counts are committed as their own file
(:class:`~leela_interp.outputs.chunked.ChunkedOutput`), and ``puzzles.h5`` (layout:
:mod:`leela_interp.puzzles.layout`, ``docs/puzzles.md``) is written from them in one pass at
the end: a run killed at any instant continues after its last committed chunk (the reader
re-reads the rows before it, so its counts are whole) and ends with the bytes an uninterrupted
run writes. A complete file
for the same configuration and the same input files (by sha256) is not recomputed unless
``force``.

Settings: :class:`~leela_interp.puzzles.config.PipelineConfig`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import torch
from tqdm.auto import tqdm

from leela_interp.identity import sha256_file
from leela_interp.outputs.chunked import ChunkedOutput
from leela_interp.outputs.results import config_hash, is_complete, remove_leftovers
from leela_interp.puzzles.config import PipelineConfig
from leela_interp.puzzles.evaluation import load_net
from leela_interp.puzzles.filters import ChunkFilter
from leela_interp.puzzles.layout import FUNNEL, SCHEMA, write_file
from leela_interp.puzzles.lichess import PuzzleReader
from leela_interp.puzzles.oracle import find_stockfish
from leela_interp.puzzles.puzzle import Puzzle
from leela_interp.puzzles.puzzle_set import GROUP

log = logging.getLogger(__name__)


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
    """The filter funnel (see :data:`~leela_interp.puzzles.layout.FUNNEL`)."""


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
    pipeline = ChunkFilter(config, strong, weak, cache)
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
        out.finish(lambda f: write_file(f, [c.arrays for c in committed], config,
                                     hashed["inputs"], reader, funnel, engine,
                                     strong.config.input_format))
    finally:
        torch.set_num_threads(torch_threads)
        pipeline.close()
    log.info("%s: %d puzzles kept; funnel %s; rejected rows %s", out_path, rows, funnel,
             reader.counts.rejected)
    return BuildSummary(out_path, False, rows, funnel)
