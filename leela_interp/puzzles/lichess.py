"""Lichess puzzle files: a streaming, validating CSV reader (:class:`PuzzleReader`) and writer
of :class:`~leela_interp.puzzles.puzzle.Puzzle` values.

The Lichess puzzle database (https://database.lichess.org/#puzzles) is a CSV file with the
columns ``PuzzleId,FEN,Moves,Rating,RatingDeviation,Popularity,NbPlays,Themes,GameUrl,
OpeningTags``. Lichess convention: ``FEN`` is the position *before* the opponent's setup move;
``Moves[0]`` is that setup move and the solution (the principal variation, PV) is ``Moves[1:]``,
starting with the solver's move. So PV plies 0, 2, 4, ... are the solver's moves and 1, 3, ...
the opponent's replies.

:class:`PuzzleReader` streams a plain or zstandard-compressed (``.zst``) file in chunks, so the
~5M-row database is never held in memory. A row is one physical line (ended by ``\n``,
``\r\n`` or a lone ``\r``), parsed on its own, so a bad line (a quote that runs past its end,
a huge field, bytes that are not UTF-8) is rejected alone. Every row is checked with
python-chess; a row that fails is counted under one reason in :class:`ReadCounts` (and logged),
never raised and never dropped silently. A truncated or damaged ``.zst`` stops the read with a
count under ``ReadCounts.read_errors``; the rows before the damage are kept, except those in the
damaged zstd block (zstd decodes whole blocks of up to 128 KiB of text; the stream is fed to the
decoder block by block). Damage that still decodes is caught only by the frame's checksum (the
``zstd`` command writes one) at the frame's end: the rows are then read and validated as they
decoded, and the mismatch is counted under ``corrupt_input``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard

from leela_interp.errors import ConfigError
from leela_interp.puzzles.puzzle import InvalidPuzzleError, Puzzle

log = logging.getLogger(__name__)

#: The columns of the Lichess puzzle CSV, in the database's order.
COLUMNS: tuple[str, ...] = (
    "PuzzleId",
    "FEN",
    "Moves",
    "Rating",
    "RatingDeviation",
    "Popularity",
    "NbPlays",
    "Themes",
    "GameUrl",
    "OpeningTags",
)
#: Columns every row must fill; the others may be empty.
REQUIRED_COLUMNS: tuple[str, ...] = ("PuzzleId", "FEN", "Moves")

#: Reasons a row is rejected (keys of :attr:`ReadCounts.rejected`), in the order they are checked.
#:
#: - ``oversized_row``: the line is longer than :data:`MAX_LINE_BYTES` (not parsed).
#: - ``malformed_row``: bad CSV quoting (e.g. a quote that runs past the end of its line), more
#:   fields than the header, or a required column missing.
#: - ``bad_encoding``: the line is not valid UTF-8 (a valid U+FFFD character is fine).
#: - ``missing_id``: ``PuzzleId`` is empty.
#: - ``duplicate_id``: an earlier row of the file (in any shard) has the same id.
#: - ``bad_fen``: ``FEN`` does not parse, or describes an invalid position.
#: - ``empty_moves``: ``Moves`` is empty.
#: - ``illegal_move``: a move is not UCI, is the null move ``0000``, or is illegal where it is
#:   played.
#: - ``short_line``: fewer moves than ``min_moves`` (setup move included).
#: - ``bad_number``: a numeric column (``Rating``, ...) holds something other than an integer.
#: - ``truncated_row``: the partial last line of a truncated compressed file.
REJECT_REASONS: tuple[str, ...] = (
    "oversized_row",
    "malformed_row",
    "bad_encoding",
    "missing_id",
    "duplicate_id",
    "bad_fen",
    "empty_moves",
    "illegal_move",
    "short_line",
    "bad_number",
    "truncated_row",
)
#: Reasons a valid row is left out by an option (keys of :attr:`ReadCounts.filtered`).
FILTER_REASONS: tuple[str, ...] = ("rating", "themes")
#: Problems that end the read early (keys of :attr:`ReadCounts.read_errors`): ``truncated_input``
#: (a compressed stream that ends inside a frame) and ``corrupt_input`` (undecodable zstd data).
READ_ERRORS: tuple[str, ...] = ("truncated_input", "corrupt_input")

#: Themes left out unless told otherwise, as in the paper.
DEFAULT_EXCLUDE_THEMES: tuple[str, ...] = ("mateIn1",)

#: The longest line read as a row (bytes); Lichess rows are under 1 KiB.
MAX_LINE_BYTES = 1 << 16

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BOM = b"\xef\xbb\xbf"
_CHUNK_BYTES = 1 << 20
# How many example messages ReadCounts keeps per reason.
_MAX_EXAMPLES = 5


@dataclass
class ReadCounts:
    """What happened to every row a :class:`PuzzleReader` read.

    Every data row read is counted exactly once, so
    ``rows == kept + other_shard + sum(rejected.values()) + sum(filtered.values())``.
    Blank lines are skipped and not counted. Stream problems that stop the read early are in
    ``read_errors``, with their messages in ``examples``.
    """

    rows: int = 0
    """Data rows read (header excluded), up to the row limit, across all shards."""
    kept: int = 0
    """Rows of this shard that passed validation and every filter."""
    other_shard: int = 0
    """Rows that belong to other shards (checked only for their id)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Invalid rows of this shard per reason in :data:`REJECT_REASONS`."""
    filtered: dict[str, int] = field(default_factory=dict)
    """Valid rows of this shard left out per option in :data:`FILTER_REASONS`."""
    read_errors: dict[str, int] = field(default_factory=dict)
    """Problems that ended the read early, per kind in :data:`READ_ERRORS`."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """The first few messages for each rejection reason and read error."""

    def to_dict(self) -> dict[str, object]:
        """The counts as plain nested dicts (for JSON or HDF5 attributes)."""
        return dataclasses.asdict(self)

    def _count(self, table: dict[str, int], reason: str, message: str | None = None) -> None:
        table[reason] = table.get(reason, 0) + 1
        if message is not None:
            examples = self.examples.setdefault(reason, [])
            if len(examples) < _MAX_EXAMPLES:
                examples.append(message)
            if table[reason] == 1:
                log.warning("puzzle rows: %s: %s", reason, message)
            else:
                log.debug("puzzle rows: %s: %s", reason, message)


class _SeenIds:
    """A compact set of ids: 64-bit BLAKE2b digests, most in one sorted numpy array.

    About 8 bytes per id instead of ~90 for a set of strings (5M ids: ~40 MB, not ~450 MB).
    Two different ids collide with probability ~n**2 / 2**65 (< 1e-6 for 5M ids).
    """

    _PENDING_MAX = 1 << 18

    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._pending: set[int] = set()

    @staticmethod
    def _digest(item: str) -> int:
        return int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "little")

    def add(self, item: str) -> bool:
        """Add ``item``; return whether it was already present."""
        key = self._digest(item)
        if key in self._pending:
            return True
        index = int(np.searchsorted(self._sorted, key))
        if index < len(self._sorted) and int(self._sorted[index]) == key:
            return True
        self._pending.add(key)
        if len(self._pending) >= self._PENDING_MAX:
            new = np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending))
            new.sort()
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            self._sorted = np.sort(np.concatenate([self._sorted, new]), kind="stable")
            self._pending.clear()
        return False


class _TruncatedInput(Exception):
    def __init__(self, kind: str, message: str, partial: bytes) -> None:
        super().__init__(message)
        self.kind = kind
        self.partial = partial


_SKIPPABLE_FRAMES = range(0x184D2A50, 0x184D2A60)


def _zstd_pieces(handle) -> Iterator[bytes]:
    """The compressed stream cut at zstd's own boundaries (RFC 8878): each frame header, each
    block (header and content), each checksum. Fed piece by piece, the decompressor returns a
    block's text before it sees the next block, so damage costs only the damaged block.
    Whatever does not parse as zstd is passed on as it is, for the decompressor to reject."""
    while True:
        magic = handle.read(4)
        number = int.from_bytes(magic, "little")
        if len(magic) == 4 and number in _SKIPPABLE_FRAMES:
            size = handle.read(4)
            yield magic + size + handle.read(int.from_bytes(size, "little"))
            continue
        if magic != _ZSTD_MAGIC:
            while magic:
                yield magic
                magic = handle.read(_CHUNK_BYTES)
            return
        descriptor = handle.read(1)
        d = descriptor[0] if descriptor else 0
        single = (d >> 5) & 1
        header_size = (1 - single) + (0, 1, 2, 4)[d & 3] + (single, 2, 4, 8)[d >> 6]
        yield magic + descriptor + handle.read(header_size)
        last = not descriptor
        while not last:
            header = handle.read(3)
            value = int.from_bytes(header, "little")
            last = len(header) < 3 or bool(value & 1)
            kind, size = (value >> 1) & 3, value >> 3
            yield header + handle.read(1 if kind == 1 else size)  # kind 1: RLE, one byte
        if descriptor and d & 4:  # content checksum
            yield handle.read(4)


def _zstd_chunks(handle) -> Iterator[bytes]:
    """Decompressed chunks of a (possibly multi-frame) zstd stream, about one block each.

    Raises:
        _TruncatedInput: With ``partial=b""``, when the data end inside a frame
            (``truncated_input``) or cannot be decoded (``corrupt_input``).
    """
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    in_frame = False
    offset = 0
    for piece in _zstd_pieces(handle):
        data = piece
        while data:
            try:
                out = frame.decompress(data)
            except zstandard.ZstdError as exc:
                raise _TruncatedInput(
                    "corrupt_input", f"undecodable zstd data near byte {offset}: {exc}", b""
                ) from None
            in_frame = True
            if out:
                yield out
            if frame.eof:
                data = frame.unused_data
                frame = decompressor.decompressobj()
                in_frame = False
            else:
                data = b""
        offset += len(piece)
    if in_frame:
        raise _TruncatedInput(
            "truncated_input", f"zstd stream ends inside a frame at byte {offset}", b""
        )


def _plain_chunks(handle) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK_BYTES):
        yield chunk


def _split_lines(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """``(line, length)`` for every physical line of a byte stream, without its end.

    A line ends at ``\n``, ``\r\n`` or a lone ``\r`` (Python's universal newlines), so
    every line of a file is one row however it was saved. ``length`` is the line's size in
    bytes; of a line longer than :data:`MAX_LINE_BYTES` only the first ``MAX_LINE_BYTES`` are
    kept, so memory stays bounded whatever the input. The last line may lack its end.

    Raises:
        _TruncatedInput: From ``chunks``, with ``partial`` set to the unfinished line.
    """
    rest, dropped = b"", 0  # the unfinished line so far, and bytes of it not kept
    try:
        for chunk in chunks:
            lines = (rest + chunk).splitlines(keepends=True)
            rest = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
            for line in lines:
                body = line.rstrip(b"\r\n")
                yield body[:MAX_LINE_BYTES], len(body) + dropped
                dropped = 0
            if len(rest) > MAX_LINE_BYTES + 1:  # keep a final \r: it may end the line
                end = b"\r" if rest.endswith(b"\r") else b""
                kept = rest[:MAX_LINE_BYTES] + end
                dropped += len(rest) - len(kept)
                rest = kept
    except _TruncatedInput as exc:
        exc.partial = rest
        raise
    if rest:
        body = rest.rstrip(b"\r")
        yield body[:MAX_LINE_BYTES], len(body) + dropped


def _lines(path: Path) -> Iterator[tuple[bytes, int]]:
    """:func:`_split_lines` of a plain or zstd-compressed file (recognised by its magic bytes).

    Raises:
        _TruncatedInput: The compressed stream is damaged; ``partial`` is the incomplete line
            that was being read when the data ran out (maybe ``b""``).
    """
    with open(path, "rb") as handle:
        compressed = handle.read(4) == _ZSTD_MAGIC
        handle.seek(0)
        yield from _split_lines(_zstd_chunks(handle) if compressed else _plain_chunks(handle))


def _fields(text: str) -> tuple[list[str], str | None]:
    """The CSV fields of one line, and why it does not parse (``None`` if it does).

    A line without quotes is split at commas (what the csv module does, faster). A quoted line
    goes through the csv module, strictly: a quote that runs past the end of its line is an
    error, and the fields returned are then the comma-split ones (enough to find the id).
    """
    if '"' not in text:
        return text.split(","), None
    try:
        return next(csv.reader([text], strict=True)), None
    except csv.Error as exc:
        return text.split(","), f"bad quoting ({exc})"


class PuzzleReader:
    """Stream, validate and filter the puzzles of a Lichess puzzle CSV.

    The file may be plain or zstd-compressed (recognised by its magic bytes, whatever its
    name). It is read in 1 MiB chunks; memory use does not grow with the file except for the
    ids seen so far (8 bytes each), which the duplicate check needs. Each non-blank physical
    line after the header is one data row (see the module docstring); a leading UTF-8
    byte-order mark is ignored.

    For each data row ``i`` (0-based, in file order, header excluded):

    1. Rows from ``limit`` on are not read.
    2. The id is checked against every earlier row's, in every shard, so the first row with an
       id owns it and the shards of a file together give exactly the unsharded result.
    3. Rows with ``i % num_shards != shard`` belong to other shards and are only counted.
    4. The row is validated (:meth:`Puzzle.from_row`), then the rating range and themes
       options are applied.

    Iterating yields the kept puzzles in file order and fills :attr:`counts`; iterating again
    re-reads the file and starts new counts. Blank lines are skipped. A plain file's last line
    is read even without a final newline, so a cut plain file cannot be told from a whole one;
    a cut ``.zst`` can (see the module docstring).

    >>> reader = PuzzleReader("lichess_db_puzzle.csv.zst", limit=1000)  # doctest: +SKIP
    >>> puzzles = list(reader)  # doctest: +SKIP
    >>> reader.counts.rejected  # doctest: +SKIP
    {}

    Args:
        path: The CSV file, plain or ``.zst``. A header line is expected; a file whose first
            line lacks ``FEN`` and ``Moves`` is read as headerless with :data:`COLUMNS`; a
            header with ``FEN`` and ``Moves`` but without ``PuzzleId`` is an error.
        limit: Read at most this many data rows (all shards together); ``None`` reads all.
        min_rating: Keep only puzzles rated at least this (inclusive); puzzles without a
            rating are then filtered out.
        max_rating: Keep only puzzles rated at most this (inclusive); as ``min_rating``.
        include_themes: If given, keep only puzzles with at least one of these themes.
        exclude_themes: Drop puzzles with any of these themes (default: ``mateIn1``). Puzzles
            with an empty ``Themes`` column are never dropped by this.
        shard: Which shard this reader keeps, ``0 <= shard < num_shards``.
        num_shards: How many readers split the file.
        min_moves: The fewest moves, setup move included, a valid row has (default 2: a setup
            move and one solver move).

    Raises:
        ConfigError: On construction, for an invalid option (the message shows it); when
            iterating, for a header that lacks a required column.
        FileNotFoundError: When iterating, if ``path`` does not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        limit: int | None = None,
        min_rating: int | None = None,
        max_rating: int | None = None,
        include_themes: Collection[str] | None = None,
        exclude_themes: Collection[str] = DEFAULT_EXCLUDE_THEMES,
        shard: int = 0,
        num_shards: int = 1,
        min_moves: int = 2,
    ) -> None:
        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be None or >= 0, got {limit!r}")
        if num_shards < 1:
            raise ConfigError(f"num_shards must be >= 1, got {num_shards!r}")
        if not 0 <= shard < num_shards:
            raise ConfigError(f"shard must be in [0, {num_shards}), got {shard!r}")
        if min_rating is not None and max_rating is not None and min_rating > max_rating:
            raise ConfigError(f"min_rating {min_rating!r} > max_rating {max_rating!r}")
        if min_moves < 1:
            raise ConfigError(f"min_moves must be >= 1, got {min_moves!r}")
        for name, themes in (
            ("include_themes", include_themes),
            ("exclude_themes", exclude_themes),
        ):
            if isinstance(themes, str):
                raise ConfigError(
                    f"{name} must be a collection of theme names, not the string {themes!r}"
                )
        self.path = Path(path)
        self.limit = limit
        self.min_rating = min_rating
        self.max_rating = max_rating
        self.include_themes = None if include_themes is None else frozenset(include_themes)
        self.exclude_themes = frozenset(exclude_themes)
        self.shard = shard
        self.num_shards = num_shards
        self.min_moves = min_moves
        #: Counts of the latest (or current) iteration.
        self.counts = ReadCounts()

    def __repr__(self) -> str:
        path = str(self.path)
        return f"PuzzleReader({path!r}, shard={self.shard!r}, num_shards={self.num_shards!r})"

    def _filter_reason(self, puzzle: Puzzle) -> str | None:
        if self.min_rating is not None or self.max_rating is not None:
            rating = puzzle.rating
            if (
                rating is None
                or (self.min_rating is not None and rating < self.min_rating)
                or (self.max_rating is not None and rating > self.max_rating)
            ):
                return "rating"
        themes = set(puzzle.themes)
        if self.include_themes is not None and not themes & self.include_themes:
            return "themes"
        if themes & self.exclude_themes:
            return "themes"
        return None

    def __iter__(self) -> Iterator[Puzzle]:
        counts = self.counts = ReadCounts()
        seen = _SeenIds()
        line_iter = _lines(self.path)
        partial: bytes | None = None

        def physical_lines() -> Iterator[tuple[bytes, int]]:
            nonlocal partial
            try:
                yield from line_iter
            except _TruncatedInput as exc:
                counts._count(counts.read_errors, exc.kind, f"{self.path}: {exc}")
                partial = exc.partial

        header: list[str] | None = None
        index = 0
        for line, length in physical_lines():
            if header is None and line.startswith(_BOM):  # a UTF-8 byte-order mark
                line, length = line[len(_BOM):], length - len(_BOM)
            if not length:
                continue
            try:
                text, decoded = line.decode("utf-8"), True
            except UnicodeDecodeError:
                text, decoded = line.decode("utf-8", errors="replace"), False
            fields, bad_quoting = _fields(text)
            if header is None:
                if "FEN" in fields and "Moves" in fields:
                    header = self._header(fields)
                    continue
                header = list(COLUMNS)
            if self.limit is not None and index >= self.limit:
                line_iter.close()
                break
            row_index = index
            index += 1
            counts.rows += 1
            id_column = header.index("PuzzleId")
            puzzle_id = fields[id_column].strip() if id_column < len(fields) else ""
            duplicate = bool(puzzle_id) and seen.add(puzzle_id)
            if row_index % self.num_shards != self.shard:
                counts.other_shard += 1
                continue
            where = f"row {row_index} (id {puzzle_id!r})"
            if length > MAX_LINE_BYTES:
                counts._count(
                    counts.rejected,
                    "oversized_row",
                    f"{where}: {length} bytes, more than {MAX_LINE_BYTES}",
                )
                continue
            if bad_quoting or len(fields) > len(header) or len(fields) < len(REQUIRED_COLUMNS):
                counts._count(
                    counts.rejected,
                    "malformed_row",
                    f"{where}: {bad_quoting or f'{len(fields)} fields, header has {len(header)}'}"
                    f": {text[:120]!r}",
                )
                continue
            row = dict(zip(header, fields))
            if any(column not in row for column in REQUIRED_COLUMNS):
                counts._count(
                    counts.rejected,
                    "malformed_row",
                    f"{where}: missing {REQUIRED_COLUMNS!r} fields",
                )
                continue
            if not decoded:
                counts._count(counts.rejected, "bad_encoding", f"{where}: not UTF-8: {line[:80]!r}")
                continue
            if duplicate:
                counts._count(
                    counts.rejected, "duplicate_id", f"{where}: duplicate id {puzzle_id!r}"
                )
                continue
            try:
                puzzle = Puzzle.from_row(row, min_moves=self.min_moves)
            except InvalidPuzzleError as exc:
                counts._count(counts.rejected, exc.reason, f"{where}: {exc}")
                continue
            reason = self._filter_reason(puzzle)
            if reason is not None:
                counts._count(counts.filtered, reason)
                continue
            counts.kept += 1
            yield puzzle
        if partial and (self.limit is None or index < self.limit):
            # The incomplete last line of a damaged stream: never parsed, it may look valid.
            counts.rows += 1
            if index % self.num_shards == self.shard:
                counts._count(
                    counts.rejected,
                    "truncated_row",
                    f"row {index}: incomplete line {partial[:80]!r}",
                )
            else:
                counts.other_shard += 1
        log.info(
            "%s: %d rows, %d kept, %d other shards, rejected %s, filtered %s, read errors %s",
            self.path,
            counts.rows,
            counts.kept,
            counts.other_shard,
            counts.rejected,
            counts.filtered,
            counts.read_errors,
        )

    def _header(self, fields: list[str]) -> list[str]:
        """The column names of a header line.

        Raises:
            ConfigError: a required column is missing (no row could be read).
        """
        header = [name.strip() for name in fields]
        missing = [column for column in REQUIRED_COLUMNS if column not in header]
        if missing:
            raise ConfigError(
                f"{self.path}: the header {header!r} lacks the column(s) {missing!r}; a Lichess "
                f"puzzle CSV starts with {','.join(COLUMNS)!r} (or has no header at all)"
            )
        return header


def read_puzzles(path: str | os.PathLike[str], **options) -> tuple[list[Puzzle], ReadCounts]:
    """Read every kept puzzle of ``path`` into a list.

    Args:
        path: The CSV file, plain or ``.zst``.
        **options: Keyword options of :class:`PuzzleReader`.

    Returns:
        The kept puzzles in file order and the :class:`ReadCounts`.
    """
    reader = PuzzleReader(path, **options)
    puzzles = list(reader)
    return puzzles, reader.counts


def write_puzzles(path: str | os.PathLike[str], puzzles: Iterable[Puzzle]) -> None:
    """Write puzzles as a Lichess-format CSV with a header (zstd-compressed if ``path`` ends in
    ``.zst``)."""
    path = Path(path)
    if path.suffix == ".zst":
        with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as compressed:
            with io.TextIOWrapper(compressed, encoding="utf-8", newline="") as text:
                _write_rows(text, puzzles)
    else:
        with open(path, "w", encoding="utf-8", newline="") as text:
            _write_rows(text, puzzles)


def _write_rows(text, puzzles: Iterable[Puzzle]) -> None:
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for puzzle in puzzles:
        writer.writerow(puzzle.to_row())
