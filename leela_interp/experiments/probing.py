"""``probes.h5``: look-ahead probes per (network, layer), with random-twin and no-activation
baselines, and the file's layout.

:func:`write_probes` trains and tests the probes of :mod:`leela_interp.experiments.probes` on
the activation cache of a run folder (``activations.h5``, and with
:attr:`ProbeSettings.random_twin` the random twin's, ``random_twin_activations.h5``) and writes
``probes.h5``; every dataset, attribute and axis of that file is made by :func:`create_layout`
here. :func:`plot` draws it. Method, baselines and file layout: ``docs/probes.md``. The
``probes`` stage (:mod:`leela_interp.stages.probes`) builds :class:`ProbeSettings` from its
config section.

Memory: one layer of one network is in memory at a time. Resumable: every finished
(network, layer) is committed to ``probes.h5.partial.d/`` and skipped by a rerun with the same
config; ``probes.h5`` is assembled from them at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from leela_interp.board.encoding import TOKEN_NUMBERING
from leela_interp.errors import ConfigError
from leela_interp.experiments import probe_targets as T
from leela_interp.experiments import probes as P
from leela_interp.experiments import random_twin as rt
from leela_interp.identity import sha256_file
from leela_interp.network.lc0.weights import net_format, read_net
from leela_interp.outputs.chunked import ChunkedOutput
from leela_interp.outputs.results import label_axes, read_strings, write_strings
from leela_interp.puzzles.puzzle_set import PuzzleSet

log = logging.getLogger(__name__)

SCHEMA = "leela_interp.probes/1"
OUTPUT = "probes.h5"
FIGURE = "figures/probes.png"
TWIN_NET = "random_twin.pb.gz"
TWIN_ACTIVATIONS = "random_twin_activations.h5"
#: The ``net`` axis: the network under study and its random-initialised twin.
NETS = ("model", "random_twin")
AXES = ("net", "split", "probe", "target", "layer", "seed")
"""Axes of ``n_correct`` and ``accuracy``."""
BASELINE_AXES = ("split", "baseline", "target", "seed")
"""Axes of ``baseline_n_correct`` and ``baseline_accuracy``."""


@dataclass(frozen=True)
class ProbeSettings:
    """What :func:`write_probes` computes (the ``probes`` config keys, documented in
    ``leela_interp/conf/probes/default.yaml``; :meth:`from_section` reads that section).

    Raises:
        ConfigError: On construction: an unknown split.
    """

    targets: tuple[T.TargetSpec, ...]
    """What is predicted (:func:`~leela_interp.experiments.probe_targets.parse_targets`)."""
    site: str = "hook_resid_post"
    """The cached hook probed in every layer (``clean/blocks.{layer}.{site}``)."""
    layers: tuple[int, ...] | None = None
    """The layers probed; None = every cached layer."""
    dtype: str | None = None
    """Activations cast to this dtype when loaded; None = as stored."""
    max_layer_gib: float | None = 1.0
    """A layer larger than this is read from the cache batch by batch; None = always loaded."""
    train_fraction: float = 0.7
    """Share of each split's puzzles the probes are trained on."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Train/test shuffles and probe initialisations."""
    splits: tuple[str, ...] = ("all", "different_targets")
    """Puzzle subsets trained and tested on
    (:data:`~leela_interp.experiments.probe_targets.SPLITS`)."""
    threads: int | None = None
    """torch threads while probing; None = leave the setting."""
    probes: tuple[str, ...] = P.PROBES
    """Which probes (:data:`~leela_interp.experiments.probes.PROBES`)."""
    baselines: tuple[str, ...] = P.BASELINES
    """Which no-activation baselines (:data:`~leela_interp.experiments.probes.BASELINES`)."""
    bilinear: P.BilinearConfig = field(default_factory=P.BilinearConfig)
    logreg: P.LogRegConfig = field(default_factory=P.LogRegConfig)
    random_twin: bool = True
    """Also probe the random-initialised twin of the network (the ``random_twin`` net)."""
    twin_seed: int = 0
    """Seed of the random twin."""

    def __post_init__(self) -> None:
        for s in self.splits:
            T.split_rows(np.zeros(1, bool), s)  # raises on an unknown split

    @classmethod
    def from_section(cls, probes: Mapping) -> ProbeSettings:
        """From the ``probes`` config section as a plain mapping (``OmegaConf.to_container``).

        Raises:
            ConfigError: a bad target, split or probe setting.
        """
        return cls(targets=tuple(T.parse_targets(probes["targets"])), site=probes["site"],
                   layers=None if probes["layers"] is None else
                   tuple(int(i) for i in probes["layers"]),
                   dtype=probes["dtype"], max_layer_gib=probes.get("max_layer_gib"),
                   train_fraction=probes["train_fraction"],
                   seeds=tuple(int(s) for s in probes["seeds"]), splits=tuple(probes["splits"]),
                   threads=probes.get("threads"), probes=tuple(probes["probes"]),
                   baselines=tuple(probes["baselines"]),
                   bilinear=P.BilinearConfig(**probes["bilinear"]),
                   logreg=P.LogRegConfig(**probes["logreg"]),
                   random_twin=bool(probes["random_twin"]["enabled"]),
                   twin_seed=int(probes["random_twin"]["seed"]))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cache_identity(path: Path) -> dict:
    """Identity of an activation cache (what the probes' config hash must cover).

    Raises:
        ConfigError: ``path`` is missing or not a complete activation cache.
    """
    if not path.exists():
        raise ConfigError(f"{path} not found: run the activations stage first "
                          f"(leela-interp stage=activations out_dir={path.parent})")
    with h5py.File(path, "r") as f:
        a = f.attrs
        if a.get("schema") != P.ACTIVATIONS_SCHEMA or not a.get("complete", False):
            raise ConfigError(f"{path} is not a complete activation cache (schema "
                              f"{a.get('schema')!r}, complete={a.get('complete')!r}); rerun "
                              f"the activations stage")
        return {k: str(a.get(k, "")) for k in ("network_sha256", "puzzles_sha256", "config_hash")}


def _scale(f: h5py.File, name: str, values, **attrs) -> h5py.Dataset:
    values = list(values)
    if values and isinstance(values[0], str):
        ds = write_strings(f, name, values)
    else:
        ds = f.create_dataset(name, data=np.asarray(values, np.int64))
    label_axes(ds, name, **attrs)
    ds.make_scale(name)
    return ds


def _dataset(f: h5py.File, name: str, axes: tuple[str, ...], dtype, fill, **attrs) -> h5py.Dataset:
    shape = tuple(f[a].shape[0] for a in axes)
    ds = f.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill)
    ds[...] = fill
    label_axes(ds, *axes, **attrs)
    for i, a in enumerate(axes):
        ds.dims[i].attach_scale(f[a])
    return ds


def create_layout(f: h5py.File, *, nets, splits, probes, targets, layers, seeds, baselines) -> None:
    """Create every dataset of ``probes.h5`` in the (fresh) final file."""
    _scale(f, "net", nets, meaning="network whose activations are probed")
    _scale(f, "split", splits, meaning="puzzle subset trained and tested on")
    _scale(f, "probe", probes)
    _scale(f, "target", targets, square_order="rank*8+file in the side-to-move frame",
           numbering=TOKEN_NUMBERING,
           meaning="what is predicted: a square of a later PV move, as a token")
    _scale(f, "layer", layers, meaning="activations of hook blocks.{layer}.{site}")
    _scale(f, "seed", seeds, meaning="train/test shuffle and probe initialisation")
    _scale(f, "baseline", baselines, meaning="no-activation baselines")
    _dataset(f, "n_correct", AXES, np.int64, -1, units="puzzles",
             meaning="test puzzles predicted right (-1: not computed)")
    _dataset(f, "n_test", ("split", "target", "seed"), np.int64, 0, units="puzzles",
             meaning="test-set size (puzzles of the split's test half on which the target is "
                     "defined)")
    _dataset(f, "accuracy", AXES, np.float64, np.nan, units="fraction", meaning="n_correct/n_test")
    _dataset(f, "done", ("net", "layer"), bool, False,
             meaning="probed (all true in a complete file)")
    _dataset(f, "baseline_n_correct", BASELINE_AXES, np.int64, -1, units="puzzles")
    _dataset(f, "baseline_accuracy", BASELINE_AXES, np.float64, np.nan, units="fraction")


def twin_activations(model_path: str | Path, out: Path, hooks: list[str], dtype: str, *,
                     seed: int, device: str, model_dtype: str, batch_size: int,
                     overwrite: bool = False) -> Path:
    """Write the random twin of ``model_path`` into ``out`` (:data:`TWIN_NET`) and cache its
    activations of ``hooks`` on the clean boards of ``out/puzzles.h5`` (:data:`TWIN_ACTIVATIONS`;
    skipped when current for that twin unless ``overwrite``); returns the cache's path."""
    from leela_interp.experiments.activations import cache_activations
    from leela_interp.network import load_network

    twin = rt.write_random_twin(model_path, out / TWIN_NET, seed=seed)
    path = out / TWIN_ACTIVATIONS
    stale = False
    if path.exists():
        with h5py.File(path, "r") as f:
            stale = f.attrs.get("network_sha256") != sha256_file(twin)
    net = load_network(twin, device=device, dtype=model_dtype)
    cache_activations(net, out / "puzzles.h5", path, hooks=hooks, boards="clean", dtype=dtype,
                      batch_size=batch_size, overwrite=overwrite or stale)
    return path


@dataclass
class Plan:
    """Everything a probes run needs besides the output file (built by :func:`prepare`)."""

    specs: list[T.TargetSpec]
    labels: dict[str, T.TargetLabels]
    layer_map: dict[int, str]
    """``{layer: hook name}``."""
    sources: dict[str, Path]
    """``{net: activations file}`` for the ``net`` axis."""
    splits: list[str]
    seeds: list[int]
    probes: list[str]
    baselines: list[str]
    cuts: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]
    """``{(split, seed): (train rows, test rows)}``."""
    bilinear: P.BilinearConfig
    logreg: P.LogRegConfig
    network_sha256: str

    @property
    def targets(self) -> list[str]:
        return T.output_names(self.specs)


def prepare(model_path: str | Path, out: Path, p: ProbeSettings, *, device: str,
            model_dtype: str, batch_size: int, overwrite: bool = False) -> Plan:
    """Read the puzzles of run folder ``out`` in its activation cache's row order, label every
    target and (with ``p.random_twin``) make the random twin's activation cache
    (:func:`twin_activations`, on ``device`` in ``model_dtype``).

    Raises:
        ConfigError: the cache was made with another network than ``model_path`` or has
            puzzles ``puzzles.h5`` lacks, or a layer of ``p.layers`` is not cached.
    """
    acts_path = out / "activations.h5"
    specs = list(p.targets)
    splits = list(p.splits)
    puzzles = PuzzleSet.load(out / "puzzles.h5")
    with h5py.File(acts_path, "r") as f:
        ids = P.cache_puzzle_ids(f)
        dtype = "float16" if next(iter(f["clean"].values())).dtype == np.float16 else "float32"
        network_sha = str(f.attrs.get("network_sha256", ""))
    if sha256_file(model_path) != network_sha:
        raise ConfigError(f"{acts_path} was computed with network sha256 {network_sha!r}, not "
                          f"model.path={str(model_path)!r}; rerun the activations stage")
    index = {pid: i for i, pid in enumerate(puzzles.ids)}
    missing = [pid for pid in ids if pid not in index]
    if missing:
        raise ConfigError(f"{acts_path} has puzzles not in puzzles.h5 (e.g. {missing[:3]!r}); "
                          f"rerun the activations stage")
    rows = [index[pid] for pid in ids]
    input_format = net_format(read_net(model_path)).input_format
    labels = T.target_labels([puzzles.clean_board(i) for i in rows],
                             [puzzles.pv(i) for i in rows], specs, input_format)
    different = puzzles.different_targets[rows]

    layer_map = P.layer_hooks(acts_path, p.site)
    if p.layers is not None:
        unknown = sorted(set(p.layers) - set(layer_map))
        if unknown:
            raise ConfigError(f"probes.layers {unknown!r} not in {acts_path} (it has "
                              f"{sorted(layer_map)} for site {p.site!r})")
        layer_map = {int(layer): layer_map[int(layer)] for layer in p.layers}
    if not layer_map:
        raise ConfigError(f"{acts_path} has no clean/blocks.*.{p.site} datasets; cache them "
                          f"with activations.hooks=['blocks.*.{p.site}']")
    sources = {"model": acts_path}
    if p.random_twin:
        sources["random_twin"] = twin_activations(
            model_path, out, list(layer_map.values()), dtype, seed=p.twin_seed, device=device,
            model_dtype=model_dtype, batch_size=batch_size, overwrite=overwrite)
    seeds = list(p.seeds)
    split_rows = {s: T.split_rows(different, s) for s in splits}
    return Plan(
        specs=specs, labels=labels, layer_map=layer_map, sources=sources, splits=splits,
        seeds=seeds, probes=list(p.probes), baselines=list(p.baselines),
        cuts={(s, seed): T.train_test(split_rows[s], seed, p.train_fraction)
              for s in splits for seed in seeds},
        bilinear=p.bilinear, logreg=p.logreg,
        network_sha256=network_sha)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_probes(model_path: str | Path, out: str | Path, settings: ProbeSettings, *,
                 config: dict, attrs: dict | None = None, device: str = "cpu",
                 model_dtype: str = "float32", batch_size: int = 256,
                 resume: bool = True) -> Path:
    """Probe every (net, layer) of run folder ``out`` and write ``out/probes.h5``.

    Reads ``out/puzzles.h5`` (labels, splits) and ``out/activations.h5``, the cache of
    ``model_path``. Each finished (net, layer) is a committed chunk of a
    :class:`~leela_interp.outputs.chunked.ChunkedOutput` (``probes.h5.partial.d/``); the file
    is assembled from the chunks when every one is done.

    Args:
        model_path: The network under study (its random twin is made from it).
        out: The run folder.
        settings: What to compute.
        config: What the file records and hashes (its ``config`` attribute).
        attrs: Extra root attributes.
        device: torch device of the random twin's activation pass.
        model_dtype: dtype of the random twin's activation pass.
        batch_size: Positions per forward pass of the random twin.
        resume: Continue from committed chunks of the same config (False: start over, and
            redo the random twin's cache).

    Raises:
        ConfigError: see :func:`prepare`.
    """
    out = Path(out)
    path = out / OUTPUT
    p = settings
    plan = prepare(model_path, out, p, device=device, model_dtype=model_dtype,
                   batch_size=batch_size, overwrite=not resume)
    output = ChunkedOutput(path, schema=SCHEMA, config=config, resume=resume)
    n_test, baseline_n_correct = _baselines(plan)
    with _torch_threads(p.threads):
        _probe_layers(output, plan, n_test, p.dtype, p.max_layer_gib)

    def write(f: h5py.File) -> None:
        create_layout(f, nets=list(plan.sources), splits=plan.splits, probes=plan.probes,
                      targets=plan.targets, layers=list(plan.layer_map), seeds=plan.seeds,
                      baselines=plan.baselines)
        f.attrs.update({"activations": str(out / "activations.h5"), **(attrs or {}),
                        "network_sha256": plan.network_sha256, "site": p.site,
                        "train_fraction": p.train_fraction,
                        "targets": json.dumps([vars(s) for s in plan.specs])})
        if "random_twin" in plan.sources:
            f.attrs["random_twin_sha256"] = sha256_file(out / TWIN_NET)
            f.attrs["random_twin_seed"] = p.twin_seed
        f["n_test"][...] = n_test
        f["baseline_n_correct"][...] = baseline_n_correct
        n_layers = len(plan.layer_map)
        for chunk in output.chunks():
            ni, li = divmod(chunk.key, n_layers)
            f["n_correct"][ni, :, :, :, li, :] = chunk.arrays["n_correct"]
            f["done"][ni, li] = True
        _summarise(f)
        f.attrs["peak_rss_mb"] = peak_rss_mb()

    output.finish(write)
    return path


def _baselines(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """``n_test [split, target, seed]`` and ``baseline_n_correct [split, baseline, target,
    seed]`` (cheap: recomputed by a resumed run)."""
    shape = (len(plan.splits), len(plan.targets), len(plan.seeds))
    n_test = np.zeros(shape, np.int64)
    b_correct = np.full((shape[0], len(plan.baselines), *shape[1:]), -1, np.int64)
    for si, s in enumerate(plan.splits):
        for ki, seed in enumerate(plan.seeds):
            train, test = plan.cuts[s, seed]
            res = P.evaluate_baselines(plan.labels, plan.specs, train, test, plan.baselines)
            for bi, b in enumerate(plan.baselines):
                for ti, t in enumerate(plan.targets):
                    b_correct[si, bi, ti, ki], n_test[si, ti, ki] = res[b][t]
    return n_test, b_correct


def _probe_layers(output: ChunkedOutput, plan: Plan, n_test: np.ndarray, dtype: str | None,
                  max_layer_gib: float | None) -> None:
    """Train and test every probe on every (net, layer) not yet committed (chunk key
    ``net * n_layers + layer``); one layer in memory, or (a layer over ``max_layer_gib``) read
    from the cache batch by batch."""
    nets, layers = list(plan.sources), list(plan.layer_map)
    todo = [(ni, li) for ni in range(len(nets)) for li in range(len(layers))
            if ni * len(layers) + li not in output.keys]
    for ni, li in tqdm(todo, desc="probes", unit="layer"):
        net, layer = nets[ni], layers[li]
        path, hook = plan.sources[net], plan.layer_map[layer]
        with h5py.File(path, "r") as cache:
            ds = cache["clean"][hook]
            gib = ds.size * np.dtype(dtype or ds.dtype).itemsize / 2**30
            stream = max_layer_gib is not None and gib > max_layer_gib
            if stream:
                log.info("%s layer %d: %.2f GiB > probes.max_layer_gib=%s: reading rows from %s "
                         "as needed", net, layer, gib, max_layer_gib, path)
            acts = P.LayerRows(ds, dtype) if stream else P.load_layer(path, hook, dtype=dtype)
            block = _probe_layer(plan, ni, li, acts, n_test)
        output.commit(ni * len(layers) + li, {"n_correct": block})


def _probe_layer(plan: Plan, ni: int, li: int, acts, n_test: np.ndarray) -> np.ndarray:
    """Every probe, split and seed on one (net ``ni``, layer ``li``): ``n_correct [split,
    probe, target, seed]``."""
    targets = plan.targets
    net, layer = list(plan.sources)[ni], list(plan.layer_map)[li]
    block = np.full((len(plan.splits), len(plan.probes), len(targets), len(plan.seeds)), -1,
                    np.int64)
    for si, s in enumerate(plan.splits):
        for ki, seed in enumerate(plan.seeds):
            train, test = plan.cuts[s, seed]
            res = P.evaluate_layer(acts, plan.labels, plan.specs, train, test,
                                   probes=plan.probes, bilinear=plan.bilinear,
                                   logreg=plan.logreg, seed=seed)
            for pi, probe in enumerate(plan.probes):
                for ti, t in enumerate(targets):
                    block[si, pi, ti, ki] = res[probe][t][0]
    acc = _accuracy(block, n_test)
    log.info("%s layer %d (split %s): %s; peak RSS %.0f MiB", net, layer, plan.splits[0],
             ", ".join(f"{probe}/{t} {np.nanmean(acc[0, pi, ti]):.3f}"
                       for pi, probe in enumerate(plan.probes)
                       for ti, t in enumerate(targets)), peak_rss_mb())
    return block


def _accuracy(n_correct: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    """``n_correct [split, probe, target, seed]`` over ``n_test [split, target, seed]``."""
    n = n_test[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n > 0) & (n_correct >= 0), n_correct / n, np.nan)


def _summarise(f: h5py.File) -> None:
    """Fill ``accuracy`` and the seed means with error bars (``*_mean``, ``*_err``)."""
    n_test = f["n_test"][()]
    n_correct = f["n_correct"][()]
    full_n = np.broadcast_to(n_test[None, :, None, :, None, :], n_correct.shape)
    f["accuracy"][...] = np.where((n_correct >= 0) & (full_n > 0),
                                  n_correct / np.maximum(full_n, 1), np.nan)
    mean, err = P.mean_and_error(np.where(n_correct >= 0, n_correct, np.nan), full_n)
    b_correct = f["baseline_n_correct"][()]
    b_n = np.broadcast_to(n_test[:, None], b_correct.shape)
    f["baseline_accuracy"][...] = np.where(b_n > 0, b_correct / np.maximum(b_n, 1), np.nan)
    b_mean, b_err = P.mean_and_error(b_correct, b_n)
    formula = ("2*sqrt(s^2/S + p(1-p)/n): p the mean accuracy over the S seeds, s^2 their "
               "sample variance, n the mean test-set size (docs/probes.md)")
    for name, data, axes in (("accuracy_mean", mean, AXES[:-1]), ("accuracy_err", err, AXES[:-1]),
                             ("baseline_mean", b_mean, BASELINE_AXES[:-1]),
                             ("baseline_err", b_err, BASELINE_AXES[:-1])):
        if name in f:
            del f[name]
        ds = f.create_dataset(name, data=data)
        label_axes(ds, *axes, units="fraction",
                   **({"formula": formula} if name.endswith("err") else {}))
        for i, a in enumerate(axes):
            ds.dims[i].attach_scale(f[a])


def plot(path: str | Path, png: str | Path) -> Path:
    """Accuracy vs layer from ``probes.h5``: one panel per (target, split), its title giving the
    test-set size per seed; solid lines the model, dashed its random twin, shaded bands the
    2-sigma error bars, dotted horizontal lines the no-activation baselines; a panel without any
    test puzzle says "no data". Written as PNG, SVG and PDF (``figures.save_figure``)."""
    # (leela_interp.outputs.figures selects matplotlib's Agg backend)
    from leela_interp.outputs.figures import n_range, no_data, save_figure

    import matplotlib.pyplot as plt  # noqa: E402

    with h5py.File(path, "r") as f:
        axes = {a: (read_strings(f[a]) if f[a].dtype.kind == "O" else list(f[a][()]))
                for a in ("net", "split", "probe", "target", "layer", "baseline")}
        mean, err = f["accuracy_mean"][()], f["accuracy_err"][()]
        b_mean = f["baseline_mean"][()]
        n_test = f["n_test"][()]  # [split, target, seed]
    targets, splits, layers = axes["target"], axes["split"], axes["layer"]
    width, height = max(6.5, 4.2 * len(splits)), 3.0 * len(targets) + 0.8
    fig, grid = plt.subplots(len(targets), len(splits), squeeze=False, sharex=True,
                             figsize=(width, height))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles, names = [], []
    for ti, t in enumerate(targets):
        for si, s in enumerate(splits):
            ax = grid[ti][si]
            ax.set_title(f"{t} | {s} (n_test = {n_range(n_test[si, ti])})", fontsize=9)
            ax.set_xticks(layers)
            if ti == len(targets) - 1:
                ax.set_xlabel("layer")
            if si == 0:
                ax.set_ylabel("test accuracy")
            if not np.isfinite(mean[:, si, :, ti]).any():
                no_data(ax, f"no data: too few test puzzles of split {s!r}\n"
                            f"have a {t!r} label (n_test)")
                continue
            for pi, probe in enumerate(axes["probe"]):
                for ni, net in enumerate(axes["net"]):
                    m, e = mean[ni, si, pi, ti], err[ni, si, pi, ti]
                    ls = "-" if net == "model" else "--"
                    ax.plot(layers, m, ls, marker="o", ms=3, color=colors[pi % len(colors)],
                            label=f"{probe} ({net})")
                    ax.fill_between(layers, m - e, m + e, color=colors[pi % len(colors)],
                                    alpha=0.15)
            for bi, b in enumerate(axes["baseline"]):
                ax.axhline(b_mean[si, bi, ti], ls=":", color=str(0.2 + 0.25 * bi),
                           label=f"baseline: {b}")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if not handles:
                handles, names = ax.get_legend_handles_labels()
    ncol = max(1, min(len(names), int(width // 2.1)))
    legend_in = 0.2 * -(-len(names) // ncol) + 0.1  # legend height, inches
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png)
    plt.close(fig)
    return Path(png)

