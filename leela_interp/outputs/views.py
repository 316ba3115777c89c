"""The pictures a researcher asks for, each one call on a run folder; every one returns SVG text.

Show one in a notebook with ``IPython.display.SVG(text)``; write it with
:func:`leela_interp.outputs.board_figures.save` (``.svg``, ``.png``, ``.pdf``). ``run`` is a run
folder (``out_dir``), ``puzzle_id`` a Lichess id of its ``puzzles.h5``:

- :func:`puzzle_card`: the clean board with the PV's first moves as numbered arrows and the
  corrupted squares outlined, the corrupted board beside it, each with the strong net's
  P(PV[0]) and value (``puzzles.h5``).
- :func:`patching_board` / :func:`patching_strip`: the residual-patching effect of every
  square at one layer / at every layer (``patching.h5``), one colour scale.
- :func:`attention_board` / :func:`attention_pattern`: one head's attention row from a query
  square (default: the 1st-move target) on the board, and its 64x64 pattern (computed with the
  network on the clean board; pass ``net`` or let it load ``patching.h5``'s network).
- :func:`probe_board`: the bilinear probe's predicted distribution over squares for a puzzle
  at one layer (:func:`probe_distribution` refits the probe; see there).
- :func:`head_heatmap`: head patching or ablation means per layer x head with each cell's
  2-sigma error.
- :func:`drilldown`: the card, the effect strip and the top head's attention row of one
  puzzle (the report's gallery and ``stage=show``).

Squares in the stage files are tokens (``leela_interp.board.encoding.TOKEN_NUMBERING``); every view
maps them to the board with the puzzle's side to move and canonical transform, so a value
lands on the square python-chess names for it.

>>> svg = puzzle_card("runs/default", "00sHx")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import chess
import h5py
import numpy as np
import torch
from matplotlib.figure import Figure

from leela_interp.board.encoding import square_to_token, squares_to_tokens, transform_for
from leela_interp.errors import ConfigError
from leela_interp.experiments import probe_targets as T
from leela_interp.experiments import probes as P
from leela_interp.outputs import board_figures as bf
from leela_interp.outputs import figures
from leela_interp.outputs.results import is_complete, read_strings
from leela_interp.puzzles.puzzle_set import PuzzleSet

EFFECT_LABEL = "effect: log-odds reduction\nof PV[0] (> 0: patch hurt)"
PLIES = 3
"""PV moves drawn as arrows by default (PV[0], PV[1], PV[2])."""


@dataclass
class PuzzleView:
    """One puzzle of a run folder, as the pictures need it (read by :meth:`load`)."""

    id: str
    row: int
    """Row in ``puzzles.h5`` (and in ``patching.h5`` / ``ablations.h5``, which share rows)."""
    clean: chess.Board
    corrupted: chess.Board | None
    pv: list[str]
    """The principal variation, UCI."""
    transform: int
    """Canonical transform of the clean board (token frame)."""
    corruption_squares: list[chess.Square]
    """The changed squares, python-chess numbering."""
    corruption: str
    """What the corruption did (``'remove d5'``), ``''`` without one."""
    prob: tuple[float, float]
    """The strong net's P(PV[0]) on the clean and the corrupted board (NaN without one)."""
    value: tuple[float, float]
    """The strong net's value (side to move) on the clean and the corrupted board."""
    rating: int
    """Lichess rating, -1 if unknown."""

    @classmethod
    def load(cls, run: str | Path, puzzle_id: str) -> "PuzzleView":
        """Read ``puzzle_id`` from ``run/puzzles.h5``.

        Raises:
            ConfigError: no complete ``puzzles.h5`` (names the stage to run), or the id is
                not in it.
        """
        path = Path(run) / "puzzles.h5"
        puzzles = PuzzleSet.load(path)
        row = _row(puzzles.ids, puzzle_id, path)
        clean, corrupted = puzzles.pair(row)
        with h5py.File(path, "r") as f:
            g = f["puzzles"]

            def get(name):
                if name not in g:
                    raise ConfigError(f"{path} has no puzzles/{name}: it was written by an "
                                      f"older leela-interp; rerun the puzzles stage")
                return g[name][row]

            squares = [int(s) for s in get("corruption_squares_chess") if s >= 0]
            description = get("corruption_description")
            value = float(get("strong_value"))
            return cls(
                id=puzzle_id, row=row, clean=clean, corrupted=corrupted, pv=puzzles.pv(row),
                transform=int(get("transform")), corruption_squares=squares,
                corruption=description.decode() if isinstance(description, bytes)
                else str(description),
                prob=(float(get("strong_pv_prob")[0]), float(get("corruption_strong_prob"))),
                value=(value, value - float(get("corruption_strong_value_drop"))),
                rating=int(get("rating")))

    def arrows(self, plies: int = PLIES) -> list[str]:
        """The PV's first ``plies`` moves."""
        return self.pv[:plies]

    def tokens(self, squares) -> np.ndarray:
        """python-chess squares of the clean board as its tokens."""
        return squares_to_tokens(np.asarray([squares]), [self.clean.turn], [self.transform])[0]


def _row(ids: list[str], puzzle_id: str, path: Path) -> int:
    try:
        return ids.index(str(puzzle_id))
    except ValueError:
        raise ConfigError(f"puzzle {puzzle_id!r} is not in {path} ({len(ids)} puzzles, e.g. "
                          f"{ids[:3]!r})") from None


def _file(run: str | Path, name: str, stage: str) -> Path:
    path = Path(run) / name
    if not is_complete(path):
        raise ConfigError(f"{path} is missing or incomplete: run the {stage} stage first "
                          f"(leela-interp stage={stage} out_dir={Path(run)})")
    return path


def _moves(view: PuzzleView, plies: int) -> str:
    """The PV's first ``plies`` moves in SAN, numbered by ply as the arrows are."""
    board, out = view.clean.copy(stack=False), []
    for uci in view.arrows(plies):
        move = chess.Move.from_uci(uci)
        out.append(board.san(move))
        board.push(move)
    return " ".join(f"{k + 1}. {san}" for k, san in enumerate(out))


def puzzle_card(run: str | Path, puzzle_id: str, *, plies: int = PLIES, size: int = 300) -> str:
    """The clean board (PV[0..plies-1] as numbered arrows, corrupted squares outlined) and the
    corrupted board beside it, each titled with the strong net's P(PV[0]) and value.

    Raises:
        ConfigError: see :meth:`PuzzleView.load`.
    """
    v = PuzzleView.load(run, puzzle_id)
    side = "white" if v.clean.turn else "black"
    clean = bf.board_svg(v.clean, arrows=v.arrows(plies), marked=v.corruption_squares,
                         size=size, title=f"clean ({side} to move)\n"
                                          f"P(PV[0]) = {v.prob[0]:.3f}, value = {v.value[0]:+.3f}")
    if v.corrupted is None:
        corrupted = bf.board_svg(v.clean, size=size, title="no corrupted board\n"
                                 "(puzzles.h5 found no corruption)")
    else:
        corrupted = bf.board_svg(v.corrupted, arrows=v.arrows(1), marked=v.corruption_squares,
                                 size=size, title=f"corrupted: {v.corruption}\n"
                                 f"P(PV[0]) = {v.prob[1]:.3f}, value = {v.value[1]:+.3f}")
    rating = f", rating {v.rating}" if v.rating >= 0 else ""
    return bf.grid([clean, corrupted], title=f"puzzle {v.id}{rating}: {_moves(v, plies)}\n"
                                             f"P and value: the strong net of puzzles.h5 "
                                             f"(value: side to move's view)")


def _residual(run: str | Path, view: PuzzleView, site: str | None) -> tuple[np.ndarray, str, str]:
    """``(effect [layer, token], site, note)`` of one puzzle from ``patching.h5``."""
    path = _file(run, "patching.h5", "patching")
    with h5py.File(path, "r") as f:
        sites = list(f.get("residual", {}))
        site = site or (sites[0] if sites else None)
        if site not in sites:
            raise ConfigError(f"{path} has no residual/{site} (it has {sites}); choose one of "
                              f"those")
        if read_strings(f["puzzle_id"])[view.row] != view.id:
            raise ConfigError(f"{path} does not follow puzzles.h5's rows: rerun the patching "
                              f"stage")
        effect = f[f"residual/{site}/effect"][view.row]
        note = "" if f["analysed"][view.row] else \
            (read_strings(f["skip_reason"])[view.row] or "not analysed (see the file's funnel)")
    return effect, site, note


def patching_board(run: str | Path, puzzle_id: str, layer: int, *, site: str | None = None,
                   size: int = 300) -> str:
    """The residual-patching effect of every square at ``layer`` (``patching.h5``'s
    ``residual/{site}/effect``; ``site`` None = the first patched site) on the clean board.

    Raises:
        ConfigError: no ``patching.h5``, an unknown site or layer, an unknown puzzle.
    """
    v = PuzzleView.load(run, puzzle_id)
    effect, site, note = _residual(run, v, site)
    if not 0 <= layer < len(effect):
        raise ConfigError(f"layer {layer!r}: patching.h5 has layers 0..{len(effect) - 1}")
    return bf.board_svg(v.clean, effect[layer], transform=v.transform, arrows=v.arrows(),
                        marked=v.corruption_squares, label=EFFECT_LABEL, size=size,
                        title=f"{v.id}: patching {site} at layer {layer}"
                              + (f"\n{note}" if note else ""))


def patching_strip(run: str | Path, puzzle_id: str, *, site: str | None = None,
                   size: int = 190, columns: int = 8) -> str:
    """:func:`patching_board` at every layer side by side (``columns`` to a row), one colour
    scale (its bar after the last layer).

    Raises:
        ConfigError: see :func:`patching_board`.
    """
    v = PuzzleView.load(run, puzzle_id)
    effect, site, note = _residual(run, v, site)
    finite = np.abs(effect[np.isfinite(effect)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    boards = [bf.board_svg(v.clean, effect[layer], transform=v.transform, arrows=v.arrows(),
                           marked=v.corruption_squares, size=size, vmax=vmax,
                           label=EFFECT_LABEL, legend=layer == len(effect) - 1,
                           title=f"layer {layer}")
              for layer in range(len(effect))]
    return bf.grid(boards, columns=columns,
                   title=f"{v.id}: residual patching ({site}) from the corrupted board, every "
                         f"layer" + (f"\n{note}" if note else ""))


def network(run: str | Path, path: str | Path | None = None):
    """Load the network ``patching.h5`` was computed with: ``path`` when given, else the file's
    recorded ``network_path``; either must have the recorded ``network_sha256``.

    Raises:
        ConfigError: no ``patching.h5``, or no such file with that sha256 (pass ``path``).
    """
    from leela_interp.network import load_network
    from leela_interp.identity import sha256_file

    patching = _file(run, "patching.h5", "patching")
    with h5py.File(patching, "r") as f:
        recorded, sha = str(f.attrs.get("network_path", "")), str(f.attrs.get("network_sha256"))
    path = Path(path or recorded)
    if not path.is_file() or sha256_file(path) != sha:
        raise ConfigError(f"attention needs the network {patching} was computed with (sha256 "
                          f"{sha[:12]}..., recorded path {recorded!r}); {str(path)!r} is "
                          f"{'another network' if path.is_file() else 'not a file'}: pass "
                          f"model.path / net=leela_interp.load_network(PATH)")
    return load_network(path)


def attention(net, board: chess.Board, layer: int) -> np.ndarray:
    """Every head's attention pattern at ``layer`` on ``board``: ``[head, query, key]``,
    tokens in the net's own frame (``transform_for(board, net.config.input_format)``).

    Raises:
        ConfigError: the net has no attention heads, or ``layer`` is out of range.
    """
    if net.config.body != "transformer" or not net.config.n_heads:
        raise ConfigError(f"{Path(net.path).name or 'the network'} has no attention heads "
                          f"({net.config.body} body)")
    if not 0 <= layer < net.config.n_layers:
        raise ConfigError(f"layer {layer!r}: the net has layers 0..{net.config.n_layers - 1}")
    hook = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        _, cache = net.run_with_cache(net.encode([board]), names=hook, device="cpu")
    return cache[hook][0].float().numpy()


def _head(net, layer: int, head: int) -> None:
    if not 0 <= head < net.config.n_heads:
        raise ConfigError(f"head {head!r}: the net has heads 0..{net.config.n_heads - 1}")


def attention_board(run: str | Path, puzzle_id: str, layer: int, head: int, *,
                    query: chess.Square | None = None, net=None, size: int = 300) -> str:
    """Head (``layer``, ``head``)'s attention from ``query`` (a python-chess square; None =
    the 1st-move target) to every square, on the clean board (query square outlined).

    Args:
        net: a loaded :class:`~leela_interp.network.net.LeelaNet`; None = :func:`network`.

    Raises:
        ConfigError: a net without heads, a layer or head out of range, no network found.
    """
    v = PuzzleView.load(run, puzzle_id)
    net = network(run) if net is None else net
    _head(net, layer, head)
    pattern = attention(net, v.clean, layer)
    query = chess.Move.from_uci(v.pv[0]).to_square if query is None else int(query)
    transform = transform_for(v.clean, net.config.input_format)
    row = pattern[head, square_to_token(query, v.clean.turn, transform)]
    return bf.board_svg(v.clean, row, transform=transform, arrows=v.arrows(), marked=[query],
                        label="attention weight", size=size,
                        title=f"{v.id}: L{layer}H{head} attention from "
                              f"{chess.square_name(query)} (outlined)")


def attention_pattern(run: str | Path, puzzle_id: str, layer: int, head: int, *,
                      net=None) -> str:
    """Head (``layer``, ``head``)'s 64x64 attention pattern on the clean board, rows (queries)
    and columns (keys) in python-chess square order a1, b1, ..., h8 (matplotlib, as SVG).

    Raises:
        ConfigError: see :func:`attention_board`.
    """
    v = PuzzleView.load(run, puzzle_id)
    net = network(run) if net is None else net
    _head(net, layer, head)
    pattern = attention(net, v.clean, layer)
    tokens = squares_to_tokens(np.arange(64)[None], [v.clean.turn],
                               [transform_for(v.clean, net.config.input_format)])[0]
    by_square = pattern[head][np.ix_(tokens, tokens)]
    fig = Figure(figsize=(7.4, 6.4))
    ax = fig.add_subplot()
    im = ax.imshow(by_square, cmap="Reds", vmin=0, origin="lower")
    ticks = np.arange(64)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(ticks, [chess.square_name(s) for s in ticks], fontsize=4)
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("key square")
    ax.set_ylabel("query square")
    ax.set_title(f"{v.id}: L{layer}H{head} attention pattern (clean board)", fontsize=10)
    fig.colorbar(im, ax=ax).set_label("attention weight", fontsize=8)
    fig.tight_layout()
    return figures.figure_svg(fig)


@dataclass
class ProbeDistribution:
    """A refitted bilinear probe's output on one puzzle (:func:`probe_distribution`)."""

    probabilities: np.ndarray
    """``[64]`` softmax over the tokens of the clean board."""
    label: int
    """The true token (the target's square)."""
    condition: int
    """The conditioning token (its true square)."""
    in_test: bool
    """The puzzle is in the probe's test set (False: the probe was trained on it)."""
    n_correct: int
    """Test puzzles the refitted probe gets right (compare ``probes.h5``'s ``n_correct``)."""
    n_test: int


def probe_distribution(run: str | Path, puzzle_id: str, layer: int, *, target: str = "target",
                       split: str = "all", seed: int = 0) -> ProbeDistribution:
    """Refit the probes stage's bilinear probe for one (layer, target, split, seed) from
    ``activations.h5`` and return its predicted distribution for one puzzle.

    ``probes.h5`` stores accuracies only. Rather than store 64 probabilities per puzzle,
    layer, target and seed there, this refits the one probe asked for with the settings
    ``probes.h5`` records (its config, targets and train fraction) on the same train/test cut:
    the same function of the same data and seed as the stage's, so on the same machine it
    reproduces the stage's ``n_correct`` (returned for comparison), and it costs one probe fit
    on one layer. Chained targets are not supported (their test-time condition is another
    probe's prediction).

    Raises:
        ConfigError: missing files, an unknown or chained target, a layer not in
            ``activations.h5``, a puzzle on which the target is undefined (PV too short).
    """
    run = Path(run)
    probes_path = _file(run, "probes.h5", "probes")
    acts_path = _file(run, "activations.h5", "activations")
    with h5py.File(probes_path, "r") as f:
        config = json.loads(f.attrs["config"])["probes"]
        specs = [T.TargetSpec(**s) for s in json.loads(f.attrs["targets"])]
    spec = {s.name: s for s in specs}.get(target)
    if spec is None or spec.chain is not None:
        raise ConfigError(f"probe target {target!r}: choose one of "
                          f"{[s.name for s in specs if s.chain is None]} (probes.h5's targets "
                          f"that are not chained)")
    hooks = P.layer_hooks(acts_path, config["site"])
    if layer not in hooks:
        raise ConfigError(f"layer {layer!r}: {acts_path} has layers {sorted(hooks)} of site "
                          f"{config['site']!r}")
    puzzles = PuzzleSet.load(run / "puzzles.h5")
    with h5py.File(run / "puzzles.h5", "r") as f:
        input_format = int(f.attrs.get("token_input_format", 1))
    with h5py.File(acts_path, "r") as f:
        ids = P.cache_puzzle_ids(f)
    row = _row(ids, puzzle_id, acts_path)
    rows = [puzzles.ids.index(pid) for pid in ids]
    labels = T.target_labels([puzzles.clean_board(i) for i in rows],
                             [puzzles.pv(i) for i in rows], [spec], input_format)[target]
    if not labels.valid[row]:
        raise ConfigError(f"puzzle {puzzle_id!r} has no {target!r} label (its PV is too short)")
    train, test = T.train_test(T.split_rows(puzzles.different_targets[rows], split), seed,
                               float(config["train_fraction"]))
    acts = P.load_layer(acts_path, hooks[layer], dtype=config.get("dtype"))
    scale = P.channel_rms(acts, train)
    tr, te = train[labels.valid[train]], test[labels.valid[test]]
    probe = P.fit_bilinear(acts, tr, labels.condition[tr], labels.label[tr], scale=scale,
                           config=P.BilinearConfig(**config["bilinear"]), seed=seed)
    pred = P.bilinear_logits(probe, acts, te, labels.condition[te], scale=scale).argmax(1)
    logits = P.bilinear_logits(probe, acts, np.array([row]), labels.condition[[row]],
                               scale=scale)[0]
    return ProbeDistribution(
        probabilities=torch.softmax(torch.from_numpy(logits).double(), 0).numpy(),
        label=int(labels.label[row]), condition=int(labels.condition[row]),
        in_test=bool(np.isin(row, te)), n_correct=int((pred == labels.label[te]).sum()),
        n_test=len(te))


def probe_board(run: str | Path, puzzle_id: str, layer: int, *, target: str = "target",
                split: str = "all", seed: int = 0, size: int = 300) -> str:
    """The bilinear probe's predicted distribution over squares (:func:`probe_distribution`)
    on the clean board; the true square outlined, the conditioning square's PV move drawn.

    Raises:
        ConfigError: see :func:`probe_distribution`.
    """
    v = PuzzleView.load(run, puzzle_id)
    d = probe_distribution(run, puzzle_id, layer, target=target, split=split, seed=seed)
    squares = np.argsort(v.tokens(np.arange(64)))  # token -> square
    true, best = int(squares[d.label]), int(squares[int(np.argmax(d.probabilities))])
    held = "test puzzle" if d.in_test else "training puzzle"
    return bf.board_svg(
        v.clean, d.probabilities, transform=v.transform, arrows=v.arrows(), marked=[true],
        label=f"P({target} square)", vmax=float(d.probabilities.max()), size=size,
        title=f"{v.id}: bilinear probe '{target}', layer {layer}\n"
              f"{held}, split {split}, seed {seed}\n"
              f"true {chess.square_name(true)} (outlined): p = {d.probabilities[d.label]:.2f}; "
              f"top {chess.square_name(best)}: p = {d.probabilities.max():.2f}")


def head_heatmap(run: str | Path, method: str = "patching", *, subset: str = "all") -> str:
    """Head patching (``method="patching"``, ``patching.h5``) or head ablation (``zero``,
    ``mean``, ``resample``: ``ablations.h5``) per layer x head: each cell its mean effect
    over ``subset``'s puzzles and its 2-sigma error (matplotlib, as SVG).

    Raises:
        ConfigError: the file is missing or has no such heads summary (a net without heads).
    """
    name, stage = ("patching.h5", "patching") if method == "patching" else \
        ("ablations.h5", "ablations")
    path = _file(run, name, stage)
    base = "heads/summary" if method == "patching" else f"heads/{method}/summary"
    with h5py.File(path, "r") as f:
        if f"{base}/{subset}/effect_mean" not in f:
            raise ConfigError(f"{path} has no {base}/{subset}: choose method from patching, "
                              f"zero, mean, resample and subset from all, different_targets, "
                              f"same_targets (a net without attention heads has none)")
        s = f[f"{base}/{subset}"]
        mean, err, n = s["effect_mean"][()], s["effect_err2sigma"][()], s["effect_n"][()]
        net = Path(str(f.attrs.get("network_path", ""))).name
    what = "patching each head's output from the corrupted board" if method == "patching" \
        else f"{method}-ablation of each head's output"
    return figures.figure_svg(figures.head_heatmap_figure(
        mean, err, title=f"{net}: {what}\nmean ± 2σ over {figures.n_range(n)} puzzles "
                         f"({subset})"))


def top_head(run: str | Path) -> tuple[int, int] | None:
    """The head that head patching ranks first (largest ``heads/summary/all/effect_mean`` of
    ``patching.h5``), or None (no file, no heads, or no finite mean)."""
    path = Path(run) / "patching.h5"
    if not is_complete(path):
        return None
    with h5py.File(path, "r") as f:
        if "heads/summary/all/effect_mean" not in f:
            return None
        mean = f["heads/summary/all/effect_mean"][()]
    if not np.isfinite(mean).any():
        return None
    layer, head = np.unravel_index(np.nanargmax(mean), mean.shape)
    return int(layer), int(head)


def _no_heads(run: str | Path) -> str:
    """Why :func:`top_head` found no head."""
    path = Path(run) / "patching.h5"
    if not is_complete(path):
        return "no patching.h5 in this run folder"
    with h5py.File(path, "r") as f:
        if "heads/summary/all/effect_mean" in f:
            return "patching.h5: no finite head-patching mean (no analysed puzzle; see its funnel)"
        return f"patching.h5: heads {f.attrs.get('heads', 'not patched (patching.heads=false)')}"


@dataclass
class Panel:
    """One picture of a drill-down: SVG text, or a note saying why there is none."""

    name: str
    """File stem (``card``, ``strip``, ``attention``)."""
    caption: str
    svg: str | None = None
    note: str = ""


def drilldown(run: str | Path, puzzle_id: str, *, net=None) -> list[Panel]:
    """One puzzle's pictures: its card, its effect strip (with ``patching.h5``) and the top
    head's (:func:`top_head`) attention row from the 1st-move target; a panel that cannot be
    drawn carries a note instead.

    Raises:
        ConfigError: the puzzle is not in ``puzzles.h5``.
    """
    panels = [Panel("card", "Puzzle card: the clean board with PV[0..2] (numbered arrows) and "
                            "the corrupted squares (dashed), the corrupted board beside it",
                    puzzle_card(run, puzzle_id))]
    caption = "Residual patching: effect of patching each square from the corrupted board"
    if is_complete(Path(run) / "patching.h5"):
        panels.append(Panel("strip", caption, patching_strip(run, puzzle_id)))
    else:
        panels.append(Panel("strip", caption, note="no patching.h5 in this run folder"))
    head = top_head(run)
    caption = "Attention row of the head that head patching ranks first, from the 1st-move " \
              "target"
    if head is None:
        panels.append(Panel("attention", caption, note=_no_heads(run)))
    else:
        try:
            svg = attention_board(run, puzzle_id, *head, net=net)
            panels.append(Panel("attention", caption + f" (L{head[0]}H{head[1]})", svg))
        except ConfigError as e:
            panels.append(Panel("attention", caption, note=str(e)))
    return panels
