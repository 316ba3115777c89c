"""The patching and ablations summaries against a hand computation from a real run's files.

The run is the ``tiny_run`` fixture (``tests/tiny_run.py``: every stage on 24 real puzzles with
random nets). Every ``summary/{subset}/{name}_mean|_err2sigma|_n`` is recomputed here with
:mod:`statistics` from the per-puzzle datasets of the same file, over masks worked out from
``puzzles.h5`` alone: which rows are analysed (the first ``max_puzzles`` rows with a usable
corrupted board), ``different_targets``, and (residual category means only) the paper's overlap
rule applied to ``puzzles.h5``'s token squares. The tests only read files, so they hold however
the stages write them.
"""

from __future__ import annotations

import math
import statistics

import h5py
import numpy as np
import pytest

from tiny_run import ABLATIONS_MAX, METHODS, N_PUZZLES, PATCHING_MAX

from leela_interp.outputs.results import read_strings
from leela_interp.puzzles.puzzle_set import PuzzleSet

CATEGORIES = ("first_target", "third_target", "later_targets", "corrupted", "other",
              "follow_up_targets")
"""``category_names`` of ``patching.h5``, as docs/interventions.md lists them."""


@pytest.fixture(scope="module")
def hand(tiny_run) -> dict[str, np.ndarray]:
    """Per-puzzle masks from ``puzzles.h5`` alone: ``different_targets``, ``usable`` (a
    corrupted board with the same side to move; the random nets' input format 1 has no
    canonical transforms), ``overlap`` under the paper's rule, and ``later`` (the
    ``later_targets`` category is not empty: a PV[3:] target other than PV[2]'s)."""
    path = tiny_run / "puzzles.h5"
    puzzles = PuzzleSet.load(path)
    with h5py.File(path, "r") as f:
        g = f["puzzles"]
        targets, length = g["pv_targets"][()], g["pv_length"][()]
        changed = g["corruption_squares"][()]
        assert (g["transform"][()] == 0).all()
    overlap, later, usable = [], [], []
    for i in range(len(puzzles)):
        t = [int(x) for x in targets[i, :length[i]]]
        follow_up = set(t[2:])
        corrupted = {int(s) for s in changed[i] if s >= 0}
        overlap.append(bool(corrupted & ({t[0]} | follow_up)) or t[0] in follow_up)
        later.append(any(x != t[2] for x in t[3:]))
        clean, corrupted_board = puzzles.pair(i)
        usable.append(corrupted_board is not None and corrupted_board.turn == clean.turn)
    return {"different_targets": np.asarray(puzzles.different_targets, bool),
            "usable": np.array(usable), "overlap": np.array(overlap), "later": np.array(later)}


def subsets(hand) -> dict[str, np.ndarray]:
    dt = hand["different_targets"]
    return {"all": np.ones_like(dt), "different_targets": dt, "same_targets": ~dt}


def analysed(hand, max_puzzles: int) -> np.ndarray:
    return (np.arange(N_PUZZLES) < max_puzzles) & hand["usable"]


def hand_summary(values: np.ndarray, keep: np.ndarray):
    """Per cell over the rows ``keep``, NaNs left out: the mean, ``2 * stdev / sqrt(n)``
    (sample standard deviation) and n; NaN mean with no value, NaN error with fewer than 2."""
    rows = np.asarray(values, np.float64)[keep]
    cells = rows.reshape(len(rows), -1).T
    mean, err, n = np.full(len(cells), np.nan), np.full(len(cells), np.nan), np.zeros(len(cells))
    for c, column in enumerate(cells):
        v = [float(x) for x in column if math.isfinite(x)]
        n[c] = len(v)
        if v:
            mean[c] = statistics.fmean(v)
        if len(v) > 1:
            err[c] = 2 * statistics.stdev(v) / math.sqrt(len(v))
    shape = values.shape[1:]
    return mean.reshape(shape), err.reshape(shape), n.reshape(shape)


def assert_summaries(group: h5py.Group, name: str, values: np.ndarray, keep: np.ndarray,
                     hand) -> None:
    """``group/summary/{subset}/{name}_*`` equal :func:`hand_summary` over ``keep & subset``
    for each of the three subsets, and there are no others."""
    assert sorted(group["summary"]) == sorted(subsets(hand)), group.name
    for subset, mask in subsets(hand).items():
        g = group[f"summary/{subset}"]
        mean, err, n = hand_summary(values, keep & mask)
        where = f"{group.name}/summary/{subset}/{name}"
        np.testing.assert_allclose(g[f"{name}_mean"][()], mean, rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=where)
        np.testing.assert_allclose(g[f"{name}_err2sigma"][()], err, rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=where)
        np.testing.assert_array_equal(g[f"{name}_n"][()], n, err_msg=where)


def test_analysed_and_overlap_are_the_documented_masks_and_cover_every_case(tiny_run, hand):
    with h5py.File(tiny_run / "patching.h5", "r") as f:
        assert f.attrs["overlap_rule"] == "paper"
        assert f["analysed"][()].tolist() == analysed(hand, PATCHING_MAX).tolist()
        overlap = f["overlap"][()]
        assert read_strings(f["category_names"]) == list(CATEGORIES)
    with h5py.File(tiny_run / "ablations.h5", "r") as f:
        assert f["analysed"][()].tolist() == analysed(hand, ABLATIONS_MAX).tolist()
    considered = np.arange(N_PUZZLES) < PATCHING_MAX
    assert overlap[considered].tolist() == hand["overlap"][considered].tolist()
    # The run exercises every mask: in each subset, analysed puzzles with and without
    # overlap, and rows max_puzzles leaves out; some PVs of 3 plies and some of more; an
    # overlap from the PV alone (no corrupted square involved).
    for max_puzzles in (PATCHING_MAX, ABLATIONS_MAX):
        rows = analysed(hand, max_puzzles)
        for subset in ("different_targets", "same_targets"):
            mask = subsets(hand)[subset]
            assert (rows & mask & hand["overlap"]).any(), subset
            assert (rows & mask & ~hand["overlap"]).sum() >= 2, subset
            assert (~rows & mask).any(), subset
    kept = analysed(hand, PATCHING_MAX) & ~hand["overlap"]
    assert (kept & hand["later"]).any() and (kept & ~hand["later"]).any()


def test_residual_category_means_are_over_analysed_puzzles_without_overlap(tiny_run, hand):
    keep = analysed(hand, PATCHING_MAX) & ~hand["overlap"]
    with h5py.File(tiny_run / "patching.h5", "r") as f:
        g = f["residual/resid_post"]
        assert_summaries(g, "category_max", g["category_max"][()], keep, hand)
        for subset, mask in subsets(hand).items():  # n per category, from the PVs alone
            n = g[f"summary/{subset}/category_max_n"][()]
            for c, name in enumerate(CATEGORIES):
                expected = (keep & mask & hand["later"]).sum() if name == "later_targets" \
                    else (keep & mask).sum()
                assert (n[:, c] == expected).all(), (subset, name, n[:, c], expected)


def test_head_and_ablation_means_are_over_every_analysed_puzzle(tiny_run, hand):
    rows = analysed(hand, PATCHING_MAX)  # overlap puzzles included
    with h5py.File(tiny_run / "patching.h5", "r") as f:
        assert_summaries(f["heads"], "effect", f["heads/effect"][()], rows, hand)
        for subset, mask in subsets(hand).items():
            assert (f[f"heads/summary/{subset}/effect_n"][()] == (rows & mask).sum()).all()
    rows = analysed(hand, ABLATIONS_MAX)
    with h5py.File(tiny_run / "ablations.h5", "r") as f:
        assert sorted(m for m in f["heads"] if isinstance(f["heads"][m], h5py.Group)) == \
            sorted(METHODS)
        for method in METHODS:
            g = f[f"heads/{method}"]
            assert_summaries(g, "effect", g["effect"][()], rows, hand)
        for group in ("edge", "piece_heads"):
            assert_summaries(f[group], "effect", f[f"{group}/effect"][()], rows, hand)
        piece = np.array(read_strings(f["piece_heads/piece"])) != ""
        n = f["piece_heads/summary/all/effect_n"][()]
        assert (n == (rows & piece).sum()).all() and 0 < n[0] < rows.sum()


def test_funnels_count_the_hand_masks(tiny_run, hand):
    for name, max_puzzles in (("patching.h5", PATCHING_MAX), ("ablations.h5", ABLATIONS_MAX)):
        rows = int(analysed(hand, max_puzzles).sum())  # require_pv0_top=false
        expected = [("puzzles", N_PUZZLES), ("within_max_puzzles", max_puzzles),
                    ("usable_corruption", rows), ("pv0_is_top", rows), ("analysed", rows)]
        if name == "patching.h5":
            no_overlap = analysed(hand, max_puzzles) & ~hand["overlap"]
            expected.append(("no_overlap", int(no_overlap.sum())))
        with h5py.File(tiny_run / name, "r") as f:
            funnel = list(zip(read_strings(f["funnel/step"]), f["funnel/count"][()].tolist()))
        assert funnel == expected, name
