"""The ``puzzles`` stage's settings: the two networks, the filters, and everything
:func:`~leela_interp.puzzles.pipeline.build_puzzles` needs (:class:`PipelineConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from leela_interp.errors import ConfigError
from leela_interp.puzzles.corruptions import SelectionThresholds
from leela_interp.puzzles.lichess import PuzzleReader
from leela_interp.puzzles.oracle import OracleConfig
from leela_interp.puzzles.puzzle import HISTORIES

#: What a ``puzzles.h5`` holds (its ``positions`` attribute; ``puzzles.positions``):
#: ``puzzles`` (Lichess puzzles and their solutions, the paper's) or ``ordinary`` (the control).
POSITIONS: tuple[str, ...] = ("puzzles", "ordinary")
#: The filters of ``puzzles.filters`` that ``positions=ordinary`` turns off, whatever their values
#: (they select puzzles: the weak net fails and the strong net finds a unique forcing line).
CONTROL_FILTERS: dict[str, object] = {"hard_max_weak_prob": None,
                                      "correct_min_strong_prob": None,
                                      "forcing_min_weak_prob": None, "unique": False}


#: Backends that can run the networks.
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")


@dataclass(frozen=True)
class NetSpec:
    """One network: its file and, for multi-head nets, which heads (None = lc0's defaults)."""

    path: str
    policy_head: str | None = None
    value_head: str | None = None


@dataclass(frozen=True)
class FilterConfig:
    """The puzzle filters; a threshold of ``None`` turns that filter off (everything passes).

    A ply a puzzle does not have (PV too short) fails the filter that needs it.
    """

    min_pv_length: int = 3
    """``pv_length``: keep puzzles whose PV (solution, both sides' moves) has at least this many
    plies. The paper: > 2."""
    distinct_targets: bool = False
    """Part of ``pv_length``: also require the solver moves among the first ``min_pv_length``
    plies to have distinct targets (:meth:`~leela_interp.puzzles.Puzzle.distinct_solver_targets`;
    with ``min_pv_length`` 5 or 7, a fork's deeper look-ahead puzzle sets). Not in the paper."""
    hard_max_weak_prob: float | None = 0.05
    """``hard``: weak net's P(PV[0]) must be *below* this."""
    correct_min_strong_prob: float | None = 0.5
    """``correct``: strong net's P(PV[i]) must be *above* this at every solver ply (0, 2, ...)."""
    forcing_min_weak_prob: float | None = 0.7
    """``forcing``: weak net's P(PV[1]) (the opponent's reply) must be *above* this."""
    unique: bool = False
    """``unique``: every solver move is Stockfish's best and beats the second by the oracle's
    ``margin_cp`` (needs the oracle)."""

    def __post_init__(self) -> None:
        if not isinstance(self.min_pv_length, int) or self.min_pv_length < 1:
            raise ConfigError(f"filters.min_pv_length must be an integer >= 1, "
                              f"got {self.min_pv_length!r}")
        if not isinstance(self.distinct_targets, bool):
            raise ConfigError(f"filters.distinct_targets must be true or false, "
                              f"got {self.distinct_targets!r}")
        for name in ("hard_max_weak_prob", "correct_min_strong_prob", "forcing_min_weak_prob"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ConfigError(f"filters.{name} must be a probability in [0, 1] or null, "
                                  f"got {value!r}")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything :func:`~leela_interp.puzzles.pipeline.build_puzzles` needs;
    :meth:`from_sections` builds it from the Hydra ``model`` and ``puzzles`` sections (keys
    documented in ``leela_interp/conf/puzzles/paper.yaml``).

    Raises:
        ConfigError: On construction, for an invalid value (the message shows it).
    """

    source: str
    """The Lichess puzzle CSV (plain or ``.zst``)."""
    strong: NetSpec
    """The strong network (the one under study)."""
    weak: NetSpec
    """The weak network."""
    backend: str = "torch"
    """``torch`` (native module) or ``onnxruntime``, for both nets."""
    device: str | None = None
    """torch device of the native modules; None = cuda when available, else cpu."""
    dtype: str = "float32"
    """float32, float16 or bfloat16 (native modules)."""
    batch_size: int = 256
    """Positions per forward pass."""
    history: str = "none"
    """What history the networks see for a puzzle (:data:`~leela_interp.puzzles.puzzle.HISTORIES`):
    ``none`` (the bare position after the setup move; the paper's) or ``setup`` (the setup move
    and the PV moves so far as history; corruptions then edit every history position). Used for
    every network pass of this stage and recorded in ``puzzles.h5`` for the later stages."""
    threads: int | None = None
    """CPU threads of the network passes (torch intra-op, or onnxruntime's); None = leave
    torch's setting / onnxruntime's default. On a busy machine 1 can be much faster."""
    limit: int | None = None
    min_rating: int | None = None
    max_rating: int | None = None
    include_themes: tuple[str, ...] | None = None
    exclude_themes: tuple[str, ...] = ("mateIn1",)
    shard: int = 0
    num_shards: int = 1
    chunk_size: int = 1000
    """Valid puzzles per chunk: the unit of work and of resumption."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    oracle_enabled: bool = False
    """Run Stockfish on puzzles that pass the network filters (evaluations are stored)."""
    oracle: OracleConfig = field(default_factory=OracleConfig)
    oracle_cache: str | None = "oracle_cache.sqlite"
    """sqlite cache of Stockfish results, relative to the run folder; None = no cache."""
    corruptions_enabled: bool = True
    """Look for a corrupted board for each puzzle that passes the filters."""
    require_corruption: bool = False
    """Keep only puzzles that got a corrupted board (the paper's patching set)."""
    thresholds: SelectionThresholds = field(default_factory=SelectionThresholds)
    """Corruption selection criteria (paper defaults)."""
    branching: bool = False
    """Branching corruptions: a candidate must also keep the strong net's top-2 legal moves on
    the clean board legal (:func:`~leela_interp.puzzles.evaluation.top_moves`; a fork's
    two-branch corruptions). Not in the paper."""
    positions: str = "puzzles"
    """What the set holds (:data:`POSITIONS`): ``puzzles`` (the
    rows' puzzles, the paper's) or ``ordinary`` (the control: each row's game position with the
    strong net's own move instead of the setup move, and its greedy line;
    :func:`~leela_interp.puzzles.ordinary.ordinary_puzzles`). :meth:`from_sections` turns the
    puzzle filters off for ``ordinary``."""
    ordinary_plies: int | None = None
    """``positions=ordinary``: plies of each greedy line; None = the row's own PV length."""

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ConfigError(f"puzzles.positions must be one of {list(POSITIONS)}, "
                              f"got {self.positions!r}")
        if self.ordinary_plies is not None and (not isinstance(self.ordinary_plies, int)
                                                or self.ordinary_plies < 1):
            raise ConfigError(f"puzzles.ordinary_plies must be an integer >= 1 or null, "
                              f"got {self.ordinary_plies!r}")
        if self.history not in HISTORIES:
            raise ConfigError(f"puzzles.history must be one of {list(HISTORIES)}, "
                              f"got {self.history!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"puzzles.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or null, got {self.threads!r}")
        for name in ("batch_size", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.oracle_enabled:
            if self.filters.unique:
                raise ConfigError("filters.unique needs the oracle; set puzzles.filters.unique="
                                  "false to run with puzzles.oracle.enabled=false")
            if self.thresholds.min_oracle_drop_cp is not None:
                raise ConfigError("corruptions.min_oracle_drop_cp needs the oracle; set it to "
                                  "null to run with puzzles.oracle.enabled=false")
        if not isinstance(self.branching, bool):
            raise ConfigError(f"corruptions.branching must be true or false, "
                              f"got {self.branching!r}")
        if self.require_corruption and not self.corruptions_enabled:
            raise ConfigError("corruptions.required=true needs corruptions.enabled=true")

    @classmethod
    def from_sections(cls, model: Mapping, puzzles: Mapping) -> PipelineConfig:
        """Build from the ``model`` section (strong net, device, dtype, batch size) and the
        ``puzzles`` section, as plain mappings (``OmegaConf.to_container``); with
        ``positions: ordinary`` the filters of
        :data:`CONTROL_FILTERS` are off."""
        try:
            weak = puzzles["weak_model"]
            filters = dict(puzzles.get("filters") or {})
            positions = puzzles.get("positions", "puzzles")
            if positions == "ordinary":
                filters.update(CONTROL_FILTERS)
            oracle = dict(puzzles.get("oracle") or {})
            corruptions = dict(puzzles.get("corruptions") or {})
            oracle_enabled = bool(oracle.pop("enabled", False))
            oracle_cache = oracle.pop("cache", "oracle_cache.sqlite")
            corruptions_enabled = bool(corruptions.pop("enabled", True))
            require = bool(corruptions.pop("required", False))
            branching = corruptions.pop("branching", False)
            include = puzzles.get("include_themes")
            return cls(
                source=str(puzzles["source"]),
                strong=NetSpec(str(model["path"]), model.get("policy_head"),
                               model.get("value_head")),
                weak=NetSpec(str(weak["path"]), weak.get("policy_head"), weak.get("value_head")),
                backend=puzzles.get("backend", "torch"),
                device=model.get("device"),
                dtype=model.get("dtype", "float32"),
                batch_size=int(model.get("batch_size", 256)),
                history=puzzles.get("history", "none"),
                threads=puzzles.get("threads"),
                limit=puzzles.get("limit"),
                min_rating=puzzles.get("min_rating"),
                max_rating=puzzles.get("max_rating"),
                include_themes=None if include is None else tuple(include),
                exclude_themes=tuple(puzzles.get("exclude_themes") or ()),
                shard=int(puzzles.get("shard", 0)),
                num_shards=int(puzzles.get("num_shards", 1)),
                chunk_size=int(puzzles.get("chunk_size", 1000)),
                filters=FilterConfig(**filters),
                oracle_enabled=oracle_enabled,
                oracle=OracleConfig(**oracle),
                oracle_cache=oracle_cache,
                corruptions_enabled=corruptions_enabled,
                require_corruption=require,
                thresholds=SelectionThresholds(**corruptions),
                branching=branching,
                positions=positions,
                ordinary_plies=puzzles.get("ordinary_plies"),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid puzzles/model config: {exc}") from None

    def reader(self) -> PuzzleReader:
        """The :class:`~leela_interp.puzzles.lichess.PuzzleReader` of :attr:`source` with this
        config's options."""
        return PuzzleReader(self.source, limit=self.limit, min_rating=self.min_rating,
                            max_rating=self.max_rating, include_themes=self.include_themes,
                            exclude_themes=self.exclude_themes, shard=self.shard,
                            num_shards=self.num_shards)

    def to_dict(self) -> dict:
        """Plain nested dicts (JSON-serialisable): what the output's ``config`` attribute holds."""
        return dataclasses.asdict(self)
