"""Joint patching of attention-head pairs and its interaction effect (beyond the paper).

A fork of the paper's code patched several heads at once. Here: take the ``top_n`` heads of
single-head patching (:func:`top_heads`), patch every pair of them together from the corrupted
run (:func:`pair_patching`: both heads' ``hook_z``, all squares, in one forward pass), and
compare with the singles: ``interaction = joint - (single_a + single_b)`` (:func:`interaction`).
Positive interaction = the pair reduces the log-odds of PV[0] by more than its two heads do
alone (superadditive: each head alone is partly made up for by the other, as with two heads
carrying the same information); negative = by less (subadditive: the two effects overlap, or
the log-odds saturate). Effects follow the package's sign (``interventions.SIGN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from leela_interp.experiments import interventions as iv
from leela_interp.errors import ConfigError


def top_heads(mean: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The ``n`` (layer, head) cells with the largest finite ``mean[layer, head]``, best first
    (fewer when fewer are finite).

    Raises:
        ConfigError: ``n`` below 2 (a pair needs two heads).
    """
    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"head pairs: top_n={n!r}; give at least 2 heads (or 0 = off)")
    flat = np.where(np.isfinite(mean), mean, -np.inf).ravel()
    order = [int(i) for i in np.argsort(-flat, kind="stable")[:n] if np.isfinite(flat[i])]
    return [tuple(int(x) for x in np.unravel_index(i, mean.shape)) for i in order]


def pairs_of(heads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Index pairs ``(a, b)``, ``a < b``, into ``heads``: every pair once."""
    return list(combinations(range(len(heads)), 2))


def pair_patching(prep: iv.Prepared, heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Patch both heads of every pair of ``heads`` (:func:`pairs_of` order) from the corrupted
    run at once: ``hook_z`` of each, all 64 squares, as
    :func:`~leela_interp.experiments.patching.head_patching` patches one.

    Returns:
        Effects ``[P, n_pairs]`` (float32; NaN for puzzles without a usable corrupted board).

    Raises:
        ConfigError: the network has no heads, or a head outside it.
    """
    net = prep.net
    heads = [iv.resolve_head(net, int(l), int(h)) for l, h in heads]
    pairs = pairs_of(heads)
    out = np.full((prep.n, len(pairs)), np.nan, np.float32)
    ok = np.nonzero(prep.corrupted_ok)[0]
    if len(ok) == 0 or not pairs:
        return out
    layers = sorted({l for l, _ in heads})
    hooks = {l: f"blocks.{l}.attn.hook_z" for l in layers}
    corr = prep.cache("corrupted", "blocks.*.attn.hook_z")
    rp = np.repeat(ok, len(pairs))
    rk = np.tile(np.arange(len(pairs)), len(ok))
    # per row, the head patched in each layer's hook by each slot of its pair (-1 = none)
    slot = {l: np.full((len(rp), 2), -1) for l in layers}
    for r, k in enumerate(rk):
        for s, index in enumerate(pairs[k]):
            layer, head = heads[index]
            slot[layer][r, s] = head

    def make_edit(layer):
        donor = corr[hooks[layer]]

        def edit(t, rows):
            t = t.clone()
            for s in range(2):
                h = slot[layer][rows, s]
                sel = np.flatnonzero(h >= 0)
                if len(sel):
                    t[sel, h[sel]] = donor[rp[rows][sel], h[sel]].to(t.dtype)
            return t
        return edit

    start = prep.resid_in(layers[0])
    logits = iv.run_rows(net, layers[0], len(rp), lambda rows: start[rp[rows]],
                         edits=[(hooks[l], make_edit(l)) for l in layers],
                         batch_size=prep.batch_size)
    out[rp, rk] = iv.row_effects(prep, rp, logits)
    return out


def interaction(joint: np.ndarray, single: np.ndarray,
                heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """``joint - (single_a + single_b)`` per puzzle and pair: ``joint [P, n_pairs]`` from
    :func:`pair_patching`, ``single [P, n_layers, n_heads]`` from
    :func:`~leela_interp.experiments.patching.head_patching` on the same puzzles."""
    a, b = (np.array([heads[p[s]] for p in pairs_of(heads)]).reshape(-1, 2) for s in (0, 1))
    return (np.asarray(joint, np.float64) - single[:, a[:, 0], a[:, 1]]
            - single[:, b[:, 0], b[:, 1]]).astype(np.float32)
