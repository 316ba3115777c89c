"""Interventions and the ``patching`` / ``ablations`` stages.

- Every effect array the stages store is checked entry by entry (10 random entries each)
  against a plain ``run_with_hooks`` full forward pass (no prefix reuse, no batching of
  interventions) and an independent log-odds formula.
- A transformer built by hand so that exactly one head moves information: the head sweep must
  rank it first and residual patching must put the effect on the corrupted square only.
- Both stages run end to end on a small puzzle file (real Lichess puzzles, corrupted by removing
  a pawn) for a random transformer and a random CNN.
"""

from __future__ import annotations

import json
from pathlib import Path

import chess
import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from leela_interp import load_network
from leela_interp.board.encoding import square_to_token, transform_for
from leela_interp.board.policy import legal_moves_and_indices
from leela_interp.cli import CONFIG_PATH
from leela_interp.errors import ConfigError
from leela_interp.experiments import interventions as iv
from leela_interp.experiments import ablations as ab
from leela_interp.experiments import edge as ed
from leela_interp.experiments import patching as pt
from leela_interp.experiments import piece_heads as ph
from leela_interp.identity import sha256_file
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.outputs.results import is_complete, read_strings
from leela_interp.puzzles.puzzle_set import PuzzleSet

TRANSFORMER = dict(body="transformer", policy="attention", d_model=32, layers=3, heads=4,
                   d_ff=48, embedding="PE_DENSE", smolgen=True, default_activation="mish")
CNN = dict(body="cnn", channels=16, blocks=3)

# Real Lichess puzzles (from ../shared/data/puzzles/lichess_sample.csv): id, FEN, Moves, and the
# pawn square removed to make the corrupted board (not a target of PV[0] or PV[2]).
FIXTURE = [
    ("00008", "r6k/pp2r2p/4Rp1Q/3p4/8/1N1P2R1/PqP2bPP/7K b - - 0 24",
     "f2g3 e6e7 b2b1 b3c1 b1c1 h6c1", "a2"),
    ("0008Q", "8/4R3/1p2P3/p4r2/P6p/1P3Pk1/4K3/8 w - - 1 64", "e7f7 f5e5 e2f1 e5e6", "b3"),
    ("001wR", "6nr/pp3p1p/k1p5/8/1QN5/2P1P3/4KPqP/8 b - - 5 26",
     "b7b5 b4a5 a6b7 c4d6 b7b8 a5d8", "h2"),
    ("002e5", "r2q4/pp1n1kbp/3P2b1/6N1/6Q1/P3P3/6P1/4K2R b K - 1 21",
     "f7g8 g4c4 g8h8 h1h7 g6h7 g5f7", "g2"),
    ("002VP", "8/6p1/2B1bn2/6k1/3B4/6K1/4P3/8 b - - 4 44", "e6d5 d4f6 g5f5 c6d5", "e2"),
    ("003jH", "rn3rk1/p5pp/3N4/4np1q/5Q2/1P3K2/PB1P2P1/2R4R w - - 0 25",
     "f3f2 e5d3 f2e3 d3f4 h1h5 f4h5", "a2"),
]
PIECE_HEADS = {"knight": [[1, 1], [2, 2]], "rook": [[0, 3]], "bishop": [[2, 0]]}


def write_fixture(path: Path) -> PuzzleSet:
    ids, fens, moves, corrupted, different = [], [], [], [], []
    for pid, fen, uci, pawn in FIXTURE:
        board = chess.Board(fen)
        m = uci.split()
        board.push_uci(m[0])
        c = board.copy(stack=False)
        assert c.remove_piece_at(chess.parse_square(pawn)).piece_type == chess.PAWN
        assert c.is_valid() and chess.Move.from_uci(m[1]) in c.legal_moves
        ids.append(pid)
        fens.append(fen)
        moves.append(m)
        corrupted.append(c.fen())
        targets = [chess.Move.from_uci(x).to_square for x in m[1:4]]
        different.append(len(set(targets)) == 3)
    puzzles = PuzzleSet(ids=ids, fens=fens, moves=moves, corrupted_fens=corrupted,
                        different_targets=np.array(different))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        puzzles.write(f.require_group("puzzles"))
    return puzzles


def make_cfg(run_dir: Path, net_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose("config", overrides=[f"out_dir={run_dir}", f"model.path={net_path}",
                                             "model.batch_size=500", *overrides])


def run_stages(run_dir: Path, net_path: Path, *overrides: str) -> None:
    from leela_interp.stages import ablations, patching

    cfg = make_cfg(run_dir, net_path, *overrides)
    patching.run(cfg)
    ablations.run(cfg)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets run fastest on one thread (and the test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The random nets rarely rank PV[0] first: these runs analyse every puzzle with a corruption.
ALL_PUZZLES = ("patching.require_pv0_top=false", "ablations.require_pv0_top=false")
STAGE_OVERRIDES = ("patching.sites=[resid_post,resid_pre,resid_mid]", "patching.chunk_size=4",
                   "ablations.chunk_size=4", *ALL_PUZZLES,
                   "ablations.piece_heads.min_pv_length=3",
                   *(f"ablations.piece_heads.heads.{piece}={json.dumps(heads).replace(' ', '')}"
                     for piece, heads in PIECE_HEADS.items()))


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transformer")
    net_path = write_random_net(tmp / "t.pb.gz", seed=3, **TRANSFORMER)
    puzzles = write_fixture(tmp / "run" / "puzzles.h5")
    run_stages(tmp / "run", net_path, *STAGE_OVERRIDES)
    return tmp / "run", load_network(net_path), puzzles


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnn")
    net_path = write_random_net(tmp / "c.pb.gz", seed=4, **CNN)
    puzzles = write_fixture(tmp / "run" / "puzzles.h5")
    run_stages(tmp / "run", net_path, "patching.sites=[resid_post,resid_pre]",
               "patching.chunk_size=4", *ALL_PUZZLES)
    return tmp / "run", load_network(net_path), puzzles


# --------------------------------------------------------------------------- reference


def ref_log_odds(board: chess.Board, logits: torch.Tensor, move: chess.Move, fmt: int) -> float:
    """log p - log(1 - p) of ``move`` under the softmax over legal moves (independent code)."""
    moves, index = legal_moves_and_indices(board, transform_for(board, fmt))
    p = torch.softmax(logits[torch.as_tensor(index)].double(), 0)[moves.index(move)]
    return float(torch.log(p) - torch.log1p(-p))


def ref_effect(net, board: chess.Board, move: chess.Move, hooks) -> float:
    """Effect of ``hooks`` with a full forward pass from the planes."""
    fmt = net.config.input_format
    planes = net.encode([board])
    with torch.no_grad():
        clean = net(planes).policy_logits[0]
        patched = net.run_with_hooks(planes, fwd_hooks=hooks).policy_logits[0]
    return ref_log_odds(board, clean, move, fmt) - ref_log_odds(board, patched, move, fmt)


def cached(net, board: chess.Board, name: str) -> torch.Tensor:
    with torch.no_grad():
        _, c = net.run_with_cache(net.encode([board]), names=name)
    return c[name][0]


def tokens(board: chess.Board, pv: list[chess.Move], fmt: int) -> tuple[int, int, int]:
    tf = transform_for(board, fmt)
    return (square_to_token(pv[0].to_square, board.turn, tf),
            square_to_token(pv[2].to_square, board.turn, tf),
            square_to_token(pv[2].from_square, board.turn, tf))


def pick(arr: np.ndarray, k: int = 10, seed: int = 0) -> list[tuple[int, ...]]:
    """Up to ``k`` random indices of finite entries, half of them among the nonzero ones."""
    rng = np.random.default_rng(seed)
    finite = np.argwhere(np.isfinite(arr))
    nonzero = np.argwhere(np.isfinite(arr) & (arr != 0))
    assert len(finite), "no finite entries to check"
    half = nonzero[rng.choice(len(nonzero), min(k // 2, len(nonzero)), replace=False)] \
        if len(nonzero) else np.zeros((0, arr.ndim), int)
    rest = finite[rng.choice(len(finite), min(k - len(half), len(finite)), replace=False)]
    return [tuple(int(x) for x in i) for i in np.concatenate([half, rest])]


def puzzle_at(puzzles: PuzzleSet, i: int):
    pv = [chess.Move.from_uci(m) for m in puzzles.pv(i)]
    return puzzles.clean_board(i), puzzles.corrupted_board(i), pv


def replace_at(value: torch.Tensor, index):
    def fn(t, hook):
        t = t.clone()
        t[(slice(None),) + index] = value
        return t
    return fn


ATOL = 2e-4


# --------------------------------------------------------------------------- (a) recompute


def test_residual_effects_match_plain_hooks(transformer_run, cnn_run):
    for run_dir, net, puzzles in (transformer_run, cnn_run):
        with h5py.File(run_dir / "patching.h5", "r") as f:
            for site in f["residual"]:
                eff = f[f"residual/{site}/effect"][()]
                for p, layer, s in pick(eff, seed=hash(site) % 100):
                    clean, corrupted, pv = puzzle_at(puzzles, p)
                    name = f"blocks.{layer}.hook_{site}"
                    donor = cached(net, corrupted, name)[s]
                    want = ref_effect(net, clean, pv[0], [(name, replace_at(donor, (s,)))])
                    assert eff[p, layer, s] == pytest.approx(want, abs=ATOL), (site, p, layer, s)


def test_head_patching_matches_plain_hooks(transformer_run):
    run_dir, net, puzzles = transformer_run
    with h5py.File(run_dir / "patching.h5", "r") as f:
        eff = f["heads/effect"][()]
    for p, layer, h in pick(eff):
        clean, corrupted, pv = puzzle_at(puzzles, p)
        name = f"blocks.{layer}.attn.hook_z"
        donor = cached(net, corrupted, name)[h]
        assert eff[p, layer, h] == pytest.approx(
            ref_effect(net, clean, pv[0], [(name, replace_at(donor, (h,)))]), abs=ATOL)


def test_head_ablations_match_plain_hooks(transformer_run):
    run_dir, net, puzzles = transformer_run
    with h5py.File(run_dir / "ablations.h5", "r") as f:
        effects = {m: f[f"heads/{m}/effect"][()] for m in ("zero", "mean", "resample")}
        donors = f["heads/resample_donor"][()]
    boards = puzzles.clean_boards()
    with torch.no_grad():
        _, all_z = net.run_with_cache(net.encode(boards), names="blocks.*.attn.hook_z")
    for method, eff in effects.items():
        for p, layer, h in pick(eff, seed=len(method)):
            clean, _, pv = puzzle_at(puzzles, p)
            name = f"blocks.{layer}.attn.hook_z"
            if method == "zero":
                value = torch.zeros(())
            elif method == "mean":
                value = all_z[name][:, h].double().mean(0).float()
            else:
                value = all_z[name][donors[p], h]
            want = ref_effect(net, clean, pv[0], [(name, replace_at(value, (h,)))])
            assert eff[p, layer, h] == pytest.approx(want, abs=ATOL), (method, p, layer, h)


def pattern_edit(head: int, q: int, k: int, variant: str):
    """Plain-hook version of one edge-ablation variant on a batch of one board."""
    def fn(t, hook):
        t = t.clone()
        if variant in ("edge", "edge_renorm"):
            t[0, head, q, k] = 0.0
        else:
            keep = t[0, head, q, k].clone()
            t[0, head] = 0.0
            t[0, head, q, k] = keep
        if variant in ("edge_renorm", "others_renorm"):
            t[0, head, q] = t[0, head, q] / t[0, head, q].sum()
        return t
    return fn


def test_edge_ablation_matches_plain_hooks(transformer_run):
    run_dir, net, puzzles = transformer_run
    with h5py.File(run_dir / "ablations.h5", "r") as f:
        g = f["edge"]
        layer, head = int(g.attrs["layer"]), int(g.attrs["head"])
        eff, weight = g["effect"][()], g["weight"][()]
        assert "sweep" not in g  # full_sweep is off by default
        assert g.attrs["choice"] == "patching"
    # edge.layer/head null: the head this net's own head patching ranks first
    with h5py.File(run_dir / "patching.h5", "r") as f:
        ranked = f["heads/summary/different_targets/effect_mean"][()]
    assert (layer, head) == np.unravel_index(np.nanargmax(ranked), ranked.shape)
    name = f"blocks.{layer}.attn.hook_pattern"
    for p, v in pick(eff):
        clean, _, pv = puzzle_at(puzzles, p)
        q, k, _ = tokens(clean, pv, net.config.input_format)
        fn = pattern_edit(head, q, k, ed.EDGE_VARIANTS[v])
        assert eff[p, v] == pytest.approx(ref_effect(net, clean, pv[0], [(name, fn)]), abs=ATOL)
        assert weight[p] == pytest.approx(float(cached(net, clean, name)[head, q, k]), abs=1e-6)


def test_edge_full_sweep_matches_plain_hooks(tmp_path):
    from leela_interp.stages import ablations

    net_path = write_random_net(tmp_path / "t.pb.gz", seed=3, **TRANSFORMER)
    puzzles = write_fixture(tmp_path / "run" / "puzzles.h5")
    ablations.run(make_cfg(tmp_path / "run", net_path, "ablations.max_puzzles=1",
                           "ablations.method=zero", "ablations.edge.layer=1",
                           "ablations.edge.head=3", "ablations.edge.full_sweep=true",
                           "ablations.figures=false", *ALL_PUZZLES))
    net = load_network(net_path)
    with h5py.File(tmp_path / "run" / "ablations.h5", "r") as f:
        sweep = f["edge/sweep"][()]
        assert [d.label for d in f["edge/sweep"].dims] == ["puzzle", "query", "key"]
        assert f["edge/sweep"].attrs["sign"] == iv.SIGN
    # one row per puzzles.h5 row; only the first (max_puzzles=1) is computed
    assert sweep.shape == (len(puzzles), 64, 64)
    assert np.isfinite(sweep[0]).all() and np.isnan(sweep[1:]).all()
    clean, _, pv = puzzle_at(puzzles, 0)
    for p, q, k in pick(sweep):
        fn = pattern_edit(3, q, k, "edge")
        assert sweep[p, q, k] == pytest.approx(
            ref_effect(net, clean, pv[0], [("blocks.1.attn.hook_pattern", fn)]), abs=ATOL)


def test_piece_heads_match_plain_hooks(transformer_run):
    run_dir, net, puzzles = transformer_run
    with h5py.File(run_dir / "ablations.h5", "r") as f:
        g = f["piece_heads"]
        eff, pieces, keys = g["effect"][()], read_strings(g["piece"]), g["random_key"][()]
    assert {"knight", "rook"} <= set(pieces)  # the fixture has both
    assert np.isnan(eff[[i for i, x in enumerate(pieces) if not x]]).all()
    checked = pick(eff)
    for p, v in checked:
        clean, _, pv = puzzle_at(puzzles, p)
        _, third, source = tokens(clean, pv, net.config.input_format)
        piece = pieces[p]
        heads = PIECE_HEADS[piece] if v != 1 else \
            [x for name, hl in PIECE_HEADS.items() if name != piece for x in hl]
        key = keys[p] if v == 2 else third
        hooks = []
        for layer in {l for l, _ in heads}:
            hs = [h for l, h in heads if l == layer]

            def fn(t, hook, hs=hs, key=key):
                t = t.clone()
                for h in hs:
                    keep = t[0, h, source, key].clone()
                    t[0, h, :, key] = 0.0
                    t[0, h, source, key] = keep
                return t
            hooks.append((f"blocks.{layer}.attn.hook_pattern", fn))
        assert eff[p, v] == pytest.approx(ref_effect(net, clean, pv[0], hooks), abs=ATOL)


# --------------------------------------------------------------------------- (b) built net

L_STAR, H_STAR = 1, 2


def built_network(tmp_path: Path):
    """A 3-layer transformer in which only head (1, 2) moves information between squares.

    PE_MAP embedding, MLPs and LayerNorms are per square; every head but (1, 2) has its
    output-projection columns zeroed; head (1, 2) has zero queries and a constant smolgen bias
    that makes every query attend (weight ~1) to one key square K, so it copies K's content to
    every square.
    """
    path = write_random_net(tmp_path / "built.pb.gz", body="transformer", policy="attention",
                            embedding="PE_MAP", d_model=32, layers=3, heads=4, d_ff=48,
                            smolgen=True, seed=5)
    return load_network(path)


def wire_head(net, key_token: int) -> None:
    dh = net.config.d_model // net.config.n_heads
    with torch.no_grad():
        for layer, block in enumerate(net.blocks):
            for h in range(net.config.n_heads):
                if (layer, h) != (L_STAR, H_STAR):
                    block.attn.out.weight[:, h * dh:(h + 1) * dh] = 0.0
        attn = net.blocks[L_STAR].attn
        attn.q.weight[H_STAR * dh:(H_STAR + 1) * dh] = 0.0
        attn.q.bias[H_STAR * dh:(H_STAR + 1) * dh] = 0.0
        attn.out.weight[:, H_STAR * dh:(H_STAR + 1) * dh] *= 4.0
        gen = net.smolgen_w.in_features
        attn.smolgen.ln2.weight.zero_()
        attn.smolgen.ln2.bias.zero_()
        attn.smolgen.ln2.bias[H_STAR * gen] = 1.0  # head H_STAR's generator input = e_0
        bias = torch.zeros(64, 64)
        bias[:, key_token] = 20.0
        net.smolgen_w.weight[:, 0] = bias.flatten()


def test_piece_heads_of_a_chunk_without_a_long_enough_pv_are_all_nan(transformer_run):
    _, net, puzzles = transformer_run
    prep = iv.prepare(net, [iv.Puzzle.from_set(puzzles, i) for i in range(2)])
    result = ph.piece_head_ablation(prep, PIECE_HEADS, min_pv_length=99)
    assert result.effects.dtype == np.float32 and result.effects.shape == (2, 3)
    assert np.isnan(result.effects).all() and result.piece == ["", ""]
    assert result.random_key.tolist() == [-1, -1]


def test_mean_head_outputs_is_the_mean_over_every_added_row():
    mean = ab.MeanHeadOutputs()
    batches = [torch.arange(6.0).reshape(3, 2), torch.tensor([[10.0, -4.0]])]
    for z in batches:
        mean.add(z)
    assert mean.count == 4
    torch.testing.assert_close(mean.mean, torch.cat(batches).double().mean(0))


def test_built_network_one_head_moves_the_information(tmp_path):
    net = built_network(tmp_path)
    clean = chess.Board("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3")
    k_square = chess.H2
    corrupted = clean.copy()
    corrupted.remove_piece_at(k_square)  # same history fill: only square h2 differs
    K = square_to_token(k_square, clean.turn)
    wire_head(net, K)
    pattern = cached(net, clean, f"blocks.{L_STAR}.attn.hook_pattern")[H_STAR]
    assert float(pattern[:, K].min()) > 0.999
    # PV[0]: the legal move (not touching K) whose log-odds the corruption lowers most.
    with torch.no_grad():
        lc = net(net.encode([clean])).policy_logits[0]
        lx = net(net.encode([corrupted])).policy_logits[0]
    moves = [m for m in clean.legal_moves if k_square not in (m.from_square, m.to_square)]
    m0 = max(moves, key=lambda m: ref_log_odds(clean, lc, m, 1) - ref_log_odds(clean, lx, m, 1))
    b = clean.copy()
    b.push(m0)
    m1 = next(iter(b.legal_moves))
    b.push(m1)
    m2 = next(m for m in b.legal_moves if m.to_square not in (k_square, m0.to_square))
    prep = iv.prepare(net, [iv.Puzzle(clean, (m0, m1, m2), corrupted)])
    full = float(prep.clean_log_odds[0] - prep.corrupted_log_odds[0])
    assert full > 0.05

    heads = pt.head_patching(prep)[0]
    order = np.argsort(-heads, axis=None)
    assert np.unravel_index(order[0], heads.shape) == (L_STAR, H_STAR)
    assert heads[L_STAR, H_STAR] > 0.05
    others = np.delete(heads.flatten(), L_STAR * net.config.n_heads + H_STAR)
    assert np.abs(others).max() < 1e-6
    zero = ab.head_ablation(prep, "zero")[0]
    assert np.unravel_index(np.argmax(np.abs(zero)), zero.shape) == (L_STAR, H_STAR)
    assert np.abs(np.delete(zero.flatten(), L_STAR * net.config.n_heads + H_STAR)).max() < 1e-6

    resid = pt.residual_patching(prep, site="resid_post")[0]  # [layer, square]
    for layer in range(L_STAR):  # before the head acts: only the corrupted square matters
        assert resid[layer, K] == pytest.approx(full, abs=1e-4)
        assert np.abs(np.delete(resid[layer], K)).max() < 1e-6
    cats = iv.category_max(resid[None], prep.categories)[0]
    corrupted_col = iv.CATEGORIES.index("corrupted")
    assert prep.categories[0, K] == corrupted_col
    assert cats[0, corrupted_col] == pytest.approx(full, abs=1e-4)
    assert np.nanmax(np.abs(np.delete(cats[0], corrupted_col))) < 1e-6
    # After the head has copied K everywhere, K's own square no longer carries it all.
    assert np.abs(np.delete(resid[L_STAR], K)).max() > 1e-3


# --------------------------------------------------------------------------- (c) stages


def test_transformer_stage_outputs(transformer_run):
    run_dir, net, puzzles = transformer_run
    n, L, H = len(puzzles), net.config.n_layers, net.config.n_heads
    assert is_complete(run_dir / "patching.h5") and is_complete(run_dir / "ablations.h5")
    with h5py.File(run_dir / "patching.h5", "r") as f:
        assert f.attrs["network_sha256"] == net.sha256
        assert f.attrs["sign"] == iv.SIGN and f.attrs["metric"] == iv.METRIC
        assert f["done"][()].all() and f["ok"][()].all()
        for site in ("resid_post", "resid_pre", "resid_mid"):
            d = f[f"residual/{site}/effect"]
            assert d.shape == (n, L, 64)
            assert [dim.label for dim in d.dims] == ["puzzle", "layer", "square"]
            assert d.attrs["sign"] == iv.SIGN
            c = f[f"residual/{site}/category_max"]
            assert [dim.label for dim in c.dims] == ["puzzle", "layer", "category"]
            assert list(c.attrs["categories"]) == list(iv.COLUMNS)
            assert f[f"residual/{site}/summary/all/category_max_mean"].shape == (L, 8)
        # resid_post at layer l is resid_pre at layer l + 1 (post-LN blocks)
        post, pre = f["residual/resid_post/effect"][()], f["residual/resid_pre/effect"][()]
        np.testing.assert_allclose(post[:, :-1], pre[:, 1:], atol=1e-4)
        assert [dim.label for dim in f["heads/effect"].dims] == ["puzzle", "layer", "head"]
        assert f["heads/effect"].shape == (n, L, H)
        assert read_strings(f["puzzle_id"]) == puzzles.ids
        chunk = [iv.Puzzle.from_set(puzzles, i) for i in range(n)]
        deep = iv.deep_target_tokens(chunk, [transform_for(p.clean, net.config.input_format)
                                             for p in chunk])
        for site in ("resid_post", "resid_pre", "resid_mid"):  # derived arrays agree
            np.testing.assert_array_equal(
                f[f"residual/{site}/category_max"][()],
                iv.category_max(f[f"residual/{site}/effect"][()], f["square_category"][()],
                                deep))
        corruption = f["corruption_effect"][()]
    for p in range(n):
        clean, corrupted, pv = puzzle_at(puzzles, p)
        with torch.no_grad():
            lc = net(net.encode([clean])).policy_logits[0]
            lx = net(net.encode([corrupted])).policy_logits[0]
        fmt = net.config.input_format
        assert corruption[p] == pytest.approx(
            ref_log_odds(clean, lc, pv[0], fmt) - ref_log_odds(clean, lx, pv[0], fmt), abs=ATOL)
    with h5py.File(run_dir / "ablations.h5", "r") as f:
        for m in ("zero", "mean", "resample"):
            assert f[f"heads/{m}/effect"].attrs["sign"] == iv.SIGN
            assert np.isfinite(f[f"heads/{m}/effect"][()]).all()
        assert f["edge/effect"].shape == (n, 4)
        assert f["edge"].attrs["source_sha256"] == sha256_file(run_dir / "patching.h5")
        assert "different_targets/effect_mean" in f["edge"].attrs["chosen_by"]
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"patching_resid_post.png", "patching_resid_pre.png", "patching_resid_mid.png",
            "patching_heads.png", "ablations_heads_zero.png", "ablations_heads_mean.png",
            "ablations_heads_resample.png", "ablations_edge.png",
            "ablations_piece_heads.png"} <= figures


def test_cnn_stages_say_there_are_no_heads(cnn_run):
    run_dir, net, puzzles = cnn_run
    with h5py.File(run_dir / "patching.h5", "r") as f:
        assert "heads" not in f and "no attention heads" in f.attrs["heads"]
        assert f["residual/resid_post/effect"].shape == (len(puzzles), 3, 64)
        assert np.isfinite(f["residual/resid_post/effect"][()]).all()
    with h5py.File(run_dir / "ablations.h5", "r") as f:
        assert "no attention heads" in f.attrs["note"] and "heads" not in f
    assert (run_dir / "figures" / "patching_resid_post.png").exists()
    assert not (run_dir / "figures" / "patching_heads.png").exists()


def test_stages_skip_when_complete_and_resume_by_chunks(tmp_path, monkeypatch):
    from leela_interp.stages import patching

    net_path = write_random_net(tmp_path / "c.pb.gz", seed=4, **CNN)
    write_fixture(tmp_path / "run" / "puzzles.h5")
    cfg = make_cfg(tmp_path / "run", net_path, "patching.chunk_size=2", "patching.figures=false",
                   *ALL_PUZZLES)
    calls = []
    real = pt.residual_patching

    def flaky(prep, **kw):
        calls.append(prep.puzzles[0].index)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(prep, **kw)

    monkeypatch.setattr(pt, "residual_patching", flaky)
    with pytest.raises(RuntimeError):
        patching.run(cfg)
    assert not (tmp_path / "run" / "patching.h5").exists()
    patching.run(cfg)  # resumes: chunk 0 is not redone
    assert calls == [0, 2, 2, 4]
    patching.run(cfg)  # complete for this config: nothing runs
    assert calls == [0, 2, 2, 4]
    patching.run(make_cfg(tmp_path / "run", net_path, "patching.chunk_size=2",
                          "patching.figures=false", "force=true", *ALL_PUZZLES))
    assert calls == [0, 2, 2, 4, 0, 2, 4]


# --------------------------------------------------------------------------- units


def test_log_odds_is_the_legal_softmax_log_odds():
    board = chess.Board()
    logits = torch.randn(1, 1858)
    move = chess.Move.from_uci("e2e4")
    from leela_interp.board.policy import legal_mask, policy_index

    got = iv.log_odds(logits, legal_mask([board]), torch.tensor([policy_index(board, move)]))
    assert float(got[0]) == pytest.approx(ref_log_odds(board, logits[0], move, 1), abs=1e-9)


def test_square_categories_black_to_move():
    board = chess.Board("6k1/5ppp/8/8/8/8/5PPP/R5K1 b - - 0 1")
    pv = tuple(chess.Move.from_uci(m) for m in ("g8f8", "a1a8", "f8e7", "a8a7", "e7d6"))
    corrupted = board.copy()
    corrupted.remove_piece_at(chess.H7)
    cats, overlap = iv.square_categories(iv.Puzzle(board, pv, corrupted))
    tok = lambda sq: square_to_token(sq, chess.BLACK)  # noqa: E731
    assert cats[tok(chess.F8)] == iv.CATEGORIES.index("first_target")
    assert cats[tok(chess.E7)] == iv.CATEGORIES.index("third_target")
    assert cats[tok(chess.A7)] == cats[tok(chess.D6)] == iv.CATEGORIES.index("later_targets")
    assert cats[tok(chess.A8)] == iv.CATEGORIES.index("other")  # PV[1]'s target
    assert cats[tok(chess.H7)] == iv.CATEGORIES.index("corrupted")
    assert tok(chess.F8) == 5 and not overlap
    corrupted.remove_piece_at(chess.F7)
    corrupted.set_piece_at(chess.E7, chess.Piece(chess.PAWN, chess.BLACK))
    assert iv.square_categories(iv.Puzzle(board, pv, corrupted))[1]  # 3rd target corrupted


def test_category_max_and_mean_err():
    effects = np.arange(2 * 1 * 64, dtype=float).reshape(2, 1, 64)
    cats = np.full((2, 64), 4, np.int8)
    cats[:, 3] = 0
    cats[0, 5] = 2
    out = iv.category_max(effects, cats)
    assert out[0, 0, 0] == 3 and out[0, 0, 2] == 5 and np.isnan(out[1, 0, 2])
    assert out[1, 0, 4] == 127
    mean, err, n = iv.mean_and_err(np.array([1.0, 3.0, np.nan]))
    assert mean == 2 and n == 2 and err == pytest.approx(2 * np.sqrt(2) / np.sqrt(2))


def test_head_choice_is_checked_against_the_net(tmp_path):
    net = load_network(write_random_net(tmp_path / "t.pb.gz", seed=3, **TRANSFORMER))
    assert iv.resolve_head(net, 2, 3) == (2, 3)
    for layer, head in ((12, 12), (3, 0), (0, 4), (-1, 0)):  # no clamping to the last head
        with pytest.raises(ConfigError, match=r"outside this net: layers 0\.\.2, heads 0\.\.3"):
            iv.resolve_head(net, layer, head)
    with pytest.raises(ConfigError, match="unknown piece type 'queen'"):
        ph.check_head_lists(net, {"queen": [[0, 0]]})
    with pytest.raises(ConfigError, match="outside this net"):
        ph.check_head_lists(net, {"rook": [[0, 9]]})
    cnn = load_network(write_random_net(tmp_path / "c.pb.gz", seed=4, **CNN))
    with pytest.raises(ConfigError, match="no attention heads"):
        iv.resolve_head(cnn, 0, 0)


def test_edge_head_errors_name_what_to_run_or_set(tmp_path):
    from leela_interp.stages import ablations, patching

    net_path = write_random_net(tmp_path / "t.pb.gz", seed=3, **TRANSFORMER)
    run = tmp_path / "run"
    write_fixture(run / "puzzles.h5")
    quick = ("ablations.method=zero", "ablations.figures=false", "patching.figures=false",
             "patching.max_puzzles=1", *ALL_PUZZLES)
    with pytest.raises(ConfigError, match=r"ablations\.edge: \(layer 12, head 12\) is outside "
                                          r"this net: layers 0\.\.2, heads 0\.\.3"):
        ablations.run(make_cfg(run, net_path, "ablations.edge.layer=12",
                               "ablations.edge.head=12", *quick))
    with pytest.raises(ConfigError, match="give both"):
        ablations.run(make_cfg(run, net_path, "ablations.edge.layer=1", *quick))
    with pytest.raises(ConfigError, match=r"patching\.h5.*missing.*stage=patching.*"
                                          r"ablations\.edge\.layer=L"):
        ablations.run(make_cfg(run, net_path, *quick))
    patching.run(make_cfg(run, net_path, "patching.heads=false", *quick))
    with pytest.raises(ConfigError, match=r"no heads/summary/different_targets/effect_mean.*"
                                          r"patching\.heads=true"):
        ablations.run(make_cfg(run, net_path, *quick))
    other = write_random_net(tmp_path / "other.pb.gz", seed=9, **TRANSFORMER)
    with pytest.raises(ConfigError, match="computed with another network"):
        ablations.run(make_cfg(run, other, *quick))


# --------------------------------------------------------------------------- the paper's rules


def test_overlap_rule_paper_looks_at_every_follow_up_target():
    """The paper skips a puzzle when its corruption touches the target of PV[2] *or any later
    move*, or the 1st-move target recurs among them; third_only looks at PV[2] alone."""
    board = chess.Board("6k1/5ppp/8/8/8/8/5PPP/R5K1 b - - 0 1")
    pv = tuple(chess.Move.from_uci(m) for m in ("g8f8", "a1a8", "f8e7", "a8a7", "e7d6"))
    later_corrupted = board.copy()
    later_corrupted.set_piece_at(chess.A7, chess.Piece(chess.PAWN, chess.BLACK))  # PV[3]'s target
    puzzle = iv.Puzzle(board, pv, later_corrupted)
    assert iv.square_categories(puzzle, overlap_rule="paper")[1]
    assert not iv.square_categories(puzzle, overlap_rule="third_only")[1]
    # PV[4] returns to the 1st move's target f8 (the corruption, h7, touches no target)
    back = pv[:4] + (chess.Move.from_uci("e7f8"),)
    elsewhere = board.copy()
    elsewhere.remove_piece_at(chess.H7)
    puzzle = iv.Puzzle(board, back, elsewhere)
    assert iv.square_categories(puzzle, overlap_rule="paper")[1]
    assert not iv.square_categories(puzzle, overlap_rule="third_only")[1]
    assert not iv.square_categories(iv.Puzzle(board, pv, elsewhere), overlap_rule="paper")[1]
    with pytest.raises(ConfigError, match="unknown overlap rule 'both'.*paper.*third_only"):
        iv.square_categories(puzzle, overlap_rule="both")


def test_follow_up_targets_is_the_max_over_pv2_and_later_targets():
    board = chess.Board("6k1/5ppp/8/8/8/8/5PPP/R5K1 b - - 0 1")
    pv = tuple(chess.Move.from_uci(m) for m in ("g8f8", "a1a8", "f8e7", "a8a7", "e7d6"))
    corrupted = board.copy()
    corrupted.remove_piece_at(chess.H7)
    cats, _ = iv.square_categories(iv.Puzzle(board, pv, corrupted))
    tok = lambda sq: square_to_token(sq, chess.BLACK)  # noqa: E731
    effects = np.zeros((1, 1, 64))
    effects[0, 0, tok(chess.E7)] = 1.0   # PV[2]'s target
    effects[0, 0, tok(chess.D6)] = 3.0   # PV[4]'s target
    effects[0, 0, tok(chess.F8)] = 9.0   # PV[0]'s target: not a follow-up square
    out = iv.category_max(effects, cats[None])[0, 0]
    col = {name: out[i] for i, name in enumerate(iv.COLUMNS)}
    assert col["third_target"] == 1.0 and col["later_targets"] == 3.0
    assert col["follow_up_targets"] == 3.0 and col["first_target"] == 9.0
    effects[0, 0, tok(chess.D6)] = -2.0
    assert iv.category_max(effects, cats[None])[0, 0, iv.COLUMNS.index("follow_up_targets")] == 1


def test_fifth_and_seventh_target_columns_read_pv4_and_pv6_targets():
    board = chess.Board("6k1/5ppp/8/8/8/8/5PPP/R5K1 b - - 0 1")
    line = "g8f8 a1a8 f8e7 a8a7 e7d6 a7a6 d6c5"
    pv = tuple(chess.Move.from_uci(m) for m in line.split())
    tok = lambda sq: square_to_token(sq, chess.BLACK)  # noqa: E731
    effects = np.zeros((1, 1, 64))
    for sq, value in ((chess.E7, 1.0), (chess.D6, 3.0), (chess.C5, 5.0), (chess.A6, 7.0)):
        effects[0, 0, tok(sq)] = value  # PV[2], PV[4], PV[6], PV[5] targets

    def columns(moves):
        puzzle = iv.Puzzle(board, moves)
        cats, _ = iv.square_categories(puzzle)
        deep = iv.deep_target_tokens([puzzle], [0])
        out = iv.category_max(effects, cats[None], deep)[0, 0]
        return {name: out[i] for i, name in enumerate(iv.COLUMNS)}, deep[0]

    col, deep = columns(pv)
    assert list(deep) == [tok(chess.D6), tok(chess.C5)]
    assert col["fifth_target"] == 3.0 and col["seventh_target"] == 5.0
    assert col["later_targets"] == 7.0 and col["third_target"] == 1.0
    col, deep = columns(pv[:5])  # no 7th move
    assert col["fifth_target"] == 3.0 and np.isnan(col["seventh_target"]) and deep[1] == -1
    back = pv[:6] + (chess.Move.from_uci("d6e7"),)  # the 7th move returns to PV[2]'s target
    col, _ = columns(back)
    assert np.isnan(col["seventh_target"]) and col["fifth_target"] == 3.0
    cats, _ = iv.square_categories(iv.Puzzle(board, pv))
    without = iv.category_max(effects, cats[None])[0, 0]  # no tokens given: NaN columns
    assert np.isnan(without[iv.COLUMNS.index("fifth_target"):]).all()


def test_piece_rule_initial_leaves_out_a_piece_that_arrives_with_pv0():
    """The paper reads the piece on PV[2]'s source square before PV[0]: a piece that gets
    there with PV[0] (here a knight, and a pawn promoting to one) is not in its subset."""
    arrives = iv.Puzzle(chess.Board("4k3/8/8/8/8/8/8/4K1N1 w - - 0 1"),
                        tuple(chess.Move.from_uci(m) for m in ("g1f3", "e8d8", "f3e5")))
    assert ph.moving_piece(arrives, "initial") == ""
    assert ph.moving_piece(arrives, "moved") == "knight"
    promotes = iv.Puzzle(chess.Board("4k3/P7/8/8/8/8/8/4K3 w - - 0 1"),
                         tuple(chess.Move.from_uci(m) for m in ("a7a8n", "e8d8", "a8b6")))
    assert (ph.moving_piece(promotes, "initial"), ph.moving_piece(promotes, "moved")) == \
        ("", "knight")
    stays = iv.Puzzle(chess.Board("4k3/8/8/8/8/8/8/2B1K3 w - - 0 1"),
                      tuple(chess.Move.from_uci(m) for m in ("e1e2", "e8d8", "c1g5")))
    assert ph.moving_piece(stays, "initial") == ph.moving_piece(stays, "moved") == "bishop"
    with pytest.raises(ConfigError, match="unknown piece rule 'after'"):
        ph.moving_piece(stays, "after")


def test_random_key_any_draws_every_square_exclude_never_the_third_move():
    """The paper's control draws any of the 64 squares (the 3rd move's own squares too)."""
    third, source = 20, 5
    anywhere = {ph.random_key_token("any", 0, i, third, source) for i in range(2000)}
    assert anywhere == set(range(64))
    excluded = {ph.random_key_token("exclude_third_move", 0, i, third, source)
                for i in range(2000)}
    assert excluded == set(range(64)) - {third, source}
    assert ph.random_key_token("any", 3, 7, third, source) == \
        ph.random_key_token("any", 3, 7, third, source)  # seeded by (seed, puzzle index)
    with pytest.raises(ConfigError, match="unknown random_key rule"):
        ph.random_key_token("uniform", 0, 0, third, source)


def test_ablations_default_to_the_puzzles_with_a_corruption(tmp_path):
    """The paper ablated its puzzles with a corrupted board; ablations.puzzles=all adds the
    others. Either way ablations.h5 has one row per puzzles.h5 row."""
    from leela_interp.stages import ablations

    net_path = write_random_net(tmp_path / "t.pb.gz", seed=3, **TRANSFORMER)
    puzzles = write_fixture(tmp_path / "run" / "puzzles.h5")
    puzzles.corrupted_fens[2] = ""
    with h5py.File(tmp_path / "run" / "puzzles.h5", "w") as f:
        puzzles.write(f.require_group("puzzles"))
    quick = ("ablations.method=zero", "ablations.edge.layer=1", "ablations.edge.head=0",
             "ablations.figures=false", *ALL_PUZZLES)
    ablations.run(make_cfg(tmp_path / "run", net_path, *quick))
    with h5py.File(tmp_path / "run" / "ablations.h5", "r") as f:
        analysed = f["analysed"][()]
        zero = f["heads/zero/effect"][()]
        edge = f["edge/effect"][()]
        funnel = dict(zip(read_strings(f["funnel/step"]), f["funnel/count"][()]))
        n = f["heads/zero/summary/all/effect_n"][()]
    assert analysed.tolist() == [True, True, False, True, True, True]
    assert np.isnan(zero[2]).all() and np.isnan(edge[2]).all()
    assert np.isfinite(zero[analysed]).all()
    assert funnel["puzzles"] == 6 and funnel["usable_corruption"] == 5 == funnel["analysed"]
    assert (n == 5).all()
    ablations.run(make_cfg(tmp_path / "run", net_path, *quick, "ablations.puzzles=all"))
    with h5py.File(tmp_path / "run" / "ablations.h5", "r") as f:
        assert f["analysed"][()].all() and np.isfinite(f["heads/zero/effect"][2]).all()
        assert f["funnel/rule"].asstr()[2] == "not required (ablations.puzzles=all)"
    with pytest.raises(ConfigError, match=r"ablations\.puzzles='some'.*corrupted.*all"):
        ablations.run(make_cfg(tmp_path / "run", net_path, *quick, "ablations.puzzles=some"))


def test_puzzles_whose_pv0_is_not_the_top_move_are_left_out_and_counted(tmp_path):
    """Effects measure PV[0]'s log-odds; by default only puzzles on which PV[0] is the net's
    own top legal move are analysed (patching.require_pv0_top=false analyses every one)."""
    from leela_interp.stages import patching

    net_path = write_random_net(tmp_path / "t.pb.gz", seed=3, **TRANSFORMER)
    net = load_network(net_path)
    puzzles = write_fixture(tmp_path / "run" / "puzzles.h5")
    # Puzzle 0's PV[0] becomes the net's own top move (PV[1:] any legal continuation).
    board = puzzles.clean_board(0)
    with torch.no_grad():
        logits = net(net.encode([board])).policy_logits[0]
    moves, index = legal_moves_and_indices(board, transform_for(board, 1))
    pv = [moves[int(torch.argmax(logits[torch.as_tensor(index)]))]]
    for _ in range(2):
        board.push(pv[-1])
        pv.append(next(iter(board.legal_moves)))
    puzzles.moves[0] = puzzles.moves[0][:1] + [m.uci() for m in pv]
    with h5py.File(tmp_path / "run" / "puzzles.h5", "w") as f:
        puzzles.write(f.require_group("puzzles"))
    top = []
    for i in range(len(puzzles)):  # the net's own top legal move, computed here
        b, first = puzzles.clean_board(i), chess.Move.from_uci(puzzles.pv(i)[0])
        with torch.no_grad():
            x = net(net.encode([b])).policy_logits[0]
        ms, idx = legal_moves_and_indices(b, transform_for(b, 1))
        top.append(ms[int(torch.argmax(x[torch.as_tensor(idx)]))] == first)
    top = np.array(top)
    assert top[0] and not top.all()

    quick = ("patching.figures=false", "patching.heads=false")
    patching.run(make_cfg(tmp_path / "run", net_path, *quick))
    with h5py.File(tmp_path / "run" / "patching.h5", "r") as f:
        assert f["clean_top_is_pv0"][()].tolist() == top.tolist()
        assert f["analysed"][()].tolist() == top.tolist()
        eff = f["residual/resid_post/effect"][()]
        funnel = dict(zip(read_strings(f["funnel/step"]), f["funnel/count"][()]))
        n = f["residual/resid_post/summary/all/category_max_n"][()]
        no_overlap = int((top & ~f["overlap"][()]).sum())
    assert np.isnan(eff[~top]).all() and np.isfinite(eff[top]).all()
    assert funnel["usable_corruption"] == 6 and funnel["pv0_is_top"] == top.sum()
    assert funnel["no_overlap"] == no_overlap == n[:, iv.COLUMNS.index("first_target")].max()
    patching.run(make_cfg(tmp_path / "run", net_path, *quick, "patching.require_pv0_top=false"))
    with h5py.File(tmp_path / "run" / "patching.h5", "r") as f:
        assert f["analysed"][()].all()
        assert np.isfinite(f["residual/resid_post/effect"][()]).all()
        funnel = dict(zip(read_strings(f["funnel/step"]), f["funnel/count"][()]))
    assert funnel["pv0_is_top"] == 6
