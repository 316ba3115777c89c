"""Attribution patching: a first-order estimate of every activation patch from gradients.

Exact patching (:func:`leela_interp.experiments.patching.residual_patching`,
``head_patching``) runs one forward pass per (layer, square) or (layer, head). Attribution
patching (Nanda 2023; AtP, Kramár et al. 2024) estimates all of them at once from the clean
run's gradient of the metric: replacing activation ``a`` by its corrupted value ``a'`` changes
the log-odds ``lo`` by about ``(a' - a) . d lo / d a``, so with this project's sign
(:data:`~leela_interp.experiments.interventions.SIGN`)

    effect ~= -(a' - a) . d lo / d a

summed over the patched entries: the ``d_model`` channels of one residual (layer, square), or
the ``64 x d_head`` values of one head's ``hook_z``. Cost per batch of puzzles: the corrupted
forward pass (cached by the :class:`~leela_interp.experiments.interventions.Prepared` chunk, as
exact patching caches it) and one clean forward and one backward pass. Entries equal on both boards
get an exact 0, as exact patching records them. The estimate is linear: it misses saturation
and interactions through later LayerNorms and softmaxes; ``docs/benchmarks.md`` has its
agreement with exact patching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leela_interp.experiments import interventions as iv
from leela_interp.errors import ConfigError
from leela_interp.network.cache import gradient_cache

METHODS: tuple[str, ...] = ("exact", "attribution")
"""``patching.method``: one forward pass per patch, or the first-order estimate of this module."""


@dataclass
class Attribution:
    """Estimated patching effects of a chunk, in exact patching's layout and sign.

    Attributes:
        residual: site (``resid_post``, ...) -> ``[P, n_layers, 64]`` float32.
        heads: ``[P, n_layers, n_heads]`` float32, or None when heads were not asked for.
    """

    residual: dict[str, np.ndarray]
    heads: np.ndarray | None


def attribution_patching(prep: iv.Prepared, *, sites: Sequence[str] = ("resid_post",),
                         heads: bool = True) -> Attribution:
    """Attribution-patching estimates of residual patching at ``sites`` and head patching.

    Args:
        prep: the chunk; puzzles without a usable corrupted board get NaN.
        sites: residual sites (:data:`~leela_interp.experiments.interventions.RESIDUAL_SITES`).
        heads: also every (layer, head)'s ``hook_z`` (transformers).

    Returns:
        An :class:`Attribution` (positive = the patch is estimated to reduce the log-odds of
        PV[0]).

    Raises:
        ConfigError: an unknown site, ``resid_mid`` on a CNN, or heads on a net without them.
    """
    net = prep.net
    L = net.config.n_layers
    for site in sites:
        if site not in iv.RESIDUAL_SITES:
            raise ConfigError(f"unknown residual site {site!r}; choose from "
                              f"{list(iv.RESIDUAL_SITES)}")
        if site == "resid_mid" and net.config.body != "transformer":
            raise ConfigError(f"resid_mid exists only in transformer blocks; this net is a "
                              f"{net.config.body!r}; choose resid_post or resid_pre")
    if heads:
        iv.require_heads(net)
    names = [f"blocks.*.hook_{site}" for site in sites] + (["blocks.*.attn.hook_z"] if heads
                                                           else [])
    residual = {site: np.full((prep.n, L, 64), np.nan, np.float32) for site in sites}
    head_eff = np.full((prep.n, L, net.config.n_heads), np.nan, np.float32) if heads else None
    ok = np.nonzero(prep.corrupted_ok)[0]
    if len(ok) == 0:
        return Attribution(residual, head_eff)
    corrupted = prep.cache("corrupted", names)
    for s in range(0, len(ok), prep.batch_size):
        rows = ok[s:s + prep.batch_size]
        r = torch.as_tensor(rows)

        def metric(out, r=r):
            return iv.log_odds(out.policy_logits, prep.legal[r], prep.move[r]).sum()

        _, clean, grads = gradient_cache(net, metric, prep.planes("clean")[r], names=names)
        for name in clean:
            diff = corrupted[name][r].to(clean[name].dtype) - clean[name]
            est = -(diff * grads[name]).double()
            layer = int(name.split(".")[1])
            if name.endswith("attn.hook_z"):
                head_eff[rows, layer] = est.sum((2, 3)).cpu().numpy()
            else:
                residual[name.rsplit("hook_", 1)[1]][rows, layer] = est.sum(2).cpu().numpy()
    return Attribution(residual, head_eff)


def agreement(exact: np.ndarray, estimate: np.ndarray, *, k: int = 10) -> dict[str, np.ndarray]:
    """How well ``estimate`` matches ``exact`` effects ``[P, n_layers, N]`` (N squares or heads).

    Args:
        exact, estimate: effects of the same puzzles; puzzles with any NaN are left out.
        k: locations per puzzle for the top-k overlap.

    Returns:
        ``pearson`` and ``spearman``: ``[n_layers]`` correlations over all puzzles' entries of
        that layer (NaN where either side is constant); ``top_k_overlap``: ``[P']`` per puzzle,
        the fraction of exact's ``k`` largest-``|effect|`` (layer, location) pairs that are
        also among the estimate's ``k`` largest; ``n_puzzles``.
    """
    from scipy import stats

    exact = np.asarray(exact, np.float64)
    estimate = np.asarray(estimate, np.float64)
    if exact.shape != estimate.shape or exact.ndim != 3:
        raise ValueError(f"need two [puzzle, layer, location] arrays of one shape, got "
                         f"{exact.shape} and {estimate.shape}")
    keep = np.isfinite(exact).all((1, 2)) & np.isfinite(estimate).all((1, 2))
    exact, estimate = exact[keep], estimate[keep]
    pearson = np.full(exact.shape[1], np.nan)
    spearman = np.full(exact.shape[1], np.nan)
    for layer in range(exact.shape[1]):
        a, b = exact[:, layer].ravel(), estimate[:, layer].ravel()
        if len(a) > 1 and a.std() > 0 and b.std() > 0:
            pearson[layer] = stats.pearsonr(a, b)[0]
            spearman[layer] = stats.spearmanr(a, b)[0]
    flat_a = np.abs(exact.reshape(len(exact), -1))
    flat_b = np.abs(estimate.reshape(len(estimate), -1))
    k = min(k, flat_a.shape[1])
    top_a = np.argsort(-flat_a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-flat_b, axis=1, kind="stable")[:, :k]
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b)])
    return {"pearson": pearson, "spearman": spearman, "top_k_overlap": overlap,
            "n_puzzles": int(keep.sum())}
