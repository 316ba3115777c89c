"""The single-edge ablation (the paper's third experiment): one attention entry of one head,
from the 1st move's target square to the 3rd move's, zeroed (:func:`edge_ablation`), and the
head it ablates (:func:`edge_head`: given, or the one this net's own head patching ranks first).
Its results are written into ``ablations.h5``'s ``edge`` group by
:func:`leela_interp.experiments.ablations.write_ablations`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from leela_interp.errors import ConfigError
from leela_interp.experiments import interventions as iv
from leela_interp.identity import sha256_file
from leela_interp.outputs.results import is_complete

EDGE_SOURCE = "heads/summary/different_targets/effect_mean"
"""The ``patching.h5`` dataset whose largest entry is the default single-edge head."""
EDGE_VARIANTS: tuple[str, ...] = ("edge", "edge_renorm", "others", "others_renorm")
"""Single-edge ablation variants: zero the one pattern entry (query = 1st-move target, key =
3rd-move target); the control zeroes every *other* entry of the head; ``_renorm`` rescales each
changed query row to sum 1 (rows left with no mass stay zero)."""


@dataclass
class EdgeResult:
    """Single-edge ablation of one (layer, head) for a chunk of puzzles.

    Attributes:
        effects: ``[P, 4]`` in :data:`EDGE_VARIANTS` order (NaN where PV has < 3 moves).
        weight: the clean pattern entry (query = 1st-move target, key = 3rd-move target) ``[P]``.
        rank_in_row: its rank within its query row (0 = the row's largest entry) ``[P]``.
        is_head_max: whether it is the largest of the head's 4096 entries ``[P]``.
        sweep: ``[P, 64 query, 64 key]`` single-entry effects, when requested.
    """

    effects: np.ndarray
    weight: np.ndarray
    rank_in_row: np.ndarray
    is_head_max: np.ndarray
    sweep: np.ndarray | None = field(default=None)


def _renorm_rows(head: torch.Tensor, ar: torch.Tensor, q: torch.Tensor) -> None:
    rows = head[ar, q]
    s = rows.sum(-1, keepdim=True)
    head[ar, q] = torch.where(s > 0, rows / s.clamp_min(torch.finfo(rows.dtype).tiny), rows)


def edge_ablation(prep: iv.Prepared, layer: int, head: int, *, full_sweep: bool = False,
                  sweep_renormalize: bool = False) -> EdgeResult:
    """Zero one attention weight of (``layer``, ``head``) on the clean board, and the control.

    Variants (:data:`EDGE_VARIANTS`): ``edge`` zeroes ``pattern[query = 1st-move target, key =
    3rd-move target]``; ``others`` zeroes every other entry of the head (the control); the
    ``_renorm`` variants then rescale each query row that still has mass to sum 1. With
    ``full_sweep`` every one of the 4096 entries is zeroed in turn (``sweep_renormalize``
    rescales its row).
    """
    net = prep.net
    layer, head = iv.resolve_head(net, layer, head)
    hook = f"blocks.{layer}.attn.hook_pattern"
    pattern = prep.cache("clean", hook)[hook][:, head]  # [P, 64, 64]
    valid = np.nonzero(prep.third >= 0)[0]
    effects = np.full((prep.n, len(EDGE_VARIANTS)), np.nan, np.float32)
    weight = np.full(prep.n, np.nan, np.float32)
    rank = np.full(prep.n, -1, np.int64)
    is_max = np.zeros(prep.n, bool)
    sweep = np.full((prep.n, 64, 64), np.nan, np.float32) if full_sweep else None
    if len(valid) == 0:
        return EdgeResult(effects, weight, rank, is_max, sweep)
    q_all = torch.as_tensor(prep.first)
    k_all = torch.as_tensor(prep.third)
    pv = torch.as_tensor(valid)
    w = pattern[pv, q_all[pv], k_all[pv]]
    weight[valid] = w.float().cpu().numpy()
    row = pattern[pv, q_all[pv]]
    rank[valid] = (row > w[:, None]).sum(1).cpu().numpy()
    is_max[valid] = (pattern[pv].flatten(1).max(1).values <= w).cpu().numpy()
    start = prep.resid_in(layer)

    nv = len(EDGE_VARIANTS)
    rp = np.repeat(valid, nv)
    rv = np.tile(np.arange(nv), len(valid))

    def ablate(t, rows):
        t = t.clone()
        hd = t[:, head]  # a view
        p = torch.as_tensor(rp[rows])
        v = torch.as_tensor(rv[rows], device=t.device)
        ar = torch.arange(len(rows), device=t.device)
        q, k = q_all[p].to(t.device), k_all[p].to(t.device)
        kept = hd[ar, q, k].clone()
        edge = (v == 0) | (v == 1)
        others = ~edge
        renorm = (v == 1) | (v == 3)
        hd[ar[edge], q[edge], k[edge]] = 0.0
        if others.any():
            hd[ar[others]] = 0.0
            hd[ar[others], q[others], k[others]] = kept[others]
        if renorm.any():
            _renorm_rows(hd, ar[renorm], q[renorm])
        return t

    logits = iv.run_rows(net, layer, len(rp), lambda rows: start[rp[rows]],
                      edits=[(hook, ablate)], batch_size=prep.batch_size)
    effects[rp, rv] = iv.row_effects(prep, rp, logits)
    if full_sweep:
        sp = np.repeat(valid, 4096)
        sq = np.tile(np.arange(4096) // 64, len(valid))
        sk = np.tile(np.arange(4096) % 64, len(valid))

        def single(t, rows):
            t = t.clone()
            hd = t[:, head]
            ar = torch.arange(len(rows), device=t.device)
            q = torch.as_tensor(sq[rows], device=t.device)
            hd[ar, q, torch.as_tensor(sk[rows], device=t.device)] = 0.0
            if sweep_renormalize:
                _renorm_rows(hd, ar, q)
            return t

        logits = iv.run_rows(net, layer, len(sp), lambda rows: start[sp[rows]],
                          edits=[(hook, single)], batch_size=prep.batch_size)
        sweep[sp, sq, sk] = iv.row_effects(prep, sp, logits)
    return EdgeResult(effects, weight, rank, is_max, sweep)


@dataclass(frozen=True)
class EdgeHead:
    """The head of the single-edge ablation (:func:`edge_head`)."""

    layer: int
    head: int
    attrs: dict
    """Written on the ``edge`` group: how the head was chosen."""


def edge_head(net, patching_path: str | Path, layer: int | None = None,
              head: int | None = None) -> EdgeHead:
    """The (layer, head) of the single-edge ablation and how it was chosen.

    ``layer`` and ``head`` given (``ablations.edge.layer/head``): that head. Both None (the
    default): the head this net's own head patching ranks first, the largest
    :data:`EDGE_SOURCE` of ``patching_path``.

    Returns:
        The head; its ``attrs`` (written on the ``edge`` group) say how it was chosen:
        ``choice`` (``config`` or ``patching``), ``chosen_by`` (a sentence) and, for
        ``patching``, the source file, its sha256 and the head's mean, error and n.

    Raises:
        ConfigError: only one of layer/head given, a head outside the net, or (automatic
            choice) no complete ``patching.h5`` of this network with finite head-patching
            means on ``different_targets``.
    """
    patching_path = Path(patching_path)
    if (layer is None) != (head is None):
        raise ConfigError(f"ablations.edge.layer={layer!r}, ablations.edge.head={head!r}: "
                          f"give both, or both null (the head head patching ranks first)")
    if layer is not None:
        try:
            layer, head = iv.resolve_head(net, int(layer), int(head))
        except ConfigError as e:
            raise ConfigError(f"ablations.edge: {e}") from None
        return EdgeHead(layer, head, {"choice": "config",
                                      "chosen_by": f"ablations.edge.layer={layer}, "
                                                   f"ablations.edge.head={head}"})
    fix = (f"run the patching stage first (leela-interp stage=patching model.path="
           f"{net.path} out_dir={patching_path.parent}) or set ablations.edge.layer=L "
           f"ablations.edge.head=H")
    if not is_complete(patching_path):
        raise ConfigError(f"ablations.edge.layer/head are null, so the single-edge head is the "
                          f"one head patching ranks first ({EDGE_SOURCE} of {patching_path}), "
                          f"but that file is missing or incomplete: {fix}")
    with h5py.File(patching_path, "r") as f:
        if f.attrs.get("network_sha256") != net.sha256:
            raise ConfigError(f"{patching_path} was computed with another network "
                              f"(network_sha256 {f.attrs.get('network_sha256')!r}, not "
                              f"{net.sha256!r} of model.path={net.path}): {fix}")
        if EDGE_SOURCE not in f:
            raise ConfigError(f"{patching_path} has no {EDGE_SOURCE} (heads: "
                              f"{f.attrs.get('heads', '?')}): rerun patching with "
                              f"patching.heads=true, or set ablations.edge.layer=L "
                              f"ablations.edge.head=H")
        base = EDGE_SOURCE.rsplit("_", 1)[0]
        mean, err = f[EDGE_SOURCE][()], f[base + "_err2sigma"][()]
        count = f[base + "_n"][()]
    if not np.isfinite(mean).any():
        raise ConfigError(f"{patching_path}: {EDGE_SOURCE} is NaN for every head (no analysed "
                          f"puzzle with different_targets; see its funnel): set "
                          f"ablations.edge.layer=L ablations.edge.head=H, or analyse more "
                          f"puzzles")
    layer, head = (int(i) for i in np.unravel_index(np.nanargmax(mean), mean.shape))
    sha = sha256_file(patching_path)
    m, e, k = float(mean[layer, head]), float(err[layer, head]), int(count[layer, head])
    return EdgeHead(layer, head, {
        "choice": "patching",
        "chosen_by": f"largest {EDGE_SOURCE} of {patching_path.name} (sha256 {sha[:12]}): "
                     f"{m:.4f} ± {e:.4f} (2σ) over {k} puzzles",
        "source_file": str(patching_path), "source_sha256": sha,
        "source_effect_mean": m, "source_effect_err2sigma": e, "source_n": k})
