"""The researcher's views on a real run folder: every value on the square python-chess names."""

from __future__ import annotations

import shutil

import chess
import h5py
import numpy as np
import pytest
import torch
from test_board_figures import boards, classes, square_fills

from leela_interp.board.encoding import square_to_token, transform_for
from leela_interp.errors import ConfigError
from leela_interp.outputs import board_figures as bf
from leela_interp.outputs import views
from leela_interp.outputs.results import read_strings


def puzzles(run) -> dict:
    with h5py.File(run / "puzzles.h5") as f:
        g = f["puzzles"]
        return {"id": read_strings(g["id"]), "white": g["white_to_move"][()],
                "transform": g["transform"][()], "squares": g["corruption_squares_chess"][()],
                "prob": g["strong_pv_prob"][:, 0], "moves": read_strings(g["moves"])}


def analysed(run) -> np.ndarray:
    with h5py.File(run / "patching.h5") as f:
        return f["analysed"][()]


def one_of_each_side(run) -> list[int]:
    """An analysed white-to-move and black-to-move puzzle, both without a transform."""
    p, ok = puzzles(run), analysed(run)
    rows = [next(i for i in range(len(ok)) if ok[i] and p["white"][i] == side and
                 p["transform"][i] == 0) for side in (True, False)]
    return rows


def test_a_patching_effect_planted_at_a_token_lands_on_its_square(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    p = puzzles(run)
    for row in one_of_each_side(run):
        for token in (0, 12, 63):
            with h5py.File(run / "patching.h5", "a") as f:
                effect = np.full(f["residual/resid_post/effect"].shape[1:], np.nan)
                effect[1, token] = 2.0
                f["residual/resid_post/effect"][row] = effect
            rank, file = divmod(token, 8)  # black's tokens have their ranks flipped
            square = chess.square(file, rank if p["white"][row] else 7 - rank)
            svg = views.patching_board(run, p["id"][row], 1)
            assert square_fills(svg) == {chess.square_name(square): bf.value_color(1, 1)}
            assert square_fills(views.patching_board(run, p["id"][row], 0)) == {}


def test_the_effect_strip_shows_every_layer_of_the_file_on_one_scale(small_run):
    p = puzzles(small_run)
    row = int(np.flatnonzero(analysed(small_run))[0])
    with h5py.File(small_run / "patching.h5") as f:
        effect = f["residual/resid_post/effect"][row]  # [layer, token]
    vmax = np.nanmax(np.abs(effect))
    svg = views.patching_strip(small_run, p["id"][row])
    assert len(boards(svg)) == effect.shape[0] == 2  # one board per layer
    view = views.PuzzleView.load(small_run, p["id"][row])
    for layer, board in enumerate(boards(svg)):
        assert square_fills(board) == {chess.square_name(sq): bf.value_color(
            effect[layer, square_to_token(sq, view.clean.turn, view.transform)], vmax)
            for sq in chess.SQUARES}, layer
    assert classes(svg, "marked") == [f"marked {chess.square_name(s)}"
                                      for s in sorted(view.corruption_squares)] * 2


def test_puzzle_card_marks_the_corruption_and_gives_p_pv0(small_run):
    p = puzzles(small_run)
    row = next(i for i, sq in enumerate(p["squares"]) if (sq >= 0).any())
    svg = views.puzzle_card(small_run, p["id"][row])
    names = sorted(chess.square_name(int(s)) for s in p["squares"][row] if s >= 0)
    assert sorted(classes(svg, "marked")) == sorted([f"marked {n}" for n in names] * 2)
    assert f"P(PV[0]) = {p['prob'][row]:.3f}" in svg
    assert svg.count('class="arrow-number"') == 3 + 1  # PV[0..2] clean, PV[0] corrupted
    with pytest.raises(ConfigError, match="puzzle 'nope' is not in .*puzzles.h5"):
        views.puzzle_card(small_run, "nope")


def test_attention_row_from_the_first_move_target(small_run):
    p = puzzles(small_run)
    pid = p["id"][one_of_each_side(small_run)[1]]  # black to move
    view = views.PuzzleView.load(small_run, pid)
    net = views.network(small_run)  # patching.h5's network, found by its recorded path
    with torch.no_grad():
        _, cache = net.run_with_cache(net.encode([view.clean]), names="blocks.1.attn.hook_pattern")
    transform = transform_for(view.clean, net.config.input_format)
    query = chess.Move.from_uci(view.pv[0]).to_square
    row = cache["blocks.1.attn.hook_pattern"][0, 2, square_to_token(query, False, transform)]
    svg = views.attention_board(small_run, pid, 1, 2, net=net)
    vmax = float(row.max())
    assert square_fills(svg) == {
        chess.square_name(sq): bf.value_color(float(row[square_to_token(sq, False, transform)]),
                                              vmax) for sq in chess.SQUARES}
    assert classes(svg, "marked") == [f"marked {chess.square_name(query)}"]
    assert "<svg" in views.attention_pattern(small_run, pid, 1, 2, net=net)
    with pytest.raises(ConfigError, match="head 4: the net has heads 0..3"):
        views.attention_board(small_run, pid, 1, 4, net=net)


def test_probe_distribution_refits_the_stages_probe(small_run):
    p = puzzles(small_run)
    with h5py.File(small_run / "probes.h5") as f:
        targets, layers = read_strings(f["target"]), list(f["layer"][()])
        n_correct = f["n_correct"][0, 0, 0, targets.index("target"), :, 0]  # model, all, bilinear
        n_test = f["n_test"][0, targets.index("target"), 0]
    for li, layer in enumerate(layers):
        d = views.probe_distribution(small_run, p["id"][0], layer)
        assert (d.n_correct, d.n_test) == (n_correct[li], n_test), layer
        assert d.probabilities.shape == (64,) and abs(d.probabilities.sum() - 1) < 1e-9
    svg = views.probe_board(small_run, p["id"][0], 1)
    true = chess.square_name(views.PuzzleView.load(small_run, p["id"][0]).tokens(
        np.arange(64)).tolist().index(d.label))
    assert classes(svg, "marked") == [f"marked {true}"]
    with pytest.raises(ConfigError, match="probe target 'source': choose one of"):
        views.probe_distribution(small_run, p["id"][0], 1, target="source")


def test_head_heatmap_and_drilldown(small_run):
    with h5py.File(small_run / "patching.h5") as f:
        mean = f["heads/summary/all/effect_mean"][()]
    svg = views.head_heatmap(small_run)
    for m in mean[np.isfinite(mean)].ravel():  # matplotlib keeps each text in a comment
        assert f"<!-- {m:.2f}" in svg.replace("<!-- −", "<!-- -")
    assert views.top_head(small_run) == tuple(np.unravel_index(np.nanargmax(mean), mean.shape))
    with pytest.raises(ConfigError, match="choose method from patching, zero"):
        views.head_heatmap(small_run, "nope")
    pid = puzzles(small_run)["id"][0]
    panels = views.drilldown(small_run, pid)
    assert [(x.name, x.svg is not None) for x in panels] == \
        [("card", True), ("strip", True), ("attention", True)]


def test_drilldown_says_why_a_picture_is_missing(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "patching.h5").unlink()
    panels = views.drilldown(run, puzzles(run)["id"][0])
    assert [(x.name, x.svg is not None, x.note) for x in panels] == [
        ("card", True, ""), ("strip", False, "no patching.h5 in this run folder"),
        ("attention", False, "no patching.h5 in this run folder")]
