"""Probes: planted signals are recovered, no-signal data is not, the stage runs end to end."""

from __future__ import annotations

from pathlib import Path

import chess
import h5py
import numpy as np
import pytest
import torch

from leela_interp.errors import ConfigError
from leela_interp.experiments import probe_targets as T
from leela_interp.experiments import probes as P
from leela_interp.experiments import random_twin as rt
from leela_interp.identity import sha256_file
from leela_interp.network.lc0.weights import net_format, read_net
from leela_interp.outputs.results import chunks_dir, write_strings

PAPER_TARGETS = [
    {"name": "target", "ply": 2, "square": "to", "condition": {"ply": 0, "square": "to"}},
    {"name": "source", "ply": 2, "square": "from", "condition": {"target": "target"},
     "joint": "move"},
]

# (PuzzleId, FEN, Moves) copied from ../shared/data/puzzles/lichess_sample.csv (CC0). 004JD and
# 009eX have a one-move PV: every ply-2 target is undefined for them.
PUZZLES = [
    ('00008', 'r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24', 'f2g3 e6e7 b2b1 b3c1 b1c1 h6c1'),
    ('0018S', '2kr3r/pp3p2/4p2p/1N1p2p1/3Q4/1P1P4/2q2PPP/5RK1 b - - 1 20', 'b7b6 d4a1 a7a5 f1c1'),
    ('001xl', '8/4R1k1/p5pp/3B4/5q2/8/5P1P/6K1 b - - 5 40', 'g7f6 e7f7 f6e5 f7f4'),
    ('002e5', 'r2q4/pp1n1kbp/3P2b1/6N1/6Q1/P3P3/6P1/4K2R b K - 1 21', 'f7g8 g4c4 g8h8 h1h7 g6h7 g5f7'),
    ('003aS', '8/8/5k1p/6p1/1R4PP/1p2KP2/8/1r6 w - - 0 43', 'h4h5 b3b2 b4b6 f6e5 f3f4 g5f4'),
    ('004JD', '3r4/R7/2p5/p1P2p2/1p4k1/nP6/P2KNP2/8 w - - 3 41', 'd2e3 a3c2'),
    ('004zh', '4b1k1/4Pr2/3R2pp/1ppBP1q1/8/PP4P1/2P4P/3R3K b - - 2 38',
     'g5h5 d1f1 g8g7 d5f7 e8f7 d6d8 h5e5 f1f7 g7f7 e7e8q e5e8 d8e8'),
    ('005xu', '8/3k4/1K1P4/2P3r1/R7/5b2/8/8 b - - 0 68', 'g5g8 a4a7 d7e6 a7e7 e6d5 d6d7'),
    ('006om', '1r3k2/5p1p/2p1pp2/P2n4/2r1N3/P4PK1/2R2P1P/2R5 b - - 9 29', 'c4a4 e4c5 a4a5 c5d7 f8g7 d7b8'),
    ('007en', 'rn3rk1/4pp1p/3p2pB/2q4P/3bP1b1/Pp2Q3/1P2B3/1K1R2NR w - - 0 20', 'e3d4 c5c2 b1a1 a8a3 b2a3 c2a2'),
    ('008oX', '4r1k1/2R3pp/2p4q/1p1p4/3P4/P7/1PP2R2/1K1N4 b - - 3 32', 'e8e1 c7c8 e1e8 c8e8'),
    ('009eX', '2r3k1/7p/6q1/p1Np4/Qp2pr2/P4P2/1PR2P1K/5R2 w - - 0 36', 'f1g1 f4h4'),
    ('00Aae', '1R6/1P6/4pkp1/5p2/3P3p/3KP3/8/1r6 b - - 0 43', 'h4h3 b8f8 f6e7 b7b8q b1b8 f8b8'),
    ('00B5A', 'r2qk2r/ppp2ppp/2n1b3/1B1N4/3b4/3P3P/P1P1QPP1/1R2K1NR w Kkq - 4 13', 'g1f3 d8d5 f3d4 d5d4 b5c6 b7c6'),
    ('00C3O', 'r2qkbnr/pp4pp/2p2p2/4n2b/2B1P3/2N2N2/PPP3PP/R1BQ1RK1 w kq - 0 10', 'd1e2 h5f3 g2f3 d8d4'),
    ('00D12', '8/6pp/8/3kP3/1p1P2P1/rPpK3P/4R3/8 b - - 1 39', 'a3b3 e5e6 c3c2 d3c2 b3c3 c2d2'),
    ('00Dt6', '5rk1/p4p1p/4p1p1/5nq1/8/5QPP/5PK1/2RR4 w - - 6 35', 'c1b1 f5h4 g2f1 h4f3'),
    ('00EoE', 'r1b1k3/ppr4p/5p2/5p2/8/2P3P1/P4PP1/4RK1R b q - 1 23', 'e8f7 h1h7 f7g6 h7c7'),
    ('00FaB', '2k2bn1/ppp2Nrp/2b1p3/3q2BQ/8/8/PP3PPP/RN3RK1 w - - 5 18', 'b1c3 d5g2'),
    ('00Gt0', 'R7/4k3/5p2/3p2p1/4b2p/2K1P2P/5PP1/8 w - - 2 47', 'f2f3 d5d4 c3d4 e4a8'),
]


# --------------------------------------------------------------------------- fixtures


def write_activations(path: Path, ids, layers: dict[str, np.ndarray], *, network_sha256="x",
                      puzzles_sha256="y") -> Path:
    """An activations.h5 in the contract layout (schema, shas, complete, puzzle_id, clean/)."""
    with h5py.File(path, "w") as f:
        f.attrs.update({"schema": P.ACTIVATIONS_SCHEMA, "network_sha256": network_sha256,
                        "puzzles_sha256": puzzles_sha256, "complete": True})
        write_strings(f, "puzzle_id", list(ids))
        for hook, x in layers.items():
            f.create_dataset(f"clean/{hook}", data=x, chunks=(min(64, len(x)), *x.shape[1:]))
    return path


def planted(n=1500, d=16, seed=0, signal=6.0):
    """Uniform random target/source/condition tokens, noise residuals with a non-zero mean (as
    real residuals have), and, when ``signal``, direction u added at the target square and u2
    at the source square."""
    rng = np.random.default_rng(seed)
    cond = rng.integers(0, 64, n)
    target = rng.integers(0, 64, n)
    source = (target + rng.integers(1, 64, n)) % 64
    mean = rng.normal(size=d)
    x = rng.normal(size=(n, 64, d)) + 3 * mean / np.linalg.norm(mean)
    u, u2 = (v / np.linalg.norm(v) for v in rng.normal(size=(2, d)))
    x[np.arange(n), target] += signal * u
    x[np.arange(n), source] += signal * u2
    labels = {"target": T.TargetLabels(target, cond, np.full(n, chess.QUEEN, np.int8)),
              "source": T.TargetLabels(source, target, np.full(n, chess.QUEEN, np.int8))}
    return x.astype(np.float32), labels


# --------------------------------------------------------------------------- units


def test_parse_targets_validates():
    specs = T.parse_targets(PAPER_TARGETS)
    assert specs[1].chain == "target" and (specs[1].condition_ply, specs[1].condition_square) \
        == (2, "to")
    assert T.output_names(specs) == ["target", "source", "move"]
    with pytest.raises(ConfigError, match="not an earlier target"):
        T.parse_targets([PAPER_TARGETS[1]])
    with pytest.raises(ConfigError, match="square"):
        T.parse_targets([{**PAPER_TARGETS[0], "square": "via"}])
    with pytest.raises(ConfigError, match="lacks 'condition'"):
        T.parse_targets([{"name": "t", "ply": 2, "square": "to"}])


def test_pv_squares_are_side_to_move_tokens():
    # 00008: black's setup move f2g3, then the PV with white to move.
    board = chess.Board(PUZZLES[0][1])
    board.push_uci("f2g3")
    tokens, pieces = T.pv_squares([board], [PUZZLES[0][2].split()[1:]], 1, 5)
    assert board.turn == chess.WHITE
    assert tokens[0, 0].tolist() == [chess.E6, chess.E7]
    assert tokens[0, 1].tolist() == [chess.B2, chess.B1]  # the opponent's move, same frame
    assert pieces[0].tolist() == [chess.ROOK, chess.QUEEN, chess.KNIGHT, chess.QUEEN, chess.QUEEN]
    tokens, _ = T.pv_squares([board], [["e6e7"]], 1, 2)  # past the PV's end: -1
    assert tokens[0, 1].tolist() == [-1, -1]
    # black to move: ranks flip, files stay
    black = chess.Board("4k3/8/8/8/8/8/4p3/4K3 b - - 0 1")
    tokens, _ = T.pv_squares([black], [["e2d1q"]], 1, 1)
    assert tokens[0, 0].tolist() == [chess.E7, chess.D8]


def test_deeper_targets_label_pv4_and_pv6_and_leave_out_shorter_pvs():
    board = chess.Board("6k1/5ppp/8/8/8/8/5PPP/R5K1 b - - 0 1")
    line = "g8f8 a1a8 f8e7 a8a7 e7d6 a7a6 d6c5".split()
    specs = T.parse_targets([{"name": f"target_ply{k}", "ply": k, "square": "to",
                              "condition": {"ply": 0, "square": "to"}} for k in (4, 6)])
    labels = T.target_labels([board] * 3, [line, line[:5], line[:3]], specs, 1)
    flip = lambda sq: sq ^ 56  # noqa: E731  (black to move: ranks flipped)
    assert labels["target_ply4"].label.tolist() == [flip(chess.D6), flip(chess.D6), -1]
    assert labels["target_ply6"].label.tolist() == [flip(chess.C5), -1, -1]
    assert labels["target_ply6"].valid.tolist() == [True, False, False]
    assert (labels["target_ply6"].condition == flip(chess.F8)).all()
    assert labels["target_ply6"].piece[0] == chess.KING


def test_train_test_split_by_puzzle_shuffled():
    rows = np.arange(100, 200)
    train, test = T.train_test(rows, 3, 0.7)
    assert len(train) == 70 and len(test) == 30
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(rows)
    assert not np.array_equal(test, rows[70:])  # shuffled, not the paper's file order
    assert np.array_equal(T.train_test(rows, 3, 0.7)[1], test)
    assert not np.array_equal(T.train_test(rows, 4, 0.7)[1], test)
    different = np.array([True, False, True])
    assert T.split_rows(different, "same_targets").tolist() == [1]
    with pytest.raises(ConfigError, match="unknown split"):
        T.split_rows(different, "odd")


def test_bilinear_scaling_is_the_same_in_training_and_prediction():
    probe = P.BilinearProbe(8, rank=4, generator=torch.Generator().manual_seed(0))
    x, z = torch.randn(3, 64, 8), torch.randn(3, 8)
    manual = sum((x @ probe.w_x[:, k]) * (z @ probe.w_z[:, k])[:, None] for k in range(4)) / 2
    torch.testing.assert_close(probe(x, z), manual)


def test_mean_and_error_formula():
    n_correct = np.array([[50, 60, 70]])
    n_test = np.array([[100, 100, 100]])
    p, err = P.mean_and_error(n_correct, n_test)
    assert p[0] == pytest.approx(0.6)
    assert err[0] == pytest.approx(2 * np.sqrt(0.01 / 3 + 0.6 * 0.4 / 100))
    p, err = P.mean_and_error(np.array([30]), np.array([100]))  # one seed: binomial only
    assert err == pytest.approx(2 * np.sqrt(0.3 * 0.7 / 100))
    assert np.isnan(P.mean_and_error(np.array([0]), np.array([0]))[0])


def test_prior_baseline_backs_off():
    model = P.PriorBaseline().fit([np.array([1, 1, 2])], np.array([5, 5, 9]))
    assert model.predict([np.array([1, 2, 3])]).tolist() == [5, 9, 5]


def test_baselines_give_the_hand_computed_answers():
    """Crafted labels where each baseline's answer is worked out by hand (comments).

    Training: (condition token, moving piece, label) = (10 N 20) (10 N 20) (10 B 30) (11 B 30)
    (11 B 30) (12 R 40) (11 N 25): overall most frequent 30; given the condition 10 -> 20,
    11 -> 30, 12 -> 40; given (piece, condition) (N 10) -> 20, (B 10) -> 30, (B 11) -> 30,
    (R 12) -> 40, (N 11) -> 25; given the piece alone N -> 20, B -> 30, R -> 40.
    """
    n, b, r, q = chess.KNIGHT, chess.BISHOP, chess.ROOK, chess.QUEEN
    rows = [(10, n, 20), (10, n, 20), (10, b, 30), (11, b, 30), (11, b, 30), (12, r, 40),
            (11, n, 25),
            # test rows          majority  condition  piece
            (10, b, 30),       # 30 yes    20 no      (B 10) 30 yes
            (10, n, 20),       # 30 no     20 yes     (N 10) 20 yes
            (13, r, 40),       # 30 no     unseen: 30 no   (R 13) unseen, R: 40 yes
            (11, n, 25),       # 30 no     30 no      (N 11) 25 yes (N alone would say 20)
            (12, b, 30),       # 30 yes    40 no      (B 12) unseen, B: 30 yes
            (14, q, 30),       # 30 yes    unseen: 30 yes  Q unseen: 30 yes
            (10, n, 21)]       # 30 no     20 no      20 no
    cond, piece, label = (np.array(c) for c in zip(*rows))
    labels = {"target": T.TargetLabels(label, cond, piece.astype(np.int8))}
    specs = T.parse_targets(PAPER_TARGETS[:1])
    train, test = np.arange(7), np.arange(7, 14)
    result = P.evaluate_baselines(labels, specs, train, test)
    assert result == {"majority": {"target": (3, 7)}, "condition": {"target": (2, 7)},
                      "piece": {"target": (6, 7)}}


# --------------------------------------------------------------------------- must show 1


def test_planted_signal_is_recovered_and_noise_is_not(tmp_path):
    """Must show 1: both probes find a planted signal (> 95%), chained source included; the same
    probes on no-signal activations, and the no-activation baselines, stay near chance."""
    specs = T.parse_targets(PAPER_TARGETS)
    x, labels = planted()
    noise, _ = planted(signal=0.0, seed=1)
    n = len(x)
    path = write_activations(tmp_path / "activations.h5", [f"p{i}" for i in range(n)],
                             {"blocks.0.hook_resid_post": x,
                              "blocks.1.hook_resid_post": noise.astype(np.float16)})
    assert P.layer_hooks(path) == {0: "blocks.0.hook_resid_post", 1: "blocks.1.hook_resid_post"}
    train, test = T.train_test(np.arange(n), 0, 0.7)
    cfg = {"logreg": P.LogRegConfig(components=2)}
    signal = P.evaluate_layer(P.load_layer(path, "blocks.0.hook_resid_post"), labels, specs,
                              train, test, **cfg)
    none = P.evaluate_layer(P.load_layer(path, "blocks.1.hook_resid_post"), labels, specs,
                            train, test, **cfg)
    baselines = P.evaluate_baselines(labels, specs, train, test)
    for probe in P.PROBES:
        for name in ("target", "source", "move"):
            correct, total = signal[probe][name]
            assert total == len(test)
            assert correct / total > 0.95, (probe, name, correct / total)
            correct, total = none[probe][name]
            assert correct / total < 0.1, (probe, name, correct / total)
    for kind in P.BASELINES:
        for name in ("target", "source"):
            correct, total = baselines[kind][name]
            assert correct / total < 0.1, (kind, name)


def test_layer_rows_reads_rows_on_demand_with_the_same_results(tmp_path):
    """LayerRows (layers too big to hold) indexes like the loaded array and gives the same probe
    results, bit for bit."""
    specs = T.parse_targets(PAPER_TARGETS)
    x, labels = planted(signal=0.5)
    path = write_activations(tmp_path / "activations.h5", [f"p{i}" for i in range(len(x))],
                             {"blocks.0.hook_resid_post": x})
    loaded = P.load_layer(path, "blocks.0.hook_resid_post", dtype="float16")
    rows = np.array([5, 2, 5, 0, len(x) - 1])
    squares = np.array([3, 63, 0, 7, 9])
    train, test = T.train_test(np.arange(len(x)), 0, 0.7)
    cfg = {"logreg": P.LogRegConfig(components=2, max_iter=30)}
    with h5py.File(path, "a") as f:  # a compressed copy: read through h5py, not os.pread
        f.create_dataset("clean/gzip", data=x, chunks=(64, 64, x.shape[-1]), compression="gzip")
        # chunks of 7 rows (the stage's batch, not 64 = the square axis) still use os.pread
        f.create_dataset("clean/by7", data=x, chunks=(7, 64, x.shape[-1]))
    with h5py.File(path, "r") as f:
        lazy = P.LayerRows(f["clean"]["blocks.0.hook_resid_post"], "float16")
        gz = P.LayerRows(f["clean"]["gzip"], "float16")
        by7 = P.LayerRows(f["clean"]["by7"], "float16")
        assert lazy._fd is not None and by7._fd is not None and gz._fd is None
        for view in (lazy, gz, by7):
            assert view.shape == loaded.shape and view.dtype == loaded.dtype
            assert np.array_equal(view[rows], loaded[rows])
            assert np.array_equal(view[rows, squares], loaded[rows, squares])
        streamed = P.evaluate_layer(lazy, labels, specs, train, test, **cfg)
    assert streamed == P.evaluate_layer(loaded, labels, specs, train, test, **cfg)


def test_chained_source_uses_the_predicted_target():
    """A source predictor that is always right given the condition square is only right where
    the target predictor was: evaluation is chained on predictions."""
    specs = T.parse_targets(PAPER_TARGETS)
    _, labels = planted(n=200)
    lookup = {int(t): int(s) for t, s in zip(labels["target"].label, labels["source"].label)}

    def fit_predict(spec, tr, c_tr, y_tr, te, c_te):
        if spec.name == "target":  # right on even rows only
            return np.where(te % 2 == 0, labels["target"].label[te], (labels["target"].label[te]
                                                                       + 1) % 64)
        return np.array([lookup.get(int(c), -1) for c in c_te])

    train, test = T.train_test(np.arange(200), 0, 0.5)
    res = P.evaluate_chained(specs, labels, train, test, fit_predict)
    even = int((test % 2 == 0).sum())
    assert res["target"] == (even, 100)
    assert res["move"][0] <= even and res["source"][0] >= res["move"][0]


# --------------------------------------------------------------------------- random twin


def test_random_twin_has_the_real_architecture(tmp_path, shared_dir):
    real = shared_dir / "nets" / "maia-1900.pb.gz"
    twin = rt.write_random_twin(real, tmp_path / "twin.pb.gz", seed=0)
    assert rt.layer_sizes(read_net(real)) == rt.layer_sizes(read_net(twin))
    again = rt.write_random_twin(real, tmp_path / "again.pb.gz", seed=0)
    assert sha256_file(again) == sha256_file(twin)  # seeded: same file
    assert sha256_file(rt.write_random_twin(real, tmp_path / "s1.pb.gz", seed=1)) != \
        sha256_file(twin)


@pytest.mark.parametrize("spec", [
    {"body": "transformer", "d_model": 32, "layers": 2, "heads": 4, "d_ff": 48,
     "policy": "attention", "moves_left": True},
    {"body": "transformer", "d_model": 32, "layers": 2, "heads": 4, "d_ff": 48,
     "policy": "attention", "multihead": True, "embedding": "PE_MAP", "smolgen": False,
     "network": "ATTENTIONBODY_WITH_MULTIHEADFORMAT"},
    {"channels": 8, "blocks": 2, "se_channels": 0, "batch_norm": False, "policy": "classical",
     "value": "classical"},
])
def test_random_twin_of_project_nets(tmp_path, spec):
    from leela_interp.network.lc0.random_net import write_random_net

    real = write_random_net(tmp_path / "real.pb.gz", seed=5, **spec)
    twin = rt.write_random_twin(real, tmp_path / "twin.pb.gz", seed=0)
    assert rt.layer_sizes(read_net(real)) == rt.layer_sizes(read_net(twin))
    assert sha256_file(real) != sha256_file(twin)


# --------------------------------------------------------------------------- the stage


def _write_puzzles(path: Path) -> None:
    from leela_interp.puzzles.puzzle_set import PuzzleSet

    ids, fens, moves = zip(*PUZZLES)
    moves = [m.split() for m in moves]

    def different(m):
        t = [chess.Move.from_uci(u).to_square for u in m[1:4]]
        return len(t) == 3 and len(set(t)) == 3

    ps = PuzzleSet(ids=list(ids), fens=list(fens), moves=moves, corrupted_fens=[""] * len(ids),
                   different_targets=np.array([different(m) for m in moves]))
    with h5py.File(path, "w") as f:
        ps.write(f.require_group("puzzles"))


@pytest.fixture()
def run_folder(tmp_path):
    """A run folder with puzzles.h5 (20 real puzzles) and an activations.h5 computed here with
    ``net.run_with_cache`` on a small random CNN, in the contract layout (reversed row order)."""
    from leela_interp import load_network
    from leela_interp.network.lc0.random_net import write_random_net
    from leela_interp.puzzles.puzzle_set import PuzzleSet

    out = tmp_path / "run"
    out.mkdir()
    net_path = write_random_net(tmp_path / "net.pb.gz", seed=3, channels=8, blocks=3,
                                se_channels=2)
    _write_puzzles(out / "puzzles.h5")
    puzzles = PuzzleSet.load(out / "puzzles.h5")
    net = load_network(net_path)
    order = list(range(len(puzzles)))[::-1]
    planes = net.encode([puzzles.clean_board(i) for i in order])
    with torch.no_grad():
        _, cache = net.run_with_cache(planes, names="blocks.*.hook_resid_post")
    write_activations(out / "activations.h5", [puzzles.ids[i] for i in order],
                      {k: v.numpy() for k, v in cache.items()},
                      network_sha256=sha256_file(net_path),
                      puzzles_sha256=sha256_file(out / "puzzles.h5"))
    return out, net_path


def _compose(out: Path, net_path: Path, *extra: str):
    from hydra import compose, initialize_config_dir

    from leela_interp.cli import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("config", overrides=[
            "stage=probes", f"out_dir={out}", f"model.path={net_path}", "probes.seeds=[0,1]",
            "probes.splits=[all,different_targets]", "probes.logreg.max_iter=20",
            "probes.bilinear.epochs=2", "probes.threads=1", "model.batch_size=8", *extra])


def test_stage_end_to_end(run_folder):
    from leela_interp.experiments import probing as stage
    from leela_interp.stages import run_stages

    out, net_path = run_folder
    run_stages(_compose(out, net_path, "probes.layers=[0,2]"))
    path = out / "probes.h5"
    assert (out / "figures" / "probes.png").stat().st_size > 0
    assert (out / stage.TWIN_ACTIVATIONS).exists()
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] and f.attrs["schema"] == stage.SCHEMA
        assert [d.label for d in f["accuracy"].dims] == list(stage.AXES)
        assert f["accuracy"].shape == (2, 2, 2, 5, 2, 2)
        assert [v.decode() for v in f["target"][()]] == ["target", "source", "move",
                                                         "target_ply4", "target_ply6"]
        assert f["done"][()].all()
        n_correct, n_test = f["n_correct"][()], f["n_test"][()]
        assert (n_correct >= 0).all()
        assert (n_correct <= n_test[None, :, None, :, None, :]).all()
        # 18 puzzles have a ply-2 target (2 have a one-move PV); test half = 18 - round(.7*20)
        # at most; every split's test set holds only puzzles on which the target is defined
        assert (n_test[0, 0] <= 6).all() and (n_test > 0).any()
        acc = f["accuracy_mean"][()]
        assert np.isfinite(f["accuracy_err"][()][np.isfinite(acc)]).all()
        assert f["baseline_accuracy"].shape == (2, 3, 5, 2)
        assert f.attrs["peak_rss_mb"] > 0
        assert f["accuracy"].dims[4][0][()].tolist() == [0, 2]  # the layer scale
        loaded = f["n_correct"][()]
    mtime = path.stat().st_mtime_ns
    run_stages(_compose(out, net_path, "probes.layers=[0,2]"))  # up to date: skipped
    assert path.stat().st_mtime_ns == mtime
    # layers over probes.max_layer_gib are read row by row: the same numbers (and the key does
    # not change the config hash, so force to redo)
    run_stages(_compose(out, net_path, "probes.layers=[0,2]", "probes.max_layer_gib=0",
                        "force=true"))
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["n_correct"][()], loaded)
    mtime = path.stat().st_mtime_ns
    run_stages(_compose(out, net_path, "probes.layers=[0,2]", "force=true"))
    assert path.stat().st_mtime_ns != mtime


def test_stage_stores_what_the_library_computes_on_the_same_splits(run_folder):
    """Every stored count of probes.h5 equals the library's own evaluation of the same split
    and seed, recomputed here from puzzles.h5 and activations.h5; accuracy = n_correct/n_test."""
    from omegaconf import OmegaConf

    from leela_interp.outputs.results import read_strings
    from leela_interp.puzzles.puzzle_set import PuzzleSet
    from leela_interp.stages import run_stages

    out, net_path = run_folder
    cfg = _compose(out, net_path, "probes.layers=[0,2]", "probes.random_twin.enabled=false")
    run_stages(cfg)
    puzzles = PuzzleSet.load(out / "puzzles.h5")
    with h5py.File(out / "activations.h5", "r") as f:
        ids = read_strings(f["puzzle_id"])
    rows = [puzzles.ids.index(pid) for pid in ids]  # the cache's row order
    specs = T.parse_targets(OmegaConf.to_container(cfg.probes.targets))
    labels = T.target_labels([puzzles.clean_board(i) for i in rows],
                             [puzzles.pv(i) for i in rows], specs,
                             net_format(read_net(net_path)).input_format)
    different = puzzles.different_targets[rows]
    options = dict(bilinear=P.BilinearConfig(**OmegaConf.to_container(cfg.probes.bilinear)),
                   logreg=P.LogRegConfig(**OmegaConf.to_container(cfg.probes.logreg)))
    with h5py.File(out / "probes.h5", "r") as f:
        axes = {a: read_strings(f[a]) for a in ("split", "probe", "target", "baseline")}
        layers, seeds = f["layer"][()].tolist(), f["seed"][()].tolist()
        stored = {k: f[k][()] for k in ("n_correct", "n_test", "accuracy", "baseline_n_correct",
                                        "baseline_accuracy")}
    assert axes["target"] == T.output_names(specs) and layers == [0, 2] and seeds == [0, 1]
    checked = 0
    for si, split in enumerate(axes["split"]):
        for ki, seed in enumerate(seeds):
            train, test = T.train_test(T.split_rows(different, split), seed, 0.7)
            base = P.evaluate_baselines(labels, specs, train, test, axes["baseline"])
            for bi, b in enumerate(axes["baseline"]):
                for ti, t in enumerate(axes["target"]):
                    correct, n_test = base[b][t]
                    assert stored["baseline_n_correct"][si, bi, ti, ki] == correct
                    assert stored["n_test"][si, ti, ki] == n_test
                    if n_test:
                        assert stored["baseline_accuracy"][si, bi, ti, ki] == correct / n_test
            for li, layer in enumerate(layers):
                acts = P.load_layer(out / "activations.h5", f"blocks.{layer}.hook_resid_post")
                res = P.evaluate_layer(acts, labels, specs, train, test, probes=axes["probe"],
                                       seed=seed, **options)
                for pi, probe in enumerate(axes["probe"]):
                    for ti, t in enumerate(axes["target"]):
                        correct, n_test = res[probe][t]
                        assert stored["n_correct"][0, si, pi, ti, li, ki] == correct, \
                            (split, seed, layer, probe, t)
                        if n_test:
                            assert stored["accuracy"][0, si, pi, ti, li, ki] == correct / n_test
                        checked += 1
    assert checked == 2 * 2 * 2 * 2 * 5 and stored["n_test"].sum() > 0


def test_stage_resumes_and_checks_inputs(run_folder, monkeypatch):
    from leela_interp.stages import probes as stage

    out, net_path = run_folder
    cfg = _compose(out, net_path, "probes.random_twin.enabled=false", "probes.layers=[0,2]",
                   "probes.probes=[bilinear]")
    calls = []
    real = P.load_layer

    def crash_on_second(path, hook, **kw):
        calls.append(hook)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, hook, **kw)

    monkeypatch.setattr(P, "load_layer", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        stage.run(cfg)
    assert not (out / "probes.h5").exists() and chunks_dir(out / "probes.h5").is_dir()
    monkeypatch.setattr(P, "load_layer", lambda path, hook, **kw: (
        calls.append(hook), real(path, hook, **kw))[1])
    stage.run(cfg)
    assert calls == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post",
                     "blocks.2.hook_resid_post"]  # layer 0 was not redone
    with h5py.File(out / "probes.h5", "r") as f:
        assert f["accuracy"].shape == (1, 2, 1, 5, 2, 2) and f["done"][()].all()

    with pytest.raises(ConfigError, match="not in"):
        stage.run(_compose(out, net_path, "probes.layers=[7]"))
    other = out.parent / "other.pb.gz"
    from leela_interp.network.lc0.random_net import write_random_net

    write_random_net(other, seed=9, channels=8, blocks=3, se_channels=2)
    with pytest.raises(ConfigError, match="rerun the activations stage"):
        stage.run(_compose(out, other, "force=true"))
    (out / "activations.h5").unlink()
    with pytest.raises(ConfigError, match="run the activations stage first"):
        stage.run(_compose(out, net_path))
