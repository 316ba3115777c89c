"""Tests of the puzzles stage (leela_interp.puzzles.pipeline, leela_interp.stages.puzzles).

Networks are small seeded random CNNs (near-uniform policies, so the filter thresholds are set
for them); Stockfish runs at a low depth and is skipped with a reason when absent.
"""

from __future__ import annotations

import dataclasses

from pathlib import Path

import chess
import chess.engine
import h5py
import numpy as np
import pytest
import torch
import zstandard

from engines import STOCKFISH

from leela_interp import load_network
from leela_interp.board.encoding import square_to_token, transform_for
from leela_interp.board.policy import NUM_MOVES, policy_index
from leela_interp.errors import ConfigError
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.outputs.results import chunks_dir
from leela_interp.puzzles.corruptions import (SelectionThresholds, corruption_candidates,
                                              score_candidates, select_corruption, )
from leela_interp.puzzles.lichess import COLUMNS as CSV_COLUMNS
from leela_interp.puzzles.lichess import read_puzzles
from leela_interp.puzzles.oracle import MATE_CP, OracleConfig, StockfishNotFoundError
from leela_interp.puzzles.config import FilterConfig, NetSpec, PipelineConfig
from leela_interp.puzzles.evaluation import choose_corruptions, evaluate_moves, load_net
from leela_interp.puzzles.layout import COLUMNS, FUNNEL
from leela_interp.puzzles.pipeline import build_puzzles
from leela_interp.puzzles.puzzle import Puzzle
from leela_interp.puzzles.puzzle_set import PuzzleSet

DEPTH = 6
HEADER = ",".join(CSV_COLUMNS)
# Real Lichess rows; PV lengths 5, 3, 3, 3.
GOOD = [
    "00008,r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24,f2g3 e6e7 b2b1 b3c1 b1c1 h6c1,"
    "1798,77,95,8020,crushing hangingPiece long middlegame,https://lichess.org/787zsVup/black#48,",
    "0000D,5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27,d3d6 f8d8 d6d8 f6d8,1615,74,96,"
    "32155,advantage endgame short,https://lichess.org/F8M8OS71#53,",
    "0008Q,8/4R3/1p2P3/p4r2/P6p/1P3Pk1/4K3/8 w - - 1 64,e7f7 f5e5 e2f1 e5e6,1333,76,91,714,"
    "advantage endgame rookEndgame short,https://lichess.org/MQSyb3KW#127,",
    "0009B,r2qr1k1/b1p2ppp/pp4n1/P1P1p3/4P1n1/B2P2Pb/3NBP1P/RN1QR1K1 b - - 1 16,b6c5 e2g4 h3g4 "
    "d1g4,1080,74,87,590,advantage middlegame short,https://lichess.org/4MWQCxQ6/black#32,",
]
BAD = {
    "bad_fen": "bad1,rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP w KQkq - 0 1,e2e4 e7e5 g1f3 b8c6,,,,,,,",
    "illegal_move":
        "bad2,5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27,d3d6 f8d8 d6d9 f6d8,,,,,,,",
    "empty_moves": "bad3,5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27,,,,,,,,",
    "duplicate_id": GOOD[1],
}
# Random nets put ~1/30 on each move: thresholds that let a useful share of puzzles through.
LENIENT = FilterConfig(hard_max_weak_prob=0.2, correct_min_strong_prob=0.0,
                       forcing_min_weak_prob=0.0, unique=False)
OPEN = FilterConfig(hard_max_weak_prob=None, correct_min_strong_prob=None,
                    forcing_min_weak_prob=None, unique=False)
PERMISSIVE = SelectionThresholds(max_weak_log_odds_drop=1.0, min_strong_value_drop=0.0,
                                 max_strong_prob=1.0, max_jsd=0.5)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny nets gain nothing from more threads, and lose much on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("nets")
    return (str(write_random_net(folder / "strong.pb.gz", seed=11)),
            str(write_random_net(folder / "weak.pb.gz", seed=12)))


def config(source, nets, **overrides) -> PipelineConfig:
    values = dict(source=str(source), strong=NetSpec(nets[0]), weak=NetSpec(nets[1]),
                  batch_size=64, chunk_size=8, filters=LENIENT, oracle_enabled=False,
                  oracle=OracleConfig(path=STOCKFISH or "stockfish", depth=DEPTH, num_engines=1),
                  corruptions_enabled=False,
                  thresholds=PERMISSIVE, device="cpu", threads=1)
    values.update(overrides)
    return PipelineConfig(**values)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def repeated(n: int) -> list[str]:
    """``n`` rows: the GOOD puzzles over and over, each with its own id."""
    return [f"r{i:03d}{GOOD[i % 4][GOOD[i % 4].index(','):]}" for i in range(n)]


def parse(rows: list[str]) -> list[Puzzle]:
    return [Puzzle.from_row(dict(zip(CSV_COLUMNS, row.split(",")))) for row in rows]


def read_file(path: Path) -> dict[str, object]:
    """Every dataset (as arrays) and attribute of an HDF5 file, keyed by path."""
    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                out[f"{name}@{key}"] = value
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
        for key, value in f.attrs.items():
            out[f"@{key}"] = value
    return out


def assert_same_file(a: Path, b: Path) -> None:
    left, right = read_file(a), read_file(b)
    assert sorted(left) == sorted(right)
    for key in left:
        x, y = np.asarray(left[key]), np.asarray(right[key])
        assert x.shape == y.shape and x.dtype == y.dtype, key
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), key
        else:
            assert np.array_equal(x, y), key


# --- the numbers in the file equal a direct recomputation ---------------------------------------


def direct_verdict(engine, board: chess.Board, move: str, margin_cp: int):
    """Stockfish's (score, best move, margin, unique) for one position, straight from UCI."""
    infos = engine.analyse(chess.Board(board.fen()), chess.engine.Limit(depth=DEPTH), multipv=2,
                           game=object())
    scores = [info["score"].pov(board.turn).score(mate_score=MATE_CP) for info in infos]
    best = infos[0]["pv"][0].uci()
    margin = scores[0] - scores[1] if len(scores) > 1 else None
    unique = best == move and (margin is None or margin >= margin_cp)
    return scores[0], best, margin, unique


@pytest.mark.shared
@pytest.mark.parametrize("history, oracle", [("none", False), ("none", True), ("setup", False)],
                         ids=["none-no-oracle", "none-oracle", "setup-no-oracle"])
def test_kept_puzzles_match_a_direct_recomputation(tmp_path, nets, shared_dir, history, oracle,
                                                   request):
    stockfish = request.getfixturevalue("stockfish") if oracle else None  # skips if absent
    source = shared_dir / "data" / "puzzles" / "lichess_sample.csv"
    cfg = config(source, nets, limit=80, chunk_size=32, oracle_enabled=oracle, history=history,
                 filters=FilterConfig(hard_max_weak_prob=0.2, correct_min_strong_prob=0.0,
                                      forcing_min_weak_prob=0.0, unique=oracle))
    summary = build_puzzles(cfg, tmp_path / "puzzles.h5")
    assert summary.rows >= 20
    with h5py.File(summary.path, "r") as f:
        g = f["puzzles"]
        rows = {c.name: g[c.name][()] for c in COLUMNS}
        for c in COLUMNS:
            if c.dtype is not np.float32 and g[c.name].dtype.kind == "O":
                rows[c.name] = g[c.name].asstr()[()]
        funnel = dict(f["counts/filters"].attrs)
    assert funnel["kept"] == summary.rows == len(rows["id"])
    strong, weak = load_network(nets[0]), load_network(nets[1])
    puzzles = {p.id: p for p in read_puzzles(source, limit=80)[0]}
    engine = None
    if oracle:
        engine = chess.engine.SimpleEngine.popen_uci(stockfish)
        engine.configure({"Threads": 1, "Hash": 16})
    try:
        for i in range(20):
            puzzle = puzzles[rows["id"][i]]
            assert rows["moves"][i] == " ".join(puzzle.moves)
            assert rows["pv_length"][i] == len(puzzle.pv)
            assert np.isnan(rows["strong_pv_prob"][i, len(puzzle.pv):]).all()
            boards = puzzle.boards(history=history)
            assert all(len(b.move_stack) == (0 if history == "none" else ply + 1)
                       for ply, b in enumerate(boards))
            clean = boards[0]
            transform = transform_for(clean, strong.config.input_format)
            assert rows["white_to_move"][i] == clean.turn and rows["transform"][i] == transform
            assert rows["pv_targets"][i, :len(puzzle.pv)].tolist() == [
                square_to_token(m.to_square, clean.turn, transform) for m in puzzle.pv_moves]
            assert rows["pv_sources"][i, :len(puzzle.pv)].tolist() == [
                square_to_token(m.from_square, clean.turn, transform) for m in puzzle.pv_moves]
            for ply, board in enumerate(boards):  # one puzzle, one ply at a time
                move = puzzle.pv[ply]
                for name, net in (("strong", strong), ("weak", weak)):
                    probs = net.move_probabilities([board])[0]
                    assert rows[f"{name}_pv_prob"][i, ply] == pytest.approx(probs[move], abs=1e-5)
                    assert rows[f"{name}_top_move"][i, ply] == max(probs, key=probs.get)
                if engine is not None:
                    score, best, margin, unique = direct_verdict(engine, board, move, 150)
                    assert rows["oracle_eval_cp"][i, ply] == score
                    assert rows["oracle_best_move"][i, ply] == best
                    if margin is None:
                        assert np.isnan(rows["oracle_margin_cp"][i, ply])
                    else:
                        assert rows["oracle_margin_cp"][i, ply] == margin
                    assert rows["oracle_unique"][i, ply] == unique
            for name, net in (("strong", strong), ("weak", weak)):
                with torch.no_grad():
                    out = net(net.encode([puzzle.board(history=history)]))
                np.testing.assert_allclose(rows[f"{name}_wdl"][i], out.wdl[0].numpy(), atol=1e-5)
                assert rows[f"{name}_value"][i] == pytest.approx(float(out.value[0]), abs=1e-5)
            # The filters hold for every kept row.
            assert rows["weak_pv_prob"][i, 0] < 0.2
            assert rows["different_targets"][i] == puzzle.different_targets
            if engine is not None:
                assert rows["unique"][i] and rows["oracle_unique"][i, 0:len(puzzle.pv):2].all()
    finally:
        if engine is not None:
            engine.quit()


def as_vector(probs: dict[str, float], board: chess.Board) -> torch.Tensor:
    vector = torch.zeros(NUM_MOVES)
    for uci, p in probs.items():
        vector[policy_index(board, chess.Move.from_uci(uci))] = p
    return vector


@pytest.mark.parametrize("history", ["none", "setup"])
@pytest.mark.parametrize("thresholds", [PERMISSIVE, SelectionThresholds(
    max_weak_log_odds_drop=0.5, min_strong_value_drop=0.0, max_strong_prob=0.05, max_jsd=0.05)])
def test_batched_corruption_choice_equals_per_puzzle_selection(nets, thresholds, history):
    puzzles = parse(GOOD[1:3])
    strong, weak = load_network(nets[0]), load_network(nets[1])
    boards = [p.board(history=history) for p in puzzles]
    moves = [p.pv_moves[0] for p in puzzles]
    clean_values = np.array([float(strong(strong.encode([b])).value[0]) for b in boards])
    result = choose_corruptions(boards, moves, weak=weak, strong=strong,
                                strong_clean_value=clean_values, batch_size=50,
                                thresholds=thresholds)
    for k, (board, move) in enumerate(zip(boards, moves)):
        candidates = corruption_candidates(board, move)
        assert result.n_candidates[k] == len(candidates)
        corrupted = [c.apply(board) for c in candidates]
        weak_policy = torch.stack([as_vector(p, b) for p, b in
                                   zip(weak.move_probabilities(corrupted), corrupted)])
        strong_policy = torch.stack([as_vector(p, b) for p, b in
                                     zip(strong.move_probabilities(corrupted), corrupted)])
        with torch.no_grad():
            strong_values = strong(strong.encode(corrupted)).value[:, 0]
        scores = score_candidates(
            move_index=policy_index(board, move),
            weak_clean_policy=as_vector(weak.move_probabilities([board])[0], board),
            weak_corrupted_policy=weak_policy, strong_clean_value=clean_values[k],
            strong_corrupted_value=strong_values, strong_corrupted_policy=strong_policy)
        index = select_corruption(scores.weak_log_odds_drop, scores.strong_value_drop,
                                  scores.strong_prob, scores.jsd, thresholds=thresholds)
        chosen = result.chosen[k]
        if index is None:
            assert chosen is None and np.isnan(result.scores["jsd"][k])
        else:
            assert chosen == candidates[index]
            assert result.scores["jsd"][k] == pytest.approx(scores.jsd[index], abs=1e-6)
            assert result.scores["strong_value_drop"][k] == pytest.approx(
                scores.strong_value_drop[index], abs=1e-5)
    if thresholds is PERMISSIVE:
        assert all(c is not None for c in result.chosen)


def test_onnxruntime_backend_gives_the_torch_numbers(nets):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("leela_interp.network.onnx")
    puzzles = parse(GOOD)
    boards = [b for p in puzzles for b in p.boards()]
    moves = [m for p in puzzles for m in p.pv_moves]
    torch_eval = evaluate_moves(load_net(NetSpec(nets[0])), boards, moves)
    ort_eval = evaluate_moves(load_net(NetSpec(nets[0]), backend="onnxruntime"), boards, moves)
    np.testing.assert_allclose(ort_eval.prob, torch_eval.prob, atol=1e-5)
    np.testing.assert_allclose(ort_eval.wdl, torch_eval.wdl, atol=1e-5)
    assert ort_eval.top_move == torch_eval.top_move


# --- bad input is counted, good rows are kept ---------------------------------------------------


def test_bad_rows_and_a_truncated_zst_are_counted_and_good_rows_kept(tmp_path, nets, caplog):
    first = [GOOD[0], BAD["bad_fen"], GOOD[1], BAD["illegal_move"], BAD["empty_moves"], GOOD[2],
             BAD["duplicate_id"], GOOD[3]]
    compressor = zstandard.ZstdCompressor()
    frame1 = compressor.compress(("\n".join([HEADER, *first]) + "\n").encode())
    frame2 = compressor.compress(("\n".join(repeated(40)) + "\n").encode())
    path = tmp_path / "damaged.csv.zst"
    path.write_bytes(frame1 + frame2[: len(frame2) // 2])
    with caplog.at_level("INFO"):
        summary = build_puzzles(config(path, nets, filters=OPEN), tmp_path / "run" / "puzzles.h5")
    assert f"{summary.path}: {summary.rows} puzzles kept;" in caplog.text
    with h5py.File(summary.path, "r") as f:
        rejected = dict(f["counts/rejected"].attrs)
        read_errors = dict(f["counts/read_errors"].attrs)
        funnel = dict(f["counts/filters"].attrs)
        examples = f["counts"].attrs["examples"]
    for reason in ("bad_fen", "illegal_move", "empty_moves", "duplicate_id"):
        assert rejected[reason] == 1, reason
    assert read_errors["truncated_input"] == 1 and "truncated_input" in examples
    assert list(funnel) == list(FUNNEL)
    ids = PuzzleSet.load(summary.path).ids
    # The good rows of the intact frame are all kept, in order (every PV here is >= 3 plies).
    assert ids[:4] == ["00008", "0000D", "0008Q", "0009B"]
    assert funnel["read"] == funnel["kept"] == len(ids)
    with h5py.File(summary.path, "r") as f:
        assert list(f["puzzles/source_row"][:4]) == [0, 2, 5, 7]


def test_every_dataset_of_a_real_puzzles_h5_is_reachable_from_the_puzzle_set(tmp_path, nets):
    source = write_csv(tmp_path / "p.csv", repeated(6))
    path = build_puzzles(config(source, nets, filters=OPEN, corruptions_enabled=True),
                         tmp_path / "puzzles.h5").path
    ps = PuzzleSet.load(path)
    own = {"id": ps.ids, "fen": ps.fens, "moves": [" ".join(m) for m in ps.moves],
           "corrupted_fen": ps.corrupted_fens, "different_targets": ps.different_targets}
    with h5py.File(path, "r") as f:
        g = f["puzzles"]
        assert len(g) > len(own) and set(g) == set(own) | set(ps.columns)
        for name, ds in g.items():
            stored = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
            value = own[name] if name in own else ps.columns[name]
            np.testing.assert_array_equal(np.asarray(value, dtype=stored.dtype), stored, name)


def test_shards_together_hold_the_unsharded_rows(tmp_path, nets):
    source = write_csv(tmp_path / "p.csv", [*repeated(6), BAD["bad_fen"], *repeated(11)[6:]])
    cfg = config(source, nets, chunk_size=4, filters=OPEN)
    whole = read_file(build_puzzles(cfg, tmp_path / "all" / "puzzles.h5").path)
    parts = [read_file(build_puzzles(config(source, nets, chunk_size=4, filters=OPEN, shard=k,
                                            num_shards=2),
                                     tmp_path / f"shard{k}" / "puzzles.h5").path)
             for k in (0, 1)]
    assert [list(p["puzzles/source_row"]) for p in parts] == [[0, 2, 4, 8, 10], [1, 3, 5, 7, 9, 11]]
    order = np.argsort(np.concatenate([p["puzzles/source_row"] for p in parts]))
    for column in COLUMNS:
        name = f"puzzles/{column.name}"
        merged = [p[name] for p in parts]
        if column.width == 0:  # pad both shards to the same number of plies
            width = max(m.shape[1] for m in merged)
            merged = [np.concatenate([m, np.full((len(m), width - m.shape[1]), m.dtype.type(
                column.fill) if m.dtype.kind != "O" else b"", dtype=m.dtype)], axis=1)
                for m in merged]
        merged = np.concatenate(merged)[order]
        if merged.dtype.kind == "f":
            np.testing.assert_allclose(merged, whole[name], atol=1e-6, err_msg=name)
        else:
            assert np.array_equal(merged, whole[name]), name
    # Per-reason and per-filter counts add up over the shards.
    for key in [k for k in whole if k.startswith("counts/") or k == "counts@valid"]:
        assert whole[key] == sum(p[key] for p in parts), key
    assert whole["counts/rejected@bad_fen"] == 1


# --- resumption, skipping, forcing --------------------------------------------------------------


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("oracle", [False, True], ids=["no-oracle", "oracle"])
def test_killed_and_resumed_run_equals_an_uninterrupted_run(tmp_path, nets, oracle, request):
    if oracle:
        request.getfixturevalue("stockfish")  # skips with the reason when there is none
    source = write_csv(tmp_path / "p.csv", repeated(16))
    cfg = config(source, nets, chunk_size=4, corruptions_enabled=True, oracle_enabled=oracle,
                 filters=FilterConfig(hard_max_weak_prob=0.04, correct_min_strong_prob=0.0,
                                      forcing_min_weak_prob=0.0, unique=oracle))
    whole = build_puzzles(cfg, tmp_path / "a" / "puzzles.h5")

    def kill_after_1(index):
        if index == 1:
            raise Killed

    out = tmp_path / "b" / "puzzles.h5"
    with pytest.raises(Killed):
        build_puzzles(cfg, out, after_chunk=kill_after_1)
    assert not out.exists() and sorted(p.name for p in chunks_dir(out).glob("*.h5")) == \
        ["00000000.h5", "00000001.h5"]
    done: list[int] = []
    resumed = build_puzzles(cfg, out, after_chunk=done.append)
    assert done == [2, 3]  # chunks 0 and 1 were not redone
    assert resumed.rows == whole.rows > 0 and resumed.funnel == whole.funnel
    assert not chunks_dir(out).exists()
    assert_same_file(whole.path, resumed.path)
    # the same bytes, so every later stage's puzzles_sha256 matches an uninterrupted run's
    assert whole.path.read_bytes() == resumed.path.read_bytes()


def test_up_to_date_output_is_skipped_and_force_redoes_it(tmp_path, nets):
    source = write_csv(tmp_path / "p.csv", repeated(8))
    cfg = config(source, nets)
    out = tmp_path / "puzzles.h5"
    first = build_puzzles(cfg, out)
    assert not first.skipped
    stamp = out.stat().st_mtime_ns
    calls: list[int] = []
    again = build_puzzles(cfg, out, after_chunk=calls.append)
    assert again.skipped and calls == [] and out.stat().st_mtime_ns == stamp
    assert again.rows == first.rows and again.funnel == first.funnel
    forced = build_puzzles(cfg, out, force=True, after_chunk=calls.append)
    assert not forced.skipped and calls == [0]
    # Another config, or a changed input file, is not up to date either.
    assert not build_puzzles(config(source, nets, chunk_size=3), out).skipped
    write_csv(source, repeated(9))
    assert not build_puzzles(config(source, nets, chunk_size=3), out).skipped


def test_the_stage_runs_from_the_hydra_config(tmp_path, nets):
    from hydra import compose, initialize_config_dir

    from leela_interp.cli import CONFIG_PATH
    from leela_interp.stages import run_stages

    source = write_csv(tmp_path / "p.csv", repeated(6))
    overrides = ["stage=puzzles", f"model.path={nets[0]}", f"puzzles.source={source}",
                 f"puzzles.weak_model.path={nets[1]}", f"out_dir={tmp_path / 'run'}",
                 "model.device=cpu", "puzzles.oracle.enabled=false", "puzzles.filters.unique=false",
                 "puzzles.filters.hard_max_weak_prob=null",
                 "puzzles.filters.forcing_min_weak_prob=null",
                 "puzzles.filters.correct_min_strong_prob=null",
                 "puzzles.corruptions.enabled=false"]
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run_stages(cfg)
    puzzle_set = PuzzleSet.load(tmp_path / "run" / "puzzles.h5")
    assert len(puzzle_set) == 6 and puzzle_set.corrupted_fens == [""] * 6
    with h5py.File(tmp_path / "run" / "puzzles.h5", "r") as f:
        assert f["puzzles/strong_pv_prob"].dims[1].label == "ply"
        assert f["puzzles/id"].dims[0].label == "puzzle"
        assert f.attrs["weak_sha256"] and f.attrs["source_sha256"]


def _preset(name: str, nets) -> PipelineConfig:
    """``puzzles=NAME`` composed by Hydra, as the CLI does, built into a PipelineConfig."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from leela_interp.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("config", overrides=[f"puzzles={name}", "puzzles.source=x.csv",
                                           f"puzzles.weak_model.path={nets[1]}",
                                           f"model.path={nets[0]}"])
    return PipelineConfig.from_sections(OmegaConf.to_container(cfg.model, resolve=True),
                                        OmegaConf.to_container(cfg.puzzles, resolve=True))


def test_the_paper_preset_is_exactly_the_papers_puzzle_set(nets):
    paper = _preset("paper", nets)
    # scripts/make_puzzles.py: pd.read_csv(nrows=1_000_000), mateIn1 dropped, PV length > 2,
    # hard < 0.05, correct > 0.5 at every solver move, forcing > 0.7, no engine; its corruption
    # criteria; the nets see each position without history.
    assert paper.limit == 1_000_000 and paper.exclude_themes == ("mateIn1",)
    assert paper.include_themes is None and paper.min_rating is None and paper.max_rating is None
    assert paper.filters == FilterConfig(min_pv_length=3, hard_max_weak_prob=0.05,
                                         correct_min_strong_prob=0.5, forcing_min_weak_prob=0.7,
                                         unique=False)
    assert paper.filters == FilterConfig()  # the dataclass defaults are the paper's too
    assert not paper.oracle_enabled and paper.thresholds == SelectionThresholds()
    assert paper.history == "none" and paper.corruptions_enabled and not paper.require_corruption
    strict = _preset("strict", nets)
    assert strict.limit is None and strict.oracle_enabled and strict.filters.unique
    assert dataclasses.replace(strict, limit=paper.limit, oracle_enabled=False,
                               filters=paper.filters) == paper
    project = _preset("project", nets)
    assert project.oracle_enabled and project.filters.unique and project.limit is None
    assert project.filters.hard_max_weak_prob > paper.filters.hard_max_weak_prob


def test_each_nets_heads_come_from_its_own_section():
    cfg = PipelineConfig.from_sections(
        {"path": "s.pb.gz", "policy_head": "optimistic", "value_head": "winner"},
        {"source": "x.csv", "weak_model": {"path": "w.pb.gz", "policy_head": "vanilla"}})
    assert cfg.strong == NetSpec("s.pb.gz", "optimistic", "winner")
    assert cfg.weak == NetSpec("w.pb.gz", "vanilla", None)


def test_config_errors_name_the_bad_value(nets):
    with pytest.raises(ConfigError, match="'tensorflow'"):
        config("x.csv", nets, backend="tensorflow")
    with pytest.raises(ConfigError, match="filters.unique"):
        config("x.csv", nets, filters=FilterConfig(unique=True), oracle_enabled=False)
    with pytest.raises(ConfigError, match="1.5"):
        FilterConfig(hard_max_weak_prob=1.5)


def test_a_missing_stockfish_says_how_to_install_it(tmp_path, nets):
    source = write_csv(tmp_path / "p.csv", repeated(2))
    cfg = config(source, nets, oracle_enabled=True,
                 oracle=OracleConfig(path=str(tmp_path / "no-stockfish"), depth=DEPTH))
    with pytest.raises(StockfishNotFoundError, match="apt-get install stockfish"):
        build_puzzles(cfg, tmp_path / "puzzles.h5")


def test_the_paper_preset_keeps_a_puzzle_that_strict_drops_as_not_unique(tmp_path, nets,
                                                                          stockfish):
    """puzzles=paper has no engine filter (as the paper); puzzles=strict drops a puzzle whose
    first solver move is not Stockfish's unique best move."""
    fen = "5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27"
    board = chess.Board(fen)
    line = ["d3d6", "a6a5"]  # the setup move, then a solver move that leaves the queen hanging
    for uci in line:
        board.push_uci(uci)
    line += [m.uci() for m in [next(iter(board.legal_moves))]]
    board.push_uci(line[-1])
    line.append(next(iter(board.legal_moves)).uci())
    source = write_csv(tmp_path / "p.csv", [GOOD[1], f"bad01,{fen},{' '.join(line)},,,,,,,"])
    paper = _preset("paper", nets)
    common = dict(source=str(source), batch_size=64, device="cpu", threads=1,
                  oracle=OracleConfig(depth=DEPTH, num_engines=1, path=stockfish),
                  corruptions_enabled=False)
    kept = {}
    for name, cfg in (("paper", dataclasses.replace(paper, filters=OPEN, **common)),
                      ("strict", dataclasses.replace(
                          paper, **common, oracle_enabled=True,
                          filters=dataclasses.replace(OPEN, unique=True)))):
        out = build_puzzles(cfg, tmp_path / name / "puzzles.h5")
        kept[name] = PuzzleSet.load(out.path).ids
    assert kept["paper"] == ["0000D", "bad01"]
    assert kept["strict"] == ["0000D"]
