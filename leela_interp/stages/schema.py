"""The schema of the whole config (``conf/``): every key's type, range and choices, checked once
before any stage runs (:func:`validate`, called by :func:`leela_interp.stages.run_stages`).

The schema is a tree of dataclasses: OmegaConf merges the config into
``OmegaConf.structured(Config)``, which checks every type (an ``int`` key refuses ``abc``, a
``bool`` key ``maybe``, an unknown key is refused); then :func:`validate` walks the fields and
checks each range and choice given in a field's metadata (:func:`choice`, :func:`names`,
:func:`at_least`, :func:`between`). A list key also takes a single name or number
(``puzzles.exclude_themes=mateIn1`` means ``[mateIn1]``). Any failure is a
:class:`~leela_interp.errors.ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from leela_interp.errors import ConfigError
from leela_interp.outputs.shards import check_shard

MISSING = "???"


def choice(default, options, *, optional: bool = False):
    """A string key that must be one of ``options`` (or null when ``optional``)."""
    return field(default=default, metadata={"choices": tuple(options), "optional": optional})


def names(default, options=None, *, min_len: int = 0):
    """A list key whose items are among ``options`` (any if None), at least ``min_len``."""
    return field(default_factory=lambda: list(default),
                 metadata={"choices": None if options is None else tuple(options),
                           "min_len": min_len})


def at_least(default, low, **kw):
    """A number key ``>= low`` (null allowed if its type is Optional)."""
    return field(default=default, metadata={"low": low, **kw})


def between(default, low, high):
    """A number key strictly between ``low`` and ``high``."""
    return field(default=default, metadata={"open": (low, high)})


# ----------------------------------------------------------------------------- the tree
# (choices copy the modules' own tuples, so that checking a config imports no torch;
# tests/test_schema.py checks that they agree)

DTYPES = ("float32", "float16", "bfloat16")
PATCHING_METHODS = ("exact", "attribution")
RESIDUAL_SITES = ("resid_post", "resid_mid", "resid_pre")
OVERLAP_RULES = ("paper", "third_only")
ABLATION_METHODS = ("zero", "mean", "resample")
PIECE_RULES = ("initial", "moved")
RANDOM_KEY_RULES = ("any", "exclude_third_move")
SPLITS = ("all", "different_targets", "same_targets")
PROBES = ("bilinear", "logreg")
BASELINES = ("majority", "condition", "piece")
BOARDS = ("clean", "corrupted", "both")
COMPRESSIONS = ("none", "lzf", "gzip")
HISTORIES = ("none", "setup")
BACKENDS = ("torch", "onnxruntime")
#: Stages whose sharded outputs ``stage=merge`` joins (``merge.stage``).
MERGE_STAGES = ("puzzles", "activations", "patching", "ablations")
POSITIONS = ("puzzles", "ordinary")


@dataclass
class Model:
    path: str = MISSING
    policy_head: Optional[str] = None
    value_head: Optional[str] = None
    device: Optional[str] = None
    dtype: str = choice("float32", DTYPES)
    batch_size: int = at_least(256, 1)


@dataclass
class Net:
    path: str = MISSING
    policy_head: Optional[str] = None
    value_head: Optional[str] = None


@dataclass
class Filters:
    min_pv_length: int = at_least(3, 1)
    hard_max_weak_prob: Optional[float] = at_least(0.05, 0.0)
    correct_min_strong_prob: Optional[float] = at_least(0.5, 0.0)
    forcing_min_weak_prob: Optional[float] = at_least(0.7, 0.0)
    unique: bool = False
    distinct_targets: bool = False


@dataclass
class Oracle:
    enabled: bool = False
    path: str = "/usr/games/stockfish"
    threads: int = at_least(1, 1)
    hash_mb: int = at_least(16, 1)
    depth: Optional[int] = at_least(16, 1)
    nodes: Optional[int] = at_least(None, 1)
    time_s: Optional[float] = at_least(None, 0.0)
    multipv: int = at_least(2, 2)
    margin_cp: float = at_least(150, 0.0)
    num_engines: Optional[int] = at_least(None, 1)
    cache: Optional[str] = "oracle_cache.sqlite"


@dataclass
class Corruptions:
    enabled: bool = True
    required: bool = False
    max_weak_log_odds_drop: Optional[float] = None
    min_strong_value_drop: Optional[float] = None
    max_strong_prob: Optional[float] = None
    max_jsd: Optional[float] = at_least(None, 0.0)
    min_oracle_drop_cp: Optional[float] = None
    branching: bool = False


@dataclass
class Puzzles:
    source: str = MISSING
    positions: str = choice("puzzles", POSITIONS)
    ordinary_plies: Optional[int] = at_least(None, 1)
    limit: Optional[int] = at_least(None, 0)
    min_rating: Optional[int] = None
    max_rating: Optional[int] = None
    include_themes: Optional[List[str]] = None
    exclude_themes: Optional[List[str]] = names(["mateIn1"])
    shard: int = at_least(0, 0)
    num_shards: int = at_least(1, 1)
    history: str = choice("none", HISTORIES)
    chunk_size: int = at_least(1000, 1)
    backend: str = choice("torch", BACKENDS)
    threads: Optional[int] = at_least(None, 1)
    weak_model: Net = field(default_factory=Net)
    filters: Filters = field(default_factory=Filters)
    oracle: Oracle = field(default_factory=Oracle)
    corruptions: Corruptions = field(default_factory=Corruptions)


@dataclass
class Activations:
    hooks: List[str] = names(["blocks.*.hook_resid_post"], min_len=1)
    boards: str = choice("both", BOARDS)
    dtype: str = choice("float32", ("float32", "float16"))
    compression: str = choice("none", COMPRESSIONS)
    batch_size: Optional[int] = at_least(None, 1)
    shard: int = at_least(0, 0)
    num_shards: int = at_least(1, 1)


@dataclass
class HeadPairs:
    top_n: int = at_least(0, 0)


@dataclass
class Patching:
    method: str = choice("exact", PATCHING_METHODS)
    head_pairs: HeadPairs = field(default_factory=HeadPairs)
    sites: List[str] = names(["resid_post"], RESIDUAL_SITES, min_len=1)
    heads: bool = True
    require_pv0_top: bool = True
    overlap_rule: str = choice("paper", OVERLAP_RULES)
    skip_identical: bool = True
    chunk_size: int = at_least(32, 1)
    max_puzzles: Optional[int] = at_least(None, 0)
    figures: bool = True
    shard: int = at_least(0, 0)
    num_shards: int = at_least(1, 1)


@dataclass
class Edge:
    enabled: bool = True
    layer: Optional[int] = at_least(None, 0)
    head: Optional[int] = at_least(None, 0)
    full_sweep: bool = False
    sweep_renormalize: bool = False


@dataclass
class Find:
    enabled: bool = True
    min_lift: float = at_least(2.0, 0.0)
    max_positions: Optional[int] = at_least(None, 1)


@dataclass
class PieceHeads:
    find: Find = field(default_factory=Find)
    min_pv_length: int = at_least(5, 3)
    piece_rule: str = choice("initial", PIECE_RULES)
    random_key: str = choice("any", RANDOM_KEY_RULES)
    heads: Dict[str, Any] = field(default_factory=lambda: {"knight": [], "bishop": [],
                                                           "rook": []})


@dataclass
class Ablations:
    puzzles: str = choice("corrupted", ("corrupted", "all"))
    require_pv0_top: bool = True
    method: List[str] = names(["zero", "mean", "resample"], ABLATION_METHODS, min_len=1)
    seed: int = 0
    chunk_size: int = at_least(32, 1)
    max_puzzles: Optional[int] = at_least(None, 0)
    figures: bool = True
    edge: Edge = field(default_factory=Edge)
    piece_heads: PieceHeads = field(default_factory=PieceHeads)
    shard: int = at_least(0, 0)
    num_shards: int = at_least(1, 1)


@dataclass
class Bilinear:
    rank: int = at_least(32, 1)
    lr: float = at_least(0.01, 0.0)
    epochs: int = at_least(5, 1)
    batch_size: int = at_least(64, 1)
    weight_decay: float = at_least(0.0, 0.0)


@dataclass
class LogReg:
    components: int = at_least(8, 1)
    C: float = at_least(1.0, 0.0)
    max_iter: int = at_least(200, 1)
    pca_rows: int = at_least(20000, 1)


@dataclass
class RandomTwin:
    enabled: bool = True
    seed: int = 0


@dataclass
class Probes:
    site: str = "hook_resid_post"
    layers: Optional[List[int]] = None
    dtype: Optional[str] = choice(None, ("float32", "float16"), optional=True)
    max_layer_gib: Optional[float] = at_least(1.0, 0.0)
    train_fraction: float = between(0.7, 0.0, 1.0)
    seeds: List[int] = names([0, 1, 2], min_len=1)
    splits: List[str] = names(["all", "different_targets"], SPLITS, min_len=1)
    threads: Optional[int] = at_least(None, 1)
    probes: List[str] = names(["bilinear", "logreg"], PROBES, min_len=1)
    baselines: List[str] = names(["majority", "condition", "piece"], BASELINES)
    targets: List[Any] = field(default_factory=list)
    bilinear: Bilinear = field(default_factory=Bilinear)
    logreg: LogReg = field(default_factory=LogReg)
    random_twin: RandomTwin = field(default_factory=RandomTwin)


@dataclass
class Gallery:
    k: int = at_least(3, 0)
    seed: int = 0


@dataclass
class Report:
    gallery: Gallery = field(default_factory=Gallery)
    control_dir: Optional[str] = None


@dataclass
class Merge:
    stage: str = choice("puzzles", MERGE_STAGES)
    inputs: List[str] = field(default_factory=list)


@dataclass
class Config:
    stage: Any = "all"
    out_dir: str = "runs/default"
    inputs_dir: Optional[str] = None
    data_dir: Optional[str] = None
    force: Any = False
    threads: Optional[int] = at_least(None, 1)
    path: Optional[str] = None
    stats: bool = True
    puzzle_id: Optional[str] = None
    report: Report = field(default_factory=Report)
    merge: Merge = field(default_factory=Merge)
    model: Model = field(default_factory=Model)
    puzzles: Puzzles = field(default_factory=Puzzles)
    activations: Activations = field(default_factory=Activations)
    patching: Patching = field(default_factory=Patching)
    ablations: Ablations = field(default_factory=Ablations)
    probes: Probes = field(default_factory=Probes)


# ----------------------------------------------------------------------------- checking


def _is_list(tp) -> bool:
    args = [a for a in get_args(tp) if a is not type(None)]
    return get_origin(tp) is list or any(get_origin(a) is list for a in args)


def _optional(tp) -> bool:
    return type(None) in get_args(tp)


def _type_name(tp) -> str:
    args = [a for a in get_args(tp) if a is not type(None)]
    base = args[0] if _optional(tp) and len(args) == 1 else tp
    name = getattr(base, "__name__", None) if get_origin(base) is None else None
    text = name or str(base).replace("typing.", "")
    return f"null or {text}" if _optional(tp) else text


def _fields(cls, prefix: str = ""):
    """``(dotted key, field, resolved type)`` of every leaf and node of ``cls``."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{prefix}{f.name}", f, hints[f.name]


def _wrap_single_names(cfg: DictConfig, cls=Config, prefix: str = "") -> None:
    """A scalar given for a list key becomes a one-item list, in ``cfg`` itself."""
    for key, f, tp in _fields(cls, prefix):
        if not (dataclasses.is_dataclass(tp) or _is_list(tp)):
            continue  # not resolved here: a data default (``${leela_interp.data:...}``) may
            # fail outside a checkout, which only the stage that reads it must report
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        if dataclasses.is_dataclass(tp) and isinstance(node, DictConfig):
            _wrap_single_names(cfg, tp, key + ".")
        elif _is_list(tp) and node is not None and not isinstance(node, ListConfig) \
                and not OmegaConf.is_missing(cfg, key):
            OmegaConf.update(cfg, key, [node], force_add=True)


def _check(cfg: DictConfig, cls=Config, prefix: str = "") -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    if {"shard", "num_shards"} <= names:  # a sharded stage: 0 <= shard < num_shards
        check_shard(prefix.rstrip("."), OmegaConf.select(cfg, prefix + "shard"),
                    OmegaConf.select(cfg, prefix + "num_shards"))
    for key, f, tp in _fields(cls, prefix):
        if dataclasses.is_dataclass(tp):
            _check(cfg, tp, key + ".")
            continue
        if OmegaConf.is_missing(cfg, key):
            continue  # checked where it is needed (a path the stage reads)
        meta = f.metadata
        if not meta:
            continue  # its type is checked by the merge; nothing else to check (and a data
            # default is resolved only by the stage that reads it)
        value = OmegaConf.select(cfg, key)
        if isinstance(value, ListConfig):
            items = list(value)
            if len(items) < meta.get("min_len", 0):
                raise ConfigError(f"{key}=[]: give at least {meta['min_len']} item"
                                  + ("" if meta["min_len"] == 1 else "s")
                                  + (f" of {list(meta['choices'])}" if meta.get("choices")
                                     else ""))
            bad = [v for v in items if meta.get("choices") and v not in meta["choices"]]
            if bad:
                raise ConfigError(f"{key}: unknown {bad[0]!r} in {items!r}; choose from "
                                  f"{list(meta['choices'])}")
            continue
        if value is None:
            continue
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{key}={value!r}; choose one of {list(meta['choices'])}"
                              + (" or null" if meta.get("optional") else ""))
        if "low" in meta and value < meta["low"]:
            raise ConfigError(f"{key}={value!r}; give a number >= {meta['low']}"
                              + (" or null" if _optional(tp) else ""))
        if "open" in meta:
            low, high = meta["open"]
            if not (low < value < high) or math.isnan(value):
                raise ConfigError(f"{key}={value!r}; give a number strictly between {low} and "
                                  f"{high}")


def _expected(key: str) -> str:
    cls, tp = Config, None
    for part in key.split("."):
        hints = get_type_hints(cls)
        if part not in hints:
            return "a key of the schema"
        tp = hints[part]
        cls = tp if dataclasses.is_dataclass(tp) else None
        if cls is None:
            break
    return _type_name(tp)


def validate(cfg: DictConfig) -> DictConfig:
    """Check ``cfg`` against :class:`Config` (types, ranges, choices) before any work.

    A scalar given for a list key is first made a one-item list in ``cfg``.

    Returns:
        ``cfg`` (with those lists).

    Raises:
        ConfigError: a key of the wrong type, out of range, not among its choices, an empty
            list where one item is needed, or a key the schema does not know; the message names
            the key, the value and what is allowed.
    """
    was_struct = OmegaConf.is_struct(cfg)
    OmegaConf.set_struct(cfg, False)
    try:
        _wrap_single_names(cfg)
    finally:
        OmegaConf.set_struct(cfg, was_struct)
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    plain.pop("hydra", None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        value = OmegaConf.select(plain, key, default="?", throw_on_missing=False) \
            if key != "?" else "?"
        if "not in struct" in str(exc) or "Key '" in str(exc) and "not in" in str(exc):
            raise ConfigError(f"unknown config key {key!r}: not in the schema (a typo?); see "
                              f"the README's config tables") from None
        raise ConfigError(f"{key}={value!r}: expected {_expected(key)} "
                          f"({str(exc).splitlines()[0]})") from None
    _check(merged)
    return cfg


# ----------------------------------------------------------------------------- the inputs

#: Stages that load ``model.path`` (``show`` falls back on the network ``patching.h5`` records).
NEEDS_MODEL = frozenset({"info", "puzzles", "activations", "patching", "ablations", "probes"})


def check_net_path(key: str, value) -> None:
    """A network file named by config key ``key`` must be a readable file.

    Raises:
        WeightsFormatError: it is missing or a folder; the message names the file, the key and
            where relative paths start.
    """
    from leela_interp.errors import WeightsFormatError

    path = Path(str(value))
    why = None if path.is_file() else "a folder, not a file" if path.is_dir() else "no such file"
    if why:
        where = "" if path.is_absolute() else f"; relative paths are from the folder you run " \
                                              f"in, {Path.cwd()}"
        raise WeightsFormatError(f"{path}: cannot read network file ({why}): pass {key}=FILE "
                                 f"(a .pb.gz or .onnx network){where}")


def check_inputs(cfg: DictConfig, stages: list[str]) -> None:
    """What the stages about to run read, checked before any work: the network files, the
    puzzle source, the torch device, the Stockfish binary.

    Raises:
        WeightsFormatError: ``model.path`` or ``puzzles.weak_model.path`` is not a file.
        ConfigError: ``puzzles.source`` is not a file; ``model.device`` is CUDA on a machine
            without it.
        StockfishNotFoundError: the oracle is on and ``puzzles.oracle.path`` does not start as a
            UCI engine.
    """
    if NEEDS_MODEL.intersection(stages):
        check_net_path("model.path", cfg.model.path)
        device = cfg.model.device
        if device and str(device).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"model.device={device!r}, but torch finds no CUDA device "
                                  f"here; give model.device=cpu or null (CUDA when available)")
    if "puzzles" in stages:
        source = Path(str(cfg.puzzles.source))
        if not source.is_file():
            why = "a folder, not a file" if source.is_dir() else "no such file"
            where = "" if source.is_absolute() else f" (relative to {Path.cwd()})"
            raise ConfigError(f"puzzles.source={str(source)!r}: {why}{where}; give a Lichess "
                              f"puzzle CSV (.csv or .csv.zst)")
        check_net_path("puzzles.weak_model.path", cfg.puzzles.weak_model.path)
        if cfg.puzzles.oracle.enabled:
            from leela_interp.puzzles.oracle import check_engine

            check_engine(cfg.puzzles.oracle.path)
