"""``stage=ablations``: head ablations (zero / mean / resample), single-edge ablation of one
(layer, head), and piece-movement-head ablations, on the clean boards.

Reads ``<out_dir>/puzzles.h5`` (and, for the default single-edge head, ``patching.h5``),
writes ``<out_dir>/ablations.h5`` with :func:`leela_interp.experiments.ablations.write_ablations`
and PNG figures under ``<out_dir>/figures/`` (layout and conventions: ``docs/interventions.md``).
By default only the puzzles patching analyses are ablated (``ablations.puzzles``,
``ablations.require_pv0_top``). A network without attention heads (a CNN) gets a complete file
that says so and no figures. Resumable by chunks; skipped when complete for the same network,
puzzle set and ``ablations`` config (and, for the default single-edge head, the same
``patching.h5``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import chess
from omegaconf import DictConfig, OmegaConf

from leela_interp.errors import ConfigError
from leela_interp.experiments import piece_heads as ph
from leela_interp.experiments.ablations import OUTPUT, AblationSettings, write_ablations
from leela_interp.experiments.edge import edge_head
from leela_interp.experiments.effects import has_heads
from leela_interp.identity import sha256_file
from leela_interp.outputs.shards import shard_name
from leela_interp.puzzles.puzzle_set import PuzzleSet
from leela_interp.stages.common import (effects_config, load_model, puzzles_input, puzzles_net,
                                        run_dir, up_to_date)

log = logging.getLogger(__name__)


def settings(cfg: DictConfig) -> AblationSettings:
    """The ``ablations`` section (and ``model.batch_size``) as :class:`AblationSettings`.

    Raises:
        ConfigError: a value :class:`AblationSettings` refuses.
    """
    ac = cfg.ablations
    methods = list(ac.method) if OmegaConf.is_list(ac.method) or isinstance(ac.method, list) \
        else [ac.method]
    return AblationSettings(
        methods=tuple(methods), puzzles=ac.puzzles, require_pv0_top=bool(ac.require_pv0_top),
        max_puzzles=ac.max_puzzles, chunk_size=int(ac.chunk_size), seed=int(ac.seed),
        edge=bool(ac.edge.enabled), full_sweep=bool(ac.edge.full_sweep),
        sweep_renormalize=bool(ac.edge.sweep_renormalize),
        min_pv_length=int(ac.piece_heads.min_pv_length), piece_rule=ac.piece_heads.piece_rule,
        random_key=ac.piece_heads.random_key, batch_size=int(cfg.model.batch_size),
        shard=int(ac.shard), num_shards=int(ac.num_shards))


def stage_config(cfg: DictConfig, puzzles_path: Path, out: Path) -> dict:
    """What ``ablations.h5`` records and hashes: :func:`effects_config` and, for the default
    single-edge head (chosen from ``patching.h5``), that file's sha256."""
    ac = cfg.ablations
    config = effects_config(cfg, "ablations", puzzles_path)
    patching_path = out / "patching.h5"
    auto_edge = ac.edge.enabled and ac.edge.layer is None and ac.edge.head is None
    if auto_edge and patching_path.exists():  # the chosen head depends on patching.h5
        config["patching_sha256"] = sha256_file(patching_path)
    return config


def piece_head_lists(cfg: DictConfig, net, puzzles: PuzzleSet, puzzles_path: Path,
                     out: Path) -> tuple[dict[str, list], str]:
    """The piece-movement-head lists and where they come from.

    Any list of ``ablations.piece_heads.heads`` given: those (``"config"``). All empty and
    ``ablations.piece_heads.find.enabled``: the heads
    :mod:`leela_interp.experiments.piece_heads` selects on the positions before each puzzle's
    setup move (``puzzles.h5``'s ``fen``, the first ``find.max_positions``), read from
    ``<out>/piece_heads.h5``, which is written first unless it is complete for the same
    network, puzzles and ``find`` config (and its figure when ``ablations.figures``).

    Returns:
        ``(lists, source)``; ``source`` is ``"config"``, ``"none"`` (empty, no finder) or a
        sentence naming ``piece_heads.h5`` and its sha256.

    Raises:
        ConfigError: a bad list, head, ``find.min_lift`` or ``find.max_positions``.
    """
    ac = cfg.ablations
    given = OmegaConf.to_container(ac.piece_heads.heads, resolve=True) or {}
    lists = ph.check_head_lists(net, {k: v or [] for k, v in given.items()})
    find = ac.piece_heads.find
    if any(lists.values()) or not find.enabled:
        return lists, "config" if any(lists.values()) else "none"
    limit = find.max_positions
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"ablations.piece_heads.find.max_positions={limit!r}; give a "
                          f"positive number of positions or null (every puzzle's)")
    min_lift = float(find.min_lift)
    path = out / ph.OUTPUT
    config = {"find": OmegaConf.to_container(find, resolve=True),
              "model": {"dtype": cfg.model.dtype}, "network_sha256": net.sha256,
              "puzzles_sha256": sha256_file(puzzles_path)}
    if not up_to_date(path, config, bool(cfg.force)):
        boards = [chess.Board(fen) for fen in puzzles.fens[:limit]]
        scores = ph.movement_scores(net, boards, batch_size=min(int(cfg.model.batch_size), 64))
        ph.write(path, scores, ph.select_heads(scores, min_lift), min_lift=min_lift,
                 config=config, attrs={"network_sha256": net.sha256, "network_path": net.path,
                                       "positions": "puzzles.h5 fen (before the setup move)"})
        log.info("wrote %s", path)
    if ac.figures and ac.num_shards == 1:  # a shard writes no figures
        from leela_interp.outputs import figures

        for fig in figures.piece_head_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    lists = ph.read_lists(path)
    return lists, f"found: {path.name} (sha256 {sha256_file(path)[:12]}, min_lift {min_lift:g})"


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/ablations.h5`` (or skip it when up to date) and its figures.

    A shard (``ablations.num_shards > 1``) writes ``ablations.shard-K-of-N.h5`` and no
    figures; ``stage=merge merge.stage=ablations`` joins the shards
    (:func:`leela_interp.experiments.ablations.merge_ablations`).
    """
    from leela_interp.outputs import figures

    ac = cfg.ablations
    setup = settings(cfg)
    puzzles_path = puzzles_input(cfg)
    out = run_dir(cfg)
    sharded = setup.num_shards > 1
    path = out / (shard_name(OUTPUT, setup.shard, setup.num_shards) if sharded else OUTPUT)
    patching_path = out / "patching.h5"
    figures_on = ac.figures and not sharded
    config = stage_config(cfg, puzzles_path, out)
    if up_to_date(path, config, bool(cfg.force)):
        if figures_on:
            figures.ablation_figures(path, out / "figures")
        return path
    net = load_model(cfg)
    attrs = puzzles_net(puzzles_path, net.sha256, cfg.model.path)
    if not has_heads(net):  # write_ablations writes a file that says so
        write_ablations(net, puzzles_path, path, setup, edge=None, piece_heads={},
                        config=config, attrs=attrs)
        return path
    edge = edge_head(net, patching_path, ac.edge.layer, ac.edge.head) if setup.edge else None
    if edge is not None:
        log.info("ablations: single-edge head L%dH%d (%s)", edge.layer, edge.head,
                 edge.attrs["chosen_by"])
    lists, source = piece_head_lists(cfg, net, PuzzleSet.load(puzzles_path), puzzles_path, out)
    log.info("ablations: piece-movement heads %s (%s)", lists, source)
    if not any(lists.values()):
        log.info("ablations: no piece-movement heads (ablations.piece_heads.heads empty%s); "
                 "that part is skipped", "" if source == "none" else
                 ", and none passes the finder's threshold")
    write_ablations(net, puzzles_path, path, setup, edge=edge, piece_heads=lists,
                    piece_heads_source=source, config=config, attrs=attrs, resume=not cfg.force)
    if figures_on:
        for fig in figures.ablation_figures(path, out / "figures"):
            log.info("wrote %s", fig)
    return path
