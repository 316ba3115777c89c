"""scripts/make_training_data.py and scripts/train.py: the recipe behind the shipped nets.

A tiny Stockfish-labelled shard (2 short games, few nodes) and a tiny net: training twice gives
the same bytes, and a run killed after a checkpoint and restarted gives the same bytes as an
uninterrupted one (the property the shipped nets' recipe relies on). Skipped without Stockfish.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import chess
import numpy as np
import pytest

from engines import STOCKFISH, needs_stockfish

from leela_interp.network.loading import load_network

ROOT = Path(__file__).resolve().parents[1]
pytestmark = needs_stockfish


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# two tiny shards: one short game each, few nodes
GEN_ARGS = ["--games-per-shard", "1", "--nodes", "300", "--multipv", "3", "--max-plies", "24"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_data")
    _script("make_training_data").main(["--out", str(out), "--shards", "2", *GEN_ARGS,
                                        "--stockfish", STOCKFISH])
    return out


def test_shard_labels_are_legal_and_replayable(data_dir, tmp_path):
    d = np.load(data_dir / "shard-00000.npz")
    game = d["game_moves"][0].split()
    # the random opening plies are not labelled; every Stockfish ply after them is
    first = int(d["ply"][0])
    assert first <= 8 and list(d["ply"]) == list(range(first, len(game)))
    board = chess.Board()
    for uci in game[:first]:
        board.push_uci(uci)
    for ply, best, mpv, wdl in zip(d["ply"], d["best_move"], d["multipv_moves"], d["wdl"]):
        assert chess.Move.from_uci(str(best)) in board.legal_moves
        assert str(best) == str(mpv).split()[0]
        assert abs(float(wdl.sum()) - 1.0) < 1e-5
        board.push_uci(game[ply])
    # the same (seed, shard) plays the same game with the same labels
    _script("make_training_data").main(["--out", str(tmp_path), "--shards", "1", *GEN_ARGS,
                                        "--stockfish", STOCKFISH])
    again = np.load(tmp_path / "shard-00000.npz")
    assert all(np.array_equal(again[k], d[k]) for k in d.files)


def _train(train, tmp_path: Path, data_dir: Path, name: str, *extra: str) -> Path:
    """Run scripts/train.py (the module ``train``) on a tiny net; returns its output file."""
    out = tmp_path / f"{name}.pb.gz"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "net: {d_model: 16, layers: 1, heads: 2, d_ff: 16, smolgen_hidden: 8, smolgen_gen: 4,"
        " policy_d: 8, value_hidden: 8}\n"
        "shards: 2\nshards_start: 1\nshards_per_1000_steps: 250\nval_every: 50\n"
        "steps: 6\nbatch_size: 8\nwarmup_steps: 2\ncheckpoint_every: 3\nlog_every: 3\n"
        "tactical_weight: 4.0\nwait_for_data: false\n")
    train.main([str(cfg), f"data_dir={data_dir}", f"cache_dir={tmp_path / 'cache'}",
                f"run_dir={tmp_path / name}", f"out={out}", *extra])
    return out


def test_training_is_deterministic_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
    train = _script("train")
    first = _train(train, tmp_path, data_dir, "a")
    second = _train(_script("train"), tmp_path, data_dir, "b")
    assert first.read_bytes() == second.read_bytes()

    # kill a run at step 5 (after the step-3 checkpoint), then restart it
    calls = {"n": 0}
    real = train.forward_losses

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "forward_losses", dying)
    with pytest.raises(KeyboardInterrupt):
        _train(train, tmp_path, data_dir, "c")
    assert not (tmp_path / "c.pb.gz").exists()
    monkeypatch.setattr(train, "forward_losses", real)
    resumed = _train(train, tmp_path, data_dir, "c")
    assert resumed.read_bytes() == first.read_bytes()

    # the output is a valid lc0 net that the training changed
    net = load_network(first)
    untrained = _train(train, tmp_path, data_dir, "d", "steps=0")
    assert first.read_bytes() != untrained.read_bytes()
    assert net.summary()
