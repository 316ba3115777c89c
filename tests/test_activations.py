"""Activation caches (issue 5): exact values, resume after a crash, identity checks, inspect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import chess
import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import leela_interp.experiments.activations as activations_module
from leela_interp import load_network
from leela_interp.errors import ConfigError
from leela_interp.experiments.activations import (SCHEMA, ActivationCacheMismatchError,
                                                  ActivationFile, cache_activations,
                                                  iter_activation, load_activation)
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.outputs.results import diff_files, journal_path, partial_path
from leela_interp.puzzles.puzzle_set import PuzzleSet

#: Ten Lichess puzzles (CC0, ../shared/data/puzzles/lichess_sample.csv): id, FEN, Moves.
PUZZLES = [
    ("00008", "r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24",
     "f2g3 e6e7 b2b1 b3c1 b1c1 h6c1"),
    ("0000D", "5rk1/1p3ppp/pq3b2/8/8/1P1Q1N2/P4PPP/3R2K1 w - - 2 27", "d3d6 f8d8 d6d8 f6d8"),
    ("0008Q", "8/4R3/1p2P3/p4r2/P6p/1P3Pk1/4K3/8 w - - 1 64", "e7f7 f5e5 e2f1 e5e6"),
    ("0009B", "r2qr1k1/b1p2ppp/pp4n1/P1P1p3/4P1n1/B2P2Pb/3NBP1P/RN1QR1K1 b - - 1 16",
     "b6c5 e2g4 h3g4 d1g4"),
    ("000Pw", "6k1/5p1p/4p3/4q3/3nN3/2Q3P1/PP3P1P/6K1 w - - 2 37", "e4d2 d4e2 g1f1 e2c3"),
    ("000VW", "r4r2/1p3pkp/p5p1/3R1N1Q/3P4/8/P1q2P2/3R2K1 b - - 3 25",
     "g6f5 d5c5 c2e4 h5g5 g7h8 g5f6"),
    ("000Vc", "8/8/4k1p1/2KpP2p/5PP1/8/8/8 w - - 0 53", "g4h5 g6h5 f4f5 e6e5 f5f6 e5f6"),
    ("000Zo", "4r3/1k6/pp3r2/1b2P2p/3R1p2/P1R2P2/1P4PP/6K1 w - - 0 35", "e5f6 e8e1 g1f2 e1f1"),
    ("000aY", "r4rk1/pp3ppp/2n1b3/q1pp2B1/8/P1Q2NP1/1PP1PP1P/2KR3R w - - 0 15",
     "g5e7 a5c3 b2c3 c6e7"),
    ("000h7", "3q1rk1/1pp3pp/5p1P/4pPP1/rb1pP3/3P1N2/b1P1B3/2QK2RR b - - 7 26",
     "d8a8 g5g6 h7g6 h6g7"),
]
NO_CORRUPTION = {3, 7}
HOOKS = {
    "cnn": ["blocks.*.hook_resid_post", "blocks.0.se.hook_gate", "policy_head.hook_logits"],
    "transformer": ["blocks.*.hook_resid_post", "blocks.0.attn.hook_pattern",
                    "value_head.hook_logits"],
}
SPECS = {"cnn": {}, "transformer": {"body": "transformer", "policy": "attention"}}


def make_puzzle_set() -> PuzzleSet:
    """The ten puzzles; corrupted board = the clean board less its first pawn (none for two)."""
    corrupted = []
    for i, (_, fen, moves) in enumerate(PUZZLES):
        board = chess.Board(fen)
        board.push_uci(moves.split()[0])
        pawns = sorted(board.pieces(chess.PAWN, chess.WHITE)
                       | board.pieces(chess.PAWN, chess.BLACK))
        if i in NO_CORRUPTION or not pawns:
            corrupted.append("")
            continue
        board.remove_piece_at(pawns[0])
        corrupted.append(board.fen())
    return PuzzleSet(ids=[p[0] for p in PUZZLES], fens=[p[1] for p in PUZZLES],
                     moves=[p[2].split() for p in PUZZLES], corrupted_fens=corrupted,
                     different_targets=np.ones(len(PUZZLES), dtype=bool))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets: one torch thread (two threads on a busy 2-core machine make a 16-channel
    convolution ~1000x slower, from OpenMP synchronisation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def puzzles() -> PuzzleSet:
    return make_puzzle_set()


@pytest.fixture(scope="module", params=["cnn", "transformer"])
def net_path(request, tmp_path_factory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("nets") / f"{request.param}.pb.gz"
    return request.param, write_random_net(path, **SPECS[request.param])


def fresh(net, boards: list[chess.Board], hooks) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return net.run_with_cache(net.encode(boards), names=hooks)[1]


def file_contents(path: Path) -> dict[str, object]:
    """Every attribute and dataset of an HDF5 file, for comparing two files."""
    with h5py.File(path, "r") as f:
        out: dict[str, object] = {f"@{k}": v for k, v in f.attrs.items()}
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
                for k, v in obj.attrs.items():
                    if k not in ("DIMENSION_LIST", "REFERENCE_LIST"):
                        out[f"{name}@{k}"] = v
        f.visititems(visit)
    return out


def assert_same_contents(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> None:
    ca, cb = file_contents(a), file_contents(b)
    for key in ignore:
        ca.pop(key), cb.pop(key)
    assert ca.keys() == cb.keys()
    for key in ca:
        x, y = ca[key], cb[key]
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), key
        else:
            assert np.array_equal(x, y), key


@pytest.mark.parametrize("batch_size", [3, 10])
def test_values_equal_a_fresh_run_with_cache(net_path, puzzles, tmp_path, batch_size):
    kind, path = net_path
    net = load_network(path)
    out = cache_activations(net, puzzles, tmp_path / "activations.h5", hooks=HOOKS[kind],
                            boards="both", batch_size=batch_size, progress=False)
    n = len(puzzles)
    names = net.match_hooks(HOOKS[kind])
    valid = np.array([bool(f) for f in puzzles.corrupted_fens])
    with ActivationFile(out) as cache:
        assert cache.hooks == names and cache.boards == ["clean", "corrupted"]
        assert cache.puzzle_ids == puzzles.ids and len(cache) == n
        assert np.array_equal(cache.valid("corrupted"), valid)
    # The cache ran these batches; a fresh forward pass of the same batch is bit-identical
    # (a different batch composition may change float32 results in the last bit on CPU).
    for start in range(0, n, batch_size):
        rows = range(start, min(start + batch_size, n))
        clean = fresh(net, [puzzles.clean_board(i) for i in rows], names)
        real = [i for i in rows if valid[i]]
        corrupted = fresh(net, [puzzles.corrupted_board(i) for i in real], names)
        for name in names:
            got = load_activation(out, name, indices=list(rows))
            assert got.dtype == torch.float32 and torch.equal(got, clean[name]), name
            got = load_activation(out, name, board="corrupted", indices=list(rows))
            mask = torch.as_tensor(valid[list(rows)])
            assert torch.equal(got[mask], corrupted[name]), name
            assert torch.isnan(got[~mask]).all(), name


def test_float16_and_one_board(net_path, puzzles, tmp_path):
    kind, path = net_path
    net = load_network(path)
    out = cache_activations(net, puzzles, tmp_path / "a.h5", hooks="blocks.*.hook_resid_post",
                            boards="clean", dtype="float16", batch_size=len(puzzles),
                            compression="gzip", progress=False)
    expected = fresh(net, puzzles.clean_boards(), "blocks.*.hook_resid_post")
    for name, value in expected.items():
        got = load_activation(out, name)
        assert got.dtype == torch.float16 and torch.equal(got, value.half())
    with pytest.raises(KeyError, match="corrupted"):
        load_activation(out, name, board="corrupted")
    with h5py.File(out, "r") as f:
        assert "corrupted" not in f and f["clean"][name].compression == "gzip"


def test_layout_labels_and_attributes(puzzles, tmp_path):
    path = write_random_net(tmp_path / "t.pb.gz", **SPECS["transformer"])
    net = load_network(path)
    out = cache_activations(net, puzzles, tmp_path / "activations.h5",
                            hooks=HOOKS["transformer"], batch_size=4, progress=False)
    with h5py.File(out, "r") as f:
        assert f.attrs["schema"] == SCHEMA and f.attrs["complete"]
        assert f.attrs["network_sha256"] == net.sha256
        assert f.attrs["rows_done"] == len(puzzles)
        assert json.loads(f.attrs["config"])["hooks"] == HOOKS["transformer"]
        resid = f["clean/blocks.1.hook_resid_post"]
        assert resid.shape == (10, 64, 32) and resid.chunks == (4, 64, 32)
        assert [d.label for d in resid.dims] == ["puzzle", "square", "d_model"]
        assert resid.attrs["pov"] == "side_to_move"
        assert resid.attrs["square_order"] == "rank*8+file in the side-to-move frame"
        pattern = f["corrupted/blocks.0.attn.hook_pattern"]
        assert [d.label for d in pattern.dims] == ["puzzle", "head", "query", "key"]
        assert [d.label for d in f["clean/value_head.hook_logits"].dims] == ["puzzle", "wdl"]
        assert f["corrupted/valid"].dtype == bool


def test_readers_indices_and_streaming(puzzles, tmp_path):
    path = write_random_net(tmp_path / "c.pb.gz")
    out = cache_activations(load_network(path), puzzles, tmp_path / "a.h5",
                            hooks="blocks.*.hook_resid_post", batch_size=4, progress=False)
    hook = "blocks.1.hook_resid_post"
    full = load_activation(out, hook)
    assert full.shape == (10, 64, 16)
    idx = [9, 0, 5, 5, -1, 4]
    assert torch.equal(load_activation(out, hook, indices=idx), full[idx])
    assert torch.equal(load_activation(out, hook, indices=np.array([], int)), full[:0])
    assert torch.equal(load_activation(out, hook, indices=slice(2, 7)), full[2:7])
    for chunk in (1, 3, 4, None):
        assert torch.equal(torch.cat(list(iter_activation(out, hook, chunk=chunk))), full)
    with pytest.raises(KeyError, match="no hook 'blocks.9.hook_resid_post'"):
        load_activation(out, "blocks.9.hook_resid_post")
    with pytest.raises(IndexError):
        load_activation(out, hook, indices=[10])
    with pytest.raises(FileNotFoundError, match="stage=activations"):
        load_activation(tmp_path / "missing.h5", hook)


class Crash(RuntimeError):
    pass


def crash_after(rows_to_crash: int, seen: list[int] | None = None):
    def after_batch(rows: int) -> None:
        if seen is not None:
            seen.append(rows)
        if rows == rows_to_crash:
            raise Crash(f"simulated crash after {rows} rows")
    return after_batch


def test_killed_then_rerun_equals_uninterrupted(net_path, puzzles, tmp_path):
    kind, path = net_path
    net = load_network(path)
    kwargs = dict(hooks=HOOKS[kind], batch_size=3, progress=False)
    reference = cache_activations(net, puzzles, tmp_path / "ref" / "activations.h5", **kwargs)

    out = tmp_path / "run" / "activations.h5"
    with pytest.raises(Crash):
        cache_activations(net, puzzles, out, after_batch=crash_after(6), **kwargs)
    assert not out.exists()  # a killed run never leaves a file under the final name
    with h5py.File(partial_path(out), "r") as f:
        assert not f.attrs["complete"]
    assert json.loads(journal_path(out).read_text())["batches"][-1][1] == 6  # rows committed
    with pytest.raises(ValueError, match="incomplete"):
        ActivationFile(partial_path(out))
    seen: list[int] = []
    cache_activations(net, puzzles, out, after_batch=crash_after(-1, seen), **kwargs)
    assert seen == [9, 10]  # continued after the last complete batch
    assert out.exists() and not partial_path(out).exists()
    assert_same_contents(out, reference)
    seen.clear()
    cache_activations(net, puzzles, out, after_batch=crash_after(-1, seen), **kwargs)
    assert seen == []  # complete for the same config: nothing to do


def test_writer_thread_writes_the_file_written_in_turn(net_path, puzzles, tmp_path):
    """Every dataset and attribute, and the bytes, of a cache written by the writer thread equal
    one written in turn (both boards; corrupted batches with missing rows; a short last batch)."""
    kind, path = net_path
    net = load_network(path)
    kwargs = dict(hooks=HOOKS[kind], boards="both", batch_size=3, progress=False)
    seen: dict[bool, list[int]] = {True: [], False: []}
    for thread in (True, False):
        cache_activations(net, puzzles, tmp_path / str(thread) / "activations.h5",
                          writer_thread=thread, after_batch=seen[thread].append, **kwargs)
    a, b = (tmp_path / name / "activations.h5" for name in ("True", "False"))
    assert diff_files(a, b) == []
    assert a.read_bytes() == b.read_bytes()
    assert seen[True] == seen[False] == [3, 6, 9, 10]


@pytest.mark.parametrize("fail_at, resumed", [(6, [9, 10]), (9, [10])])
def test_a_writer_thread_failure_is_raised_and_the_partial_resumes(puzzles, tmp_path,
                                                                   monkeypatch, fail_at, resumed):
    """An error in the writer thread (the write of the batch from row ``fail_at`` fails; the
    last batch's error can only come out when the queue is drained) reaches the caller as it
    was raised; the journal holds the rows written before it; a rerun resumes after them and
    ends with the file of an uninterrupted run."""
    net = load_network(write_random_net(tmp_path / "c.pb.gz"))
    kwargs = dict(hooks=HOOKS["cnn"], batch_size=3, progress=False)
    reference = cache_activations(net, puzzles, tmp_path / "ref" / "activations.h5", **kwargs)
    error = OSError(28, "No space left on device")
    where: list[str] = []
    write_rows = activations_module._write_rows

    def failing(datasets, start, stop, batch, ready):
        if start == fail_at:
            where.append(threading.current_thread().name)
            raise error
        write_rows(datasets, start, stop, batch, ready)

    monkeypatch.setattr(activations_module, "_write_rows", failing)
    out = tmp_path / "run" / "activations.h5"
    with pytest.raises(OSError) as raised:
        cache_activations(net, puzzles, out, **kwargs)
    assert raised.value is error and where and where[0] != threading.main_thread().name
    assert not out.exists()
    assert json.loads(journal_path(out).read_text())["batches"][-1][1] == fail_at
    monkeypatch.setattr(activations_module, "_write_rows", write_rows)
    seen: list[int] = []
    cache_activations(net, puzzles, out, after_batch=seen.append, **kwargs)
    assert seen == resumed
    assert diff_files(out, reference) == []


def test_sigkill_mid_write_then_rerun_equals_uninterrupted(puzzles, tmp_path):
    """A real ``kill -9`` between batches (the process dies without closing the file)."""
    path = write_random_net(tmp_path / "c.pb.gz")
    with h5py.File(tmp_path / "puzzles.h5", "w") as f:
        puzzles.write(f.require_group("puzzles"))
    out = tmp_path / "run" / "activations.h5"
    script = textwrap.dedent(f"""
        import os, signal
        import torch
        from leela_interp import load_network
        torch.set_num_threads(1)
        from leela_interp.experiments.activations import cache_activations
        def die(rows):
            if rows == 4:
                os.kill(os.getpid(), signal.SIGKILL)
        cache_activations(load_network({str(path)!r}), {str(tmp_path / "puzzles.h5")!r},
                          {str(out)!r}, batch_size=2, progress=False, after_batch=die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and partial_path(out).exists()
    net = load_network(path)
    seen: list[int] = []
    cache_activations(net, tmp_path / "puzzles.h5", out, batch_size=2, progress=False,
                      after_batch=crash_after(-1, seen))
    assert seen == [6, 8, 10]
    reference = cache_activations(net, tmp_path / "puzzles.h5", tmp_path / "ref.h5",
                                  batch_size=2, progress=False)
    # The file records the command of the run that created it (here ``python -c``).
    assert_same_contents(out, reference, ignore=("@command",))


def test_refuses_another_network_or_puzzle_set(puzzles, tmp_path):
    net_a = load_network(write_random_net(tmp_path / "a.pb.gz", seed=0))
    net_b = load_network(write_random_net(tmp_path / "b.pb.gz", seed=1))
    out = tmp_path / "activations.h5"
    cache_activations(net_a, puzzles, out, batch_size=4, progress=False)
    with pytest.raises(ActivationCacheMismatchError, match="another network.*force=true"):
        cache_activations(net_b, puzzles, out, batch_size=4, progress=False)
    other = PuzzleSet(ids=puzzles.ids[:5], fens=puzzles.fens[:5], moves=puzzles.moves[:5],
                      corrupted_fens=puzzles.corrupted_fens[:5],
                      different_targets=puzzles.different_targets[:5])
    with pytest.raises(ActivationCacheMismatchError, match="another puzzle set"):
        cache_activations(net_a, other, out, batch_size=4, progress=False)
    with ActivationFile(out) as cache:
        cache.check(network_sha256=net_a.sha256)
        with pytest.raises(ActivationCacheMismatchError, match=net_b.sha256):
            cache.check(network_sha256=net_b.sha256)

    # A partial file of another network is not resumed either.
    out2 = tmp_path / "second.h5"
    with pytest.raises(Crash):
        cache_activations(net_a, puzzles, out2, batch_size=4, progress=False,
                          after_batch=crash_after(4))
    with pytest.raises(ActivationCacheMismatchError, match="another network"):
        cache_activations(net_b, puzzles, out2, batch_size=4, progress=False)
    cache_activations(net_b, puzzles, out2, batch_size=4, progress=False, overwrite=True)
    with ActivationFile(out2) as cache:
        assert cache.network_sha256 == net_b.sha256


def test_a_cache_of_the_older_layout_is_refused_then_rebuilt(puzzles, tmp_path):
    """Schema 1 named the ids ``puzzle_ids``: its readers refuse it with what to do, and a
    rerun rebuilds it (it is not taken as up to date) under today's names."""
    from leela_interp.experiments import probes as P

    net = load_network(write_random_net(tmp_path / "a.pb.gz", seed=0))
    out = tmp_path / "activations.h5"
    cache_activations(net, puzzles, out, batch_size=4, progress=False)
    with h5py.File(out, "r+") as f:  # what schema 1 wrote
        f.move("puzzle_id", "puzzle_ids")
        f.attrs["schema"] = "leela_interp.activations/1"
    with pytest.raises(ValueError, match="older layout is rebuilt by rerunning the activations"):
        ActivationFile(out)
    with h5py.File(out, "r") as f, pytest.raises(ConfigError, match="rerun the activations"):
        P.cache_puzzle_ids(f)
    cache_activations(net, puzzles, out, batch_size=4, progress=False)
    with h5py.File(out, "r") as f:
        assert f.attrs["schema"] == SCHEMA == P.ACTIVATIONS_SCHEMA
        assert "puzzle_ids" not in f and P.cache_puzzle_ids(f) == puzzles.ids


def test_bad_config_values(puzzles, tmp_path):
    from leela_interp.errors import UnknownHookError

    net = load_network(write_random_net(tmp_path / "c.pb.gz"))
    for key, value in (("boards", "dirty"), ("dtype", "int8"), ("compression", "zstd")):
        with pytest.raises(ConfigError, match=repr(value)):
            cache_activations(net, puzzles, tmp_path / "a.h5", progress=False, **{key: value})
    with pytest.raises(UnknownHookError):
        cache_activations(net, puzzles, tmp_path / "a.h5", hooks="blocks.*.nope", progress=False)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from leela_interp.cli import CONFIG_PATH

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_PATH):
        return compose("config", overrides=overrides)


def test_stage_skips_refuses_and_forces(puzzles, tmp_path, monkeypatch):
    from leela_interp.errors import ConfigError
    from leela_interp.stages import activations as stage

    net_a = write_random_net(tmp_path / "a.pb.gz", seed=0)
    net_b = write_random_net(tmp_path / "b.pb.gz", seed=1)
    run = tmp_path / "run"
    base = ["stage=activations", f"out_dir={run}", "activations.batch_size=4"]
    with pytest.raises(ConfigError, match="stage=puzzles"):
        stage.run(_compose(base + [f"model.path={net_a}"]))
    run.mkdir(exist_ok=True)
    with h5py.File(run / "puzzles.h5", "w") as f:
        puzzles.write(f.require_group("puzzles"))
    out = stage.run(_compose(base + [f"model.path={net_a}"]))
    assert out == run / "activations.h5"
    expected = fresh(load_network(net_a), puzzles.clean_boards()[:4], "blocks.0.hook_resid_post")
    assert torch.equal(load_activation(out, "blocks.0.hook_resid_post", indices=range(4)),
                       expected["blocks.0.hook_resid_post"])

    calls = []
    real = stage.cache_activations
    monkeypatch.setattr(stage, "cache_activations",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    stage.run(_compose(base + [f"model.path={net_a}", "activations.batch_size=8"]))
    assert calls == []  # up to date (batch size is not part of the config)
    with pytest.raises(ActivationCacheMismatchError, match="another network"):
        stage.run(_compose(base + [f"model.path={net_b}"]))
    stage.run(_compose(base + [f"model.path={net_b}", "force=true"]))
    assert calls == [1]
    with ActivationFile(out) as cache:
        assert cache.network_sha256 == load_network(net_b).sha256
    stage.run(_compose(base + [f"model.path={net_b}", "activations.dtype=float16"]))
    assert calls == [1, 1]  # another config: redone
    assert load_activation(out, "blocks.0.hook_resid_post").dtype == torch.float16


def test_inspect_prints_structure_and_statistics(puzzles, tmp_path, capsys):
    from leela_interp.stages import inspect

    net = load_network(write_random_net(tmp_path / "c.pb.gz"))
    out = cache_activations(net, puzzles, tmp_path / "activations.h5", batch_size=4,
                            progress=False)
    inspect.run(OmegaConf.create({"path": str(out)}))
    text = capsys.readouterr().out
    assert f"@schema = {SCHEMA}" in text and f"@network_sha256 = {net.sha256}" in text
    assert "clean/blocks.1.hook_resid_post  [puzzle=10, square=64, d_model=16]  float32" in text
    assert "@pov = side_to_move" in text
    x = load_activation(out, "blocks.1.hook_resid_post").double()
    assert f"mean={float(x.mean()):.6g} std={float(x.std(unbiased=False)):.6g}" in text
    corrupted = load_activation(out, "blocks.1.hook_resid_post", board="corrupted")
    assert f"nan={int(torch.isnan(corrupted).sum())}" in text
    assert "first: ['00008', '0000D', '0008Q']" in text


def test_inspect_stats_stream_in_blocks(tmp_path):
    from leela_interp.stages.inspect import summary_stats

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1000, 7)).astype(np.float32)
    x[5, 2] = np.nan
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(16, 7))
        s = summary_stats(f["x"], block_bytes=7 * 4 * 40)  # 32-row blocks
    finite = x[~np.isnan(x)].astype(np.float64)
    assert s["count"] == finite.size and s["nan"] == 1
    assert s["mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(finite.std(), rel=1e-12)
    assert (s["min"], s["max"]) == (finite.min(), finite.max())


def test_inspect_needs_a_path():
    from leela_interp.errors import ConfigError
    from leela_interp.stages import inspect

    with pytest.raises(ConfigError, match=r"\+\+path="):
        inspect.run(OmegaConf.create({}))


def test_cli_inspect(tmp_path):
    net = load_network(write_random_net(tmp_path / "c.pb.gz"))
    out = cache_activations(net, make_puzzle_set(), tmp_path / "activations.h5", batch_size=4,
                            boards="clean", progress=False)
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    proc = subprocess.run([sys.executable, "-m", "leela_interp.cli", "stage=inspect",
                           f"++path={out}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "clean/blocks.0.hook_resid_post  [puzzle=10, square=64, d_model=16]" in proc.stdout
