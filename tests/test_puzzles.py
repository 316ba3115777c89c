"""Tests of leela_interp.puzzles.lichess: the Puzzle type and the streaming, validating CSV
reader."""

from __future__ import annotations

from pathlib import Path

import chess
import pytest
import zstandard

from leela_interp.errors import ConfigError
from leela_interp.puzzles import lichess as puzzles_module
from leela_interp.puzzles.lichess import (COLUMNS, PuzzleReader, ReadCounts, read_puzzles,
                                          write_puzzles)
from leela_interp.puzzles.puzzle import InvalidPuzzleError, Puzzle

SAMPLE_CSV = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "puzzles"
    / "lichess_sample.csv"
)

HEADER = ",".join(COLUMNS)
# Real rows of the Lichess database.
GOOD = [
    "00008,r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24,f2g3 e6e7 b2b1 b3c1 b1c1 h6c1,1798,77,95,8020,"
    "crushing hangingPiece long middlegame,https://lichess.org/787zsVup/black#48,",
    "0000D,5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27,d3d6 f8d8 d6d8 f6d8,1615,74,96,32155,"
    "advantage endgame short,https://lichess.org/F8M8OS71#53,",
    "0008Q,8/4R3/1p2P3/p4r2/P6p/1P3Pk1/4K3/8 w - - 1 64,e7f7 f5e5 e2f1 e5e6,1333,76,91,714,"
    "advantage endgame rookEndgame short,https://lichess.org/MQSyb3KW#127,",
    "0009B,r2qr1k1/b1p2ppp/pp4n1/P1P1p3/4P1n1/B2P2Pb/3NBP1P/RN1QR1K1 b - - 1 16,b6c5 e2g4 h3g4 d1g4,1080,74,87,"
    "590,advantage middlegame short,https://lichess.org/4MWQCxQ6/black#32,Kings_Pawn_Game Kings_Pawn_Game_Leonardis_Variation",
]
MATE_IN_1 = "m1,6k1/5ppp/8/8/8/8/5PPP/3R2K1 b - - 0 1,g8h8 d1d8,900,,,,mateIn1 oneMove,,"
ONLY_IDS = ["00008", "0000D", "0008Q", "0009B"]


def write_csv(path: Path, lines: list[str], *, header: bool = True) -> Path:
    path.write_text("\n".join(([HEADER] if header else []) + lines) + "\n", encoding="utf-8")
    return path


def assert_every_row_counted(counts: ReadCounts) -> None:
    accounted = (
        counts.kept
        + counts.other_shard
        + sum(counts.rejected.values())
        + sum(counts.filtered.values())
    )
    assert accounted == counts.rows


# --- Puzzle -----------------------------------------------------------------------------------


def test_puzzle_board_is_after_the_setup_move_and_pv_is_the_rest():
    puzzle = Puzzle.from_row(dict(zip(COLUMNS, GOOD[1].split(","))))
    assert puzzle.id == "0000D"
    assert puzzle.moves == ["d3d6", "f8d8", "d6d8", "f6d8"]
    assert puzzle.pv == ["f8d8", "d6d8", "f6d8"]
    initial = chess.Board(puzzle.fen)
    initial.push_uci("d3d6")
    assert puzzle.board().fen() == initial.fen()
    assert puzzle.board().turn == chess.BLACK
    assert [b.fen() for b in puzzle.boards()][0] == initial.fen()
    assert len(puzzle.boards()) == len(puzzle.pv)
    assert puzzle.rating == 1615 and puzzle.nb_plays == 32155 and puzzle.opening_tags == []
    assert puzzle.themes == ["advantage", "endgame", "short"]


def test_sources_targets_and_different_targets():
    puzzle = Puzzle.from_row(dict(zip(COLUMNS, GOOD[0].split(","))))
    # PV e6e7 b2b1 b3c1 b1c1 h6c1
    assert puzzle.sources == [chess.E6, chess.B2, chess.B3, chess.B1, chess.H6]
    assert puzzle.targets == [chess.E7, chess.B1, chess.C1, chess.C1, chess.C1]
    assert puzzle.different_targets
    same = Puzzle.from_row(dict(zip(COLUMNS, GOOD[1].split(","))))  # every target d8
    assert not same.different_targets
    short = Puzzle(id="x", fen=chess.STARTING_FEN, moves=["e2e4", "e7e5", "g1f3"])
    assert not short.different_targets  # fewer than three PV moves


def test_distinct_solver_targets_over_the_first_plies():
    # PV b8c6 g1f3 g8f6 f3g1 c6b8 g1f3 b8c6: solver targets c6 f6 b8 c6 (the opponent's f3,
    # g1, f3 repeat but do not count)
    knights = Puzzle(id="n", fen=chess.STARTING_FEN,
                     moves="e2e4 b8c6 g1f3 g8f6 f3g1 c6b8 g1f3 b8c6".split())
    assert knights.distinct_solver_targets(5) and knights.distinct_solver_targets(6)
    assert not knights.distinct_solver_targets(7)  # the 7th move returns to c6
    assert not knights.distinct_solver_targets(8)  # fewer than 8 PV moves
    puzzle = Puzzle.from_row(dict(zip(COLUMNS, GOOD[0].split(","))))  # e7 . c1 . c1
    assert puzzle.distinct_solver_targets(3) and not puzzle.distinct_solver_targets(5)


def test_optional_columns_may_be_empty_or_missing():
    puzzle = Puzzle.from_row(
        {"PuzzleId": "local-1", "FEN": chess.STARTING_FEN, "Moves": "e2e4 e7e5", "Rating": ""}
    )
    assert puzzle.rating is None and puzzle.themes == [] and puzzle.game_url == ""
    assert puzzle == Puzzle.from_row(puzzle.to_row())


def test_moves_are_normalised_to_python_chess_uci():
    fen = "r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1"
    puzzle = Puzzle.from_row(
        {"PuzzleId": "c", "FEN": fen, "Moves": "e1h1 e8c8"}
    )  # king-takes-rook castling
    assert puzzle.moves == ["e1g1", "e8c8"]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"PuzzleId": "", "FEN": chess.STARTING_FEN, "Moves": "e2e4 e7e5"}, "missing_id"),
        ({"PuzzleId": "a", "FEN": "not a fen", "Moves": "e2e4 e7e5"}, "bad_fen"),
        (
            {"PuzzleId": "a", "FEN": "8/8/8/8/8/8/8/8 w - - 0 1", "Moves": "e2e4 e7e5"},
            "bad_fen",
        ),  # no kings
        ({"PuzzleId": "a", "FEN": chess.STARTING_FEN, "Moves": "  "}, "empty_moves"),
        ({"PuzzleId": "a", "FEN": chess.STARTING_FEN, "Moves": "e2e5 e7e5"}, "illegal_move"),
        ({"PuzzleId": "a", "FEN": chess.STARTING_FEN, "Moves": "e2e4 xyz"}, "illegal_move"),
        ({"PuzzleId": "a", "FEN": chess.STARTING_FEN, "Moves": "e2e4 0000 d2d4"}, "illegal_move"),
        ({"PuzzleId": "a", "FEN": chess.STARTING_FEN, "Moves": "e2e4"}, "short_line"),
        (
            {"PuzzleId": "a", "FEN": chess.STARTING_FEN, "Moves": "e2e4 e7e5", "Rating": "high"},
            "bad_number",
        ),
    ],
)
def test_from_row_rejects_with_a_reason_and_the_bad_value(row, reason):
    with pytest.raises(InvalidPuzzleError) as info:
        Puzzle.from_row(row)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    if reason in ("bad_fen", "illegal_move"):
        bad = (
            row["FEN"]
            if reason == "bad_fen"
            else next(m for m in row["Moves"].split() if m in ("e2e5", "xyz", "0000"))
        )
        assert repr(bad) in str(info.value)


# --- Reader: fixtures with bad rows -------------------------------------------------------------

BAD_ROWS_FILE = [
    GOOD[0],
    "badfen,rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP w KQkq - 0 1,e2e4 e7e5,1500,,,,short,,",  # 7 ranks
    GOOD[1],
    "illegal,rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1,e2e4 e7e4,1500,,,,short,,",
    "nomoves,rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1,,1500,,,,short,,",
    GOOD[1].replace(
        "5rk1/1p3ppp", "5rk1/1p3ppp", 1
    ),  # duplicate id 0000D (the later row is rejected)
    "tooshort,rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1,e2e4,1500,,,,short,,",
    GOOD[2],
    "toomany,rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1,e2e4 e7e5,1500,,,,,,,,extra,extra",
    ",rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1,e2e4 e7e5,1500,,,,,,",
    "badrating,rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1,e2e4 e7e5,fifteen,,,,,,",
    "",  # blank lines are skipped, not rows
    GOOD[3],
]
BAD_ROW_REASONS = {
    "bad_fen": 1,
    "illegal_move": 1,
    "empty_moves": 1,
    "duplicate_id": 1,
    "short_line": 1,
    "malformed_row": 1,
    "missing_id": 1,
    "bad_number": 1,
}


def test_bad_rows_are_counted_per_reason_and_good_rows_kept(tmp_path):
    path = write_csv(tmp_path / "bad.csv", BAD_ROWS_FILE)
    puzzles, counts = read_puzzles(path)
    assert [p.id for p in puzzles] == ONLY_IDS
    assert counts.rejected == BAD_ROW_REASONS
    assert counts.rows == len(BAD_ROWS_FILE) - 1 and counts.kept == 4
    assert counts.read_errors == {}
    assert_every_row_counted(counts)
    assert (
        "'illegal'" in counts.examples["illegal_move"][0]
        and "'e7e4'" in counts.examples["illegal_move"][0]
    )
    # The kept puzzles equal the rows read on their own.
    alone, _ = read_puzzles(write_csv(tmp_path / "good.csv", GOOD))
    assert puzzles == alone


def test_the_first_row_with_an_id_owns_it_even_if_invalid(tmp_path):
    bad_first = GOOD[1].replace("d3d6 f8d8", "d3d7 f8d8")
    puzzles, counts = read_puzzles(write_csv(tmp_path / "dup.csv", [bad_first, GOOD[1]]))
    assert puzzles == [] and counts.rejected == {"illegal_move": 1, "duplicate_id": 1}


def test_undecodable_bytes_are_a_bad_encoding_rejection(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        (HEADER + "\n" + GOOD[0] + "\n").encode()
        + b"caf\xe9,"
        + GOOD[1].split(",", 1)[1].encode()
        + b"\n"
    )
    puzzles, counts = read_puzzles(path)
    assert [p.id for p in puzzles] == ["00008"] and counts.rejected == {"bad_encoding": 1}


def test_headerless_files_use_the_standard_columns(tmp_path):
    puzzles, counts = read_puzzles(write_csv(tmp_path / "nohead.csv", GOOD, header=False))
    assert [p.id for p in puzzles] == ONLY_IDS and counts.rows == 4


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_puzzles(tmp_path / "nope.csv")


# --- Reader: zstd -------------------------------------------------------------------------------


def many_rows(n: int) -> list[str]:
    """``n`` valid rows with distinct ids, each a copy of a real puzzle."""
    return [f"p{i:05d}," + GOOD[i % 4].split(",", 1)[1] for i in range(n)]


def test_zst_reads_like_plain_and_across_frames(tmp_path):
    rows = many_rows(300)
    plain = write_csv(tmp_path / "p.csv", rows)
    text = plain.read_bytes()
    compressor = zstandard.ZstdCompressor()
    single = tmp_path / "p.csv.zst"
    single.write_bytes(compressor.compress(text))
    cut = text.index(b"\n", len(text) // 2) + 5  # frames split mid-line
    multi = tmp_path / "multi.zst"
    multi.write_bytes(compressor.compress(text[:cut]) + compressor.compress(text[cut:]))
    disguised = tmp_path / "no_suffix.csv"  # recognised by its magic bytes, not its name
    disguised.write_bytes(single.read_bytes())
    expected, expected_counts = read_puzzles(plain)
    assert len(expected) == 300
    for path in (single, multi, disguised):
        puzzles, counts = read_puzzles(path)
        assert puzzles == expected and counts == expected_counts


def test_truncated_zst_keeps_the_rows_before_the_damage(tmp_path, monkeypatch):
    monkeypatch.setattr(puzzles_module, "_CHUNK_BYTES", 4096)  # many chunks even in a small file
    rows = many_rows(2000)
    text = (HEADER + "\n" + "\n".join(rows) + "\n").encode()
    compressed = zstandard.ZstdCompressor().compress(text)
    path = tmp_path / "cut.csv.zst"
    path.write_bytes(compressed[: len(compressed) // 2])
    puzzles, counts = read_puzzles(path, exclude_themes=())
    assert counts.read_errors == {"truncated_input": 1}
    assert "truncated_input" in counts.examples
    assert 0 < len(puzzles) < 2000
    # Exactly the complete rows before the cut survive, unchanged and in order; the partial row
    # (which may look like a valid, shorter puzzle) is rejected, not kept.
    full, _ = read_puzzles(write_csv(tmp_path / "full.csv", rows), exclude_themes=())
    assert puzzles == full[: len(puzzles)]
    assert counts.rejected == {"truncated_row": 1}
    assert counts.rows == len(puzzles) + 1
    assert_every_row_counted(counts)


def test_truncated_zst_with_bad_rows_before_the_damage(tmp_path):
    # zstd decodes whole blocks (up to 128 KiB of text), so the rows of the cut block are lost:
    # write several blocks' worth and cut in the last one.
    text = "\n".join([HEADER, *BAD_ROWS_FILE, *many_rows(4000)]).encode() + b"\n"
    compressed = zstandard.ZstdCompressor().compress(text)
    path = tmp_path / "bad_cut.zst"
    path.write_bytes(compressed[: int(len(compressed) * 0.9)])
    puzzles, counts = read_puzzles(path, exclude_themes=())
    assert [p.id for p in puzzles[:4]] == ONLY_IDS
    assert 1000 < len(puzzles) < 4004
    for reason, n in BAD_ROW_REASONS.items():
        assert counts.rejected[reason] == n
    assert counts.read_errors == {"truncated_input": 1}
    assert_every_row_counted(counts)


def test_corrupt_zst_is_a_read_error_not_a_crash(tmp_path):
    good = zstandard.ZstdCompressor().compress((HEADER + "\n" + GOOD[0] + "\n").encode())
    path = tmp_path / "corrupt.zst"
    path.write_bytes(good + b"\x28\xb5\x2f\xfd" + b"\x00garbage" * 20)
    puzzles, counts = read_puzzles(path)
    assert [p.id for p in puzzles] == ["00008"]
    assert counts.read_errors == {"corrupt_input": 1}


def test_write_puzzles_round_trips_plain_and_zst(tmp_path):
    puzzles, _ = read_puzzles(write_csv(tmp_path / "g.csv", GOOD))
    for name in ("out.csv", "out.csv.zst"):
        write_puzzles(tmp_path / name, puzzles)
        again, counts = read_puzzles(tmp_path / name)
        assert again == puzzles and counts.rejected == {}


# --- Reader: options ----------------------------------------------------------------------------


def test_limit_counts_data_rows_of_all_shards(tmp_path):
    path = write_csv(tmp_path / "bad.csv", BAD_ROWS_FILE)
    puzzles, counts = read_puzzles(path, limit=3)
    assert [p.id for p in puzzles] == ["00008", "0000D"] and counts.rows == 3
    assert counts.rejected == {"bad_fen": 1}
    _, counts = read_puzzles(path, limit=3, shard=1, num_shards=2)
    assert counts.rows == 3 and counts.other_shard == 2
    puzzles, counts = read_puzzles(path, limit=0)
    assert puzzles == [] and counts.rows == 0


def test_shards_partition_the_unsharded_result(tmp_path):
    rows = [*BAD_ROWS_FILE, *many_rows(37), GOOD[3]]  # the last row duplicates an earlier id
    path = write_csv(tmp_path / "s.csv", rows)
    whole, whole_counts = read_puzzles(path)
    for num_shards in (2, 3):
        shards = [read_puzzles(path, shard=k, num_shards=num_shards) for k in range(num_shards)]
        merged = sorted((p for puzzles, _ in shards for p in puzzles), key=lambda p: whole.index(p))
        assert merged == whole
        assert sum(c.kept for _, c in shards) == whole_counts.kept
        total_rejected: dict[str, int] = {}
        for _, counts in shards:
            assert counts.rows == whole_counts.rows
            assert_every_row_counted(counts)
            for reason, n in counts.rejected.items():
                total_rejected[reason] = total_rejected.get(reason, 0) + n
        assert total_rejected == whole_counts.rejected
    assert whole_counts.rejected["duplicate_id"] == 2


def test_rating_range_is_inclusive_and_drops_unrated(tmp_path):
    unrated = "unrated," + GOOD[0].split(",", 1)[1].replace(",1798,", ",,", 1)
    path = write_csv(tmp_path / "r.csv", [*GOOD, unrated])
    puzzles, counts = read_puzzles(path, min_rating=1333, max_rating=1798)
    assert [p.id for p in puzzles] == ["00008", "0000D", "0008Q"]
    assert counts.filtered == {"rating": 2}
    puzzles, _ = read_puzzles(path)
    assert [p.id for p in puzzles][-1] == "unrated"


def test_themes_include_and_exclude(tmp_path):
    no_themes = "local-1," + GOOD[2].split(",", 1)[1].replace(
        "advantage endgame rookEndgame short", ""
    )
    path = write_csv(tmp_path / "t.csv", [*GOOD, MATE_IN_1, no_themes])
    puzzles, counts = read_puzzles(path)  # default: drop mateIn1, keep rows without themes
    assert [p.id for p in puzzles] == [*ONLY_IDS, "local-1"]
    assert counts.filtered == {"themes": 1}
    puzzles, _ = read_puzzles(path, exclude_themes=())
    assert "m1" in [p.id for p in puzzles]
    puzzles, counts = read_puzzles(path, include_themes=["endgame", "crushing"])
    assert [p.id for p in puzzles] == ["00008", "0000D", "0008Q"]
    assert counts.filtered == {"themes": 3}
    puzzles, _ = read_puzzles(path, include_themes=["endgame"], exclude_themes=["rookEndgame"])
    assert [p.id for p in puzzles] == ["0000D"]


@pytest.mark.parametrize(
    "options",
    [
        {"limit": -1},
        {"num_shards": 0},
        {"shard": 2, "num_shards": 2},
        {"shard": -1},
        {"min_rating": 2000, "max_rating": 1000},
        {"min_moves": 0},
        {"exclude_themes": "mateIn1"},
    ],
)
def test_invalid_options_raise_config_error(options):
    with pytest.raises(ConfigError) as info:
        PuzzleReader("x.csv", **options)
    assert isinstance(info.value, ValueError)
    assert repr(next(iter(options.values()))) in str(info.value)


def test_iterating_again_rereads_with_fresh_counts(tmp_path):
    reader = PuzzleReader(write_csv(tmp_path / "g.csv", GOOD))
    assert len(list(reader)) == 4 and len(list(reader)) == 4
    assert reader.counts.rows == 4


def test_seen_ids_stay_exact_across_merges(monkeypatch):
    monkeypatch.setattr(puzzles_module._SeenIds, "_PENDING_MAX", 7)
    seen = puzzles_module._SeenIds()
    ids = [f"id{i}" for i in range(100)]
    assert not any(seen.add(i) for i in ids)
    assert all(seen.add(i) for i in ids)
    assert not seen.add("new")


# --- Real data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_csv() -> Path:
    if not SAMPLE_CSV.is_file():
        pytest.skip(f"needs the shared puzzle sample {SAMPLE_CSV}; it is absent")
    return SAMPLE_CSV


def test_real_sample_reads_without_rejections(sample_csv):
    puzzles, counts = read_puzzles(sample_csv)
    assert counts.rows == 16267  # the README: every row replays legally
    assert counts.rejected == {} and counts.read_errors == {}
    assert counts.kept == len(puzzles) == counts.rows - counts.filtered["themes"]
    assert not any("mateIn1" in p.themes for p in puzzles)
    assert len({p.id for p in puzzles}) == len(puzzles)
    assert all(p.board().turn != chess.Board(p.fen).turn for p in puzzles[:1000])


# --- Reader: one row per physical line (issue 14) ---------------------------------------------


def test_an_unclosed_quote_rejects_only_its_row(tmp_path):
    rows = many_rows(40)
    fields = rows[19].split(",")
    fields[7] = '"' + fields[7]  # Themes opens a quote that never closes
    rows[19] = ",".join(fields)
    puzzles, counts = read_puzzles(write_csv(tmp_path / "quote.csv", rows), exclude_themes=())
    assert counts.rows == 40 and len(puzzles) == 39
    assert counts.rejected == {"malformed_row": 1}
    assert "row 19 (id 'p00019')" in counts.examples["malformed_row"][0]
    assert "quoting" in counts.examples["malformed_row"][0]
    assert [p.id for p in puzzles] == [f"p{i:05d}" for i in range(40) if i != 19]


def test_quoted_fields_still_parse(tmp_path):
    fields = GOOD[3].split(",")
    fields[9] = '"Kings_Pawn_Game, Leonardis ""Variation"""'
    puzzles, counts = read_puzzles(write_csv(tmp_path / "q.csv", [",".join(fields)]))
    assert counts.rejected == {}
    assert puzzles[0].opening_tags == ["Kings_Pawn_Game,", "Leonardis", '"Variation"']


def test_a_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + write_csv(tmp_path / "plain.csv", GOOD).read_bytes())
    puzzles, counts = read_puzzles(path)
    assert [p.id for p in puzzles] == ONLY_IDS and counts.rejected == {}


def test_a_header_without_a_required_column_is_a_clear_error(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text(HEADER.replace("PuzzleId", "Id") + "\n" + GOOD[0] + "\n")
    with pytest.raises(ConfigError, match=r"lacks the column\(s\) \['PuzzleId'\]"):
        read_puzzles(path)


@pytest.mark.parametrize("ending", [b"\r", b"\r\n", b"mixed"])
def test_every_line_ending_gives_one_row_per_line(tmp_path, ending):
    lines = [HEADER.encode(), *(row.encode() for row in GOOD)]
    if ending == b"mixed":
        data = lines[0] + b"\r\n" + lines[1] + b"\r" + lines[2] + b"\n" + lines[3] + b"\r" \
            + lines[4]
    else:
        data = ending.join(lines) + ending
    path = tmp_path / "endings.csv"
    path.write_bytes(data)
    puzzles, counts = read_puzzles(path)
    assert [p.id for p in puzzles] == ONLY_IDS and counts.rows == 4 and counts.rejected == {}


def test_an_oversized_line_is_rejected_and_the_rest_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(puzzles_module, "_CHUNK_BYTES", 4096)  # the long line spans chunks
    rows = list(GOOD)
    rows[1] = rows[1] + "x" * 200_000  # a 200 kB field
    puzzles, counts = read_puzzles(write_csv(tmp_path / "big.csv", rows))
    assert [p.id for p in puzzles] == ["00008", "0008Q", "0009B"]
    assert counts.rejected == {"oversized_row": 1} and counts.rows == 4
    assert "row 1 (id '0000D')" in counts.examples["oversized_row"][0]


def test_a_valid_replacement_character_is_not_bad_encoding(tmp_path):
    row = GOOD[0].replace("hangingPiece", "hanging\ufffdPiece")
    puzzles, counts = read_puzzles(write_csv(tmp_path / "fffd.csv", [row]))
    assert counts.rejected == {} and "hanging\ufffdPiece" in puzzles[0].themes


def test_rows_are_counted_against_the_physical_lines(tmp_path, monkeypatch):
    """Whatever a line holds and wherever chunks split it (a \\r\\n pair included), every
    non-blank line after the header is one row, counted once."""
    lines = [HEADER, *BAD_ROWS_FILE[1:], "", '"unclosed,' + GOOD[0], "   ", GOOD[0] + '"x"',
             "a,b,c,d,e,f,g,h,i,j,k,l", "\u00e9t\u00e9,,", *many_rows(30)]
    data = "\r\n".join(lines).encode() + b"\r\ncaf\xe9," \
        + GOOD[1].split(",", 1)[1].encode() + b"\r\n\r\n\n"
    path = tmp_path / "mix.csv"
    path.write_bytes(data)
    expected_rows = sum(1 for line in data.splitlines()[1:] if line)
    results = []
    for chunk in (1, 2, 7, 4096, 1 << 20):
        monkeypatch.setattr(puzzles_module, "_CHUNK_BYTES", chunk)
        puzzles, counts = read_puzzles(path, exclude_themes=())
        assert counts.rows == expected_rows, chunk
        assert_every_row_counted(counts)
        results.append((puzzles, counts))
    assert all(r == results[0] for r in results)
    assert results[0][1].rejected["malformed_row"] >= 3
    assert results[0][1].rejected["bad_encoding"] == 1


@pytest.mark.parametrize("checksum", [False, True])
def test_zst_damaged_a_third_of_the_way_keeps_the_blocks_before(tmp_path, checksum):
    """Without a checksum the damage is a decoding error in its block; with one (as the zstd
    command writes) it may decode to other text and only fail the checksum at the end."""
    rows = many_rows(5000)  # ~5 zstd blocks of 128 KiB of text
    text = (HEADER + "\n" + "\n".join(rows) + "\n").encode()
    compressed = bytearray(zstandard.ZstdCompressor(write_checksum=checksum).compress(text))
    third = len(compressed) // 3
    compressed[third:third + 64] = bytes(range(64))
    path = tmp_path / "damaged.csv.zst"
    path.write_bytes(bytes(compressed))
    puzzles, counts = read_puzzles(path, exclude_themes=())
    full, _ = read_puzzles(write_csv(tmp_path / "full.csv", rows), exclude_themes=())
    assert counts.read_errors == {"corrupt_input": 1}
    first_block = 131072 // len(rows[0].encode())
    assert len(puzzles) >= first_block  # at least the first block's rows, unchanged
    assert puzzles[:first_block] == full[:first_block]
    if not checksum:
        assert puzzles == full[: len(puzzles)]  # nothing after the damage
    assert_every_row_counted(counts)
