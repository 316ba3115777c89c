"""Activation caches: chosen hook activations of a puzzle set, streamed to ``activations.h5``.

:func:`cache_activations` runs the network over the puzzle set batch by batch and writes each
batch straight to disk, so memory stays flat in the number of puzzles. Work happens in
``activations.h5.partial``, a :class:`~leela_interp.outputs.rows.RowsFile`: every dataset's
storage is allocated when the file is created, each batch is flushed and fsync'd and then
recorded in ``activations.h5.partial.journal``, a rerun verifies the recorded rows and continues
after the last good batch, and only a finished file is renamed to ``activations.h5``. One writer
thread (:class:`~leela_interp.outputs.rows.RowsWriter`) writes and commits each batch while
the next one is computed.

File layout (schema ``leela_interp.activations/2``)::

    /                       attrs: schema, config (JSON), config_hash, network_sha256,
                                   puzzles_sha256, complete, rows_done, hooks (JSON list),
                                   boards (JSON list), network_path, leela_interp_version
    /puzzle_id              [N] UTF-8 Lichess puzzle ids (row i = puzzle i of the puzzle set)
    /clean/<hook name>      [N, *hook shape], e.g. clean/blocks.3.hook_resid_post [N, 64, d_model]
    /corrupted/<hook name>  same; rows of puzzles without a corrupted board are NaN
    /corrupted/valid        [N] bool: which corrupted rows are real

Every activation dataset labels its axes (``puzzle``, ``square``, ``d_model``, ``head``,
``query``, ``key``, ...) and carries ``pov = "side_to_move"`` and ``square_order = "rank*8+file
in the side-to-move frame"``: token ``t`` is ``rank * 8 + file`` seen from the side to move, as
everywhere in this package (``leela_interp.board.encoding.square_to_token`` converts). A dataset
with a ``square``, ``query`` or ``key`` axis also carries ``numbering =
leela_interp.board.encoding.TOKEN_NUMBERING``. Each board is encoded in its own frame: a corrupted
board's tokens are the clean board's squares whenever both have the same side to move and
canonical transform (the puzzles patching uses; the others are ``ok = false`` there).

Read one hook for some puzzles with :func:`load_activation`, stream it with
:func:`iter_activation`, or open the file once with :class:`ActivationFile`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from leela_interp.board.encoding import TOKEN_NUMBERING
from leela_interp.errors import ConfigError, LeelaInterpError
from leela_interp.identity import sha256_file
from leela_interp.outputs.results import (config_hash, has_partial, label_axes, partial_path,
                                          read_strings, remove_leftovers, write_strings)
from leela_interp.outputs.rows import RowsFile, RowsWriter
from leela_interp.outputs.shards import gather
from leela_interp.puzzles.puzzle_set import PuzzleSet

log = logging.getLogger(__name__)

SCHEMA = "leela_interp.activations/2"
#: Point of view of every cached value.
POV = "side_to_move"
#: Token order of every ``square`` / ``query`` / ``key`` axis.
SQUARE_ORDER = "rank*8+file in the side-to-move frame"
#: Axes indexed by tokens; a dataset with one carries ``numbering = TOKEN_NUMBERING``.
SQUARE_AXES = frozenset({"square", "query", "key"})
#: ``boards`` choices and the groups each one writes.
BOARDS = {"clean": ("clean",), "corrupted": ("corrupted",), "both": ("clean", "corrupted")}
#: ``dtype`` choices.
DTYPES = {"float32": np.float32, "float16": np.float16}
#: The same dtypes in torch (activations are cast where the net runs, before the copy to host).
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: ``compression`` choices (``none`` = no filter). gzip and lzf also use the shuffle filter.
COMPRESSIONS = ("none", "lzf", "gzip")
#: Target size of one HDF5 chunk: ``chunk_rows`` whole puzzles of one hook.
CHUNK_BYTES = 4 << 20


class ActivationCacheMismatchError(LeelaInterpError, ValueError):
    """An activation cache was made with another network or puzzle set than the one in use."""


# --- axis names ------------------------------------------------------------------------------

_ATTENTION_MAPS = ("hook_pattern", "hook_scores", "hook_smolgen")
_PER_HEAD = ("hook_q", "hook_k", "hook_v", "hook_z")


def axis_names(hook: str, shape: Sequence[int]) -> tuple[str, ...]:
    """Axis labels of one hook's activation for one board (no leading ``puzzle`` axis).

    >>> axis_names("blocks.3.hook_resid_post", (64, 768))
    ('square', 'd_model')
    >>> axis_names("blocks.3.attn.hook_pattern", (24, 64, 64))
    ('head', 'query', 'key')
    """
    leaf = hook.rsplit(".", 1)[-1]
    shape = tuple(shape)
    if len(shape) == 3 and leaf in _ATTENTION_MAPS:
        return ("head", "query", "key")
    if len(shape) == 3 and leaf in _PER_HEAD:
        return ("head", "square", "d_head")
    if len(shape) == 2 and shape[0] == 64:
        if leaf == "hook_scores":  # policy_head.hook_scores: from-square x to-square
            return ("query", "key")
        if hook.endswith("mlp.hook_post") or hook.endswith("ffn.hook_post"):
            return ("square", "d_mlp")
        return ("square", "d_model")
    if len(shape) == 1:
        if hook.startswith("policy_head") and leaf == "hook_logits":
            return ("move",)
        if hook.startswith("value_head") and leaf == "hook_logits":
            return ("wdl",) if shape[0] == 3 else ("value",)
        if hook.startswith("mlh_head") and leaf == "hook_logits":
            return ("moves_left",)
        if ".se." in hook:
            return ("d_model",)
    return tuple(f"dim_{i}" for i in range(len(shape)))


# --- writing ---------------------------------------------------------------------------------

def puzzle_set_sha256(puzzles: PuzzleSet) -> str:
    """sha256 of a puzzle set's content (ids, FENs, moves, corrupted FENs), for in-memory sets."""
    digest = hashlib.sha256()
    for row in zip(puzzles.ids, puzzles.fens, puzzles.moves, puzzles.corrupted_fens):
        digest.update(json.dumps([row[0], row[1], list(row[2]), row[3]]).encode())
    return digest.hexdigest()


def cache_config(*, hooks: str | Sequence[str], boards: str, dtype: str, compression: str,
                 model: Mapping | None = None) -> dict:
    """The config an activation cache records and hashes (decides skipping and resuming).

    ``batch_size`` is left out on purpose: it does not change the values, so a resume may use
    another one. ``model`` holds what changes values besides the weights (dtype, head choice);
    the weights themselves are identified by ``network_sha256``.
    """
    hooks = [hooks] if isinstance(hooks, str) else [str(h) for h in hooks]
    if boards not in BOARDS:
        raise ConfigError(f"activations.boards={boards!r}; choose one of {list(BOARDS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"activations.dtype={dtype!r}; choose one of {list(DTYPES)}")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"activations.compression={compression!r}; "
                          f"choose one of {list(COMPRESSIONS)}")
    if not hooks:
        raise ConfigError("activations.hooks is empty; give hook names or globs, "
                          "e.g. ['blocks.*.hook_resid_post']")
    return {"hooks": hooks, "boards": boards, "dtype": dtype, "compression": compression,
            "model": dict(model or {})}


def check_cache(path: str | Path, *, network_sha256: str, puzzles_sha256: str,
                config: Mapping | None = None) -> bool:
    """Whether ``path`` is a complete cache for this network, puzzle set and (if given) config.

    Returns False when the file is missing, incomplete, made under another config, or of
    another schema (a cache of an older layout is rebuilt, with a log line).

    Raises:
        ActivationCacheMismatchError: the file was made with another network or puzzle set.
    """
    path = Path(path)
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return False
    _check_identity(path, attrs, network_sha256, puzzles_sha256)
    if not attrs.get("complete", False):
        return False
    if attrs.get("schema") != SCHEMA:
        log.info("%s has schema %r, not %r (an older layout): it is rebuilt", path,
                 attrs.get("schema"), SCHEMA)
        return False
    return config is None or attrs.get("config_hash") == config_hash(config)


def _check_identity(path: Path, attrs: Mapping, network_sha256: str | None,
                    puzzles_sha256: str | None) -> None:
    for what, key, expected, fix in (
            ("network", "network_sha256", network_sha256, "model.path"),
            ("puzzle set", "puzzles_sha256", puzzles_sha256, "the run folder's puzzles.h5")):
        found = attrs.get(key)
        if expected is None or found is None or found == expected:
            continue
        extra = f" ({attrs['network_path']})" if key == "network_sha256" and \
            attrs.get("network_path") else ""
        raise ActivationCacheMismatchError(
            f"{path} was made with another {what}: its {key} is {found!r}{extra}, but this run's "
            f"is {expected!r}. Check {fix}, use another out_dir, or rebuild the cache with "
            f"force=true (cache_activations(..., overwrite=True)).")


def _chunk_rows(row_bytes: int, batch_size: int, n: int) -> int:
    """Rows per chunk: about CHUNK_BYTES, at most one batch, and a divisor of the batch size
    (so full batches write whole chunks and never read a chunk back)."""
    rows = max(1, min(CHUNK_BYTES // max(row_bytes, 1), batch_size, max(n, 1)))
    while batch_size % rows:
        rows -= 1
    return rows


def _create_layout(part: RowsFile, *, ids: Sequence[str], shapes: Mapping[str, tuple[int, ...]],
                   groups: Sequence[str], valid: np.ndarray, dtype: str, compression: str,
                   batch_size: int, attrs: Mapping[str, object]) -> None:
    f = part.file
    f.attrs.update(attrs)
    n = len(ids)
    write_strings(f, "puzzle_id", ids)
    label_axes(f["puzzle_id"], "puzzle")
    np_dtype = np.dtype(DTYPES[dtype])
    for group_name in groups:
        g = f.create_group(group_name)
        g.attrs["pov"] = POV
        g.attrs["square_order"] = SQUARE_ORDER
        for hook, shape in shapes.items():
            rows = _chunk_rows(int(np.prod(shape)) * np_dtype.itemsize, batch_size, n)
            ds = part.create_dataset(g, hook, shape=(n, *shape), dtype=np_dtype,
                                     chunks=(rows, *shape),
                                     compression=None if compression == "none" else compression)
            axes = axis_names(hook, shape)
            label_axes(ds, "puzzle", *axes, pov=POV, square_order=SQUARE_ORDER,
                       hook=hook, board=group_name)
            if SQUARE_AXES & set(axes):
                ds.attrs["numbering"] = TOKEN_NUMBERING
        if group_name == "corrupted":
            label_axes(g.create_dataset("valid", data=valid), "puzzle")


def cache_activations(net, puzzles: PuzzleSet | str | Path, path: str | Path, *,
                      hooks: str | Sequence[str] = "blocks.*.hook_resid_post",
                      boards: str = "both", dtype: str = "float32", compression: str = "none",
                      batch_size: int = 256, puzzles_sha256: str | None = None,
                      config: Mapping | None = None, attrs: Mapping | None = None,
                      overwrite: bool = False, progress: bool = True,
                      after_batch: Callable[[int], None] | None = None,
                      writer_thread: bool = True) -> Path:
    """Run ``net`` over every puzzle and write the chosen hooks' activations to ``path``.

    Resumable and safe: work goes into ``path + ".partial"``; a rerun with the same network,
    puzzle set and config continues after the last complete batch; ``path`` appears only when
    every row is written. If ``path`` is already complete for the same network, puzzle set and
    config, nothing is done.

    Args:
        net: a :class:`~leela_interp.network.net.LeelaNet`.
        puzzles: a :class:`PuzzleSet`, or the path of a ``puzzles.h5`` (its file sha256 is then
            the puzzle set's identity).
        path: the output file, normally ``run_dir / "activations.h5"``.
        hooks: hook names or globs (``net.hook_names()`` lists them).
        boards: ``"clean"``, ``"corrupted"`` or ``"both"``.
        dtype: ``"float32"`` (exact) or ``"float16"`` (half the disk).
        compression: ``"none"``, ``"lzf"`` (fast) or ``"gzip"`` (smaller, slow).
        batch_size: puzzles per forward pass and per write (memory is about two batches: the
            one being written and the one being computed). The forward pass runs where ``net``
            is (move it first for a GPU).
        puzzles_sha256: identity of an in-memory puzzle set; default: the file's sha256 when
            ``puzzles`` is a path, else :func:`puzzle_set_sha256`.
        config: what the file records and hashes; default :func:`cache_config` of the arguments
            plus the net's dtype and head choice.
        attrs: extra root attributes to record (not hashed), e.g. the stage's
            ``puzzles_net`` check (:func:`leela_interp.stages.common.puzzles_net`).
        overwrite: rebuild even if a complete or partial cache exists (also one made with
            another network or puzzle set).
        progress: show a tqdm progress bar.
        after_batch: called with the number of complete rows after each batch is on disk
            and committed, in the writer thread (tests use it to simulate a crash: what it
            raises is re-raised here, and the rows committed before stay resumable).
        writer_thread: write each batch in a background thread while the next one is
            computed (:class:`~leela_interp.outputs.rows.RowsWriter`); ``False`` writes in
            turn. The file is the same either way.

    Returns:
        ``path``.

    Raises:
        ActivationCacheMismatchError: ``path`` or its partial file was made with another network
            or puzzle set (and ``overwrite`` is off).
        OSError: writing the file failed (in the writer thread: the original error, the rows
            committed before it kept for a resume).
        ConfigError: a bad ``boards`` / ``dtype`` / ``compression`` value, or no hooks.
        UnknownHookError: a hook name or glob that matches nothing.
    """
    path = Path(path)
    if isinstance(puzzles, (str, Path)):
        puzzles_sha256 = puzzles_sha256 or sha256_file(puzzles)
        puzzles = PuzzleSet.load(puzzles)
    puzzles_sha256 = puzzles_sha256 or puzzle_set_sha256(puzzles)
    network_sha256 = net.sha256 or "unknown"
    param = next(net.parameters())
    if config is None:
        config = cache_config(hooks=hooks, boards=boards, dtype=dtype, compression=compression,
                              model={"dtype": str(param.dtype).removeprefix("torch."),
                                     "policy_head": net.config.policy_head,
                                     "value_head": net.config.value_head})
    else:
        cache_config(hooks=hooks, boards=boards, dtype=dtype, compression=compression)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}; must be >= 1")
    hook_names = net.match_hooks(hooks)
    shapes = {name: shape for name, shape in net.hook_names().items() if name in hook_names}
    groups = BOARDS[boards]
    n = len(puzzles)
    valid = np.array([bool(fen) for fen in puzzles.corrupted_fens], dtype=bool)

    if not overwrite:
        if check_cache(path, network_sha256=network_sha256, puzzles_sha256=puzzles_sha256,
                       config=config):
            log.info("%s is complete for this network, puzzle set and config", path)
            remove_leftovers(path)
            return path
        check_cache(partial_path(path), network_sha256=network_sha256,
                    puzzles_sha256=puzzles_sha256)
    root = {"network_sha256": network_sha256, "puzzles_sha256": puzzles_sha256,
            "network_path": str(getattr(net, "path", "") or ""), **dict(attrs or {}),
            "hooks": json.dumps(list(shapes)), "boards": json.dumps(list(groups))}

    def layout(part: RowsFile) -> None:
        _create_layout(part, ids=puzzles.ids, shapes=shapes, groups=groups, valid=valid,
                       dtype=dtype, compression=compression, batch_size=batch_size, attrs=root)

    with RowsFile(path, schema=SCHEMA, config=config, rows=n, create=layout,
                  resume=not overwrite) as part:
        done = part.rows_done
        datasets = {(g, hook): part.file[g][hook] for g in groups for hook in shapes}
        bar = tqdm(total=n, initial=done, unit="puzzle", desc="activations", disable=not progress)

        def committed(stop: int) -> None:
            bar.update(stop - bar.n)
            if after_batch is not None:
                after_batch(stop)

        try:
            with RowsWriter(part, thread=writer_thread, on_commit=committed) as writer:
                for start in range(done, n, batch_size):
                    stop = min(start + batch_size, n)
                    batch = [(g, *_forward(net, puzzles, g, start, stop, valid, shapes,
                                           TORCH_DTYPES[dtype])) for g in groups]
                    ready = torch.cuda.Event() if param.is_cuda else None
                    if ready is not None:
                        ready.record()
                    writer.submit(stop, functools.partial(_write_rows, datasets, start, stop,
                                                          batch, ready))
        finally:
            bar.close()
        part.finish()
    return path


def _forward(net, puzzles: PuzzleSet, group: str, start: int, stop: int, valid: np.ndarray,
             names: Sequence[str],
             dtype: torch.dtype) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """One batch's forward pass on ``group``'s boards: the rows that have a board, and each
    hook's activations cast to ``dtype`` where the net is and copied to host memory
    (``non_blocking`` from CUDA: wait for an event recorded after this before reading them)."""
    if group == "clean":
        rows = np.arange(start, stop)
        boards = [puzzles.clean_board(i) for i in rows]
    else:
        rows = np.flatnonzero(valid[start:stop]) + start
        boards = [puzzles.corrupted_board(i) for i in rows]
    if not len(rows):
        return rows, {}
    with torch.inference_mode():
        _, cache = net.run_with_cache(net.encode(boards), names=list(names))
        return rows, {hook: t.to(dtype).to("cpu", non_blocking=t.is_cuda)
                      for hook, t in cache.items()}


def _write_rows(datasets: Mapping[tuple[str, str], h5py.Dataset], start: int, stop: int,
                batch: Sequence[tuple[str, np.ndarray, dict[str, torch.Tensor]]],
                ready: torch.cuda.Event | None) -> None:
    """Write rows ``[start, stop)`` of every group and hook (rows without a board are NaN)."""
    if ready is not None:
        ready.synchronize()
    for group, rows, cache in batch:
        full = len(rows) == stop - start
        for (g, hook), ds in datasets.items():
            if g != group:
                continue
            if full:
                values = cache[hook].numpy()
            else:
                values = np.full((stop - start, *ds.shape[1:]), np.nan, dtype=ds.dtype)
                if len(rows):
                    values[rows - start] = cache[hook].numpy()
            ds[start:stop] = values


# --- merging shards ------------------------------------------------------------------------

#: Root attributes a shard's cache has and the merged cache does not: its place in the split.
SHARD_ATTRS = ("shard", "num_shards")
#: Root attributes :class:`RowsFile` writes itself (not copied from a shard).
_OWN_ATTRS = ("schema", "config", "config_hash", "complete", "rows_done",
              "leela_interp_version", "command", "git_commit")


def merge_activations(paths: Sequence[str | Path], path: str | Path, *, batch_size: int = 256,
                      overwrite: bool = False, progress: bool = True,
                      puzzles: str | Path | None = None) -> Path:
    """Join the caches of shards ``0 .. n-1`` (``paths[k]`` is shard ``k``) into ``path``: the
    cache an unsharded run writes.

    Row ``i`` of the result is row ``i // n`` of shard ``i % n``. Every dataset equals the
    unsharded run's, and every root attribute but ``command`` (the command line of the run that
    wrote it); its config (less ``shard``/``num_shards``) and hash are the unsharded run's, so
    a later ``stage=activations`` there finds it up to date. Written like
    :func:`cache_activations` (``RowsFile``: resumable, under its name only when complete);
    nothing is done when ``path`` is complete for the same network, puzzle set and config.

    Args:
        paths: the shards' ``activations.shard-k-of-n.h5``, in shard order
            (:func:`leela_interp.outputs.shards.find_shards`).
        path: the merged file, normally ``run_dir / "activations.h5"``.
        batch_size: rows per write (and the chunking an unsharded run of that batch size has).
        overwrite: rebuild even if ``path`` or its partial file exists.
        progress: show a tqdm progress bar.
        puzzles: the ``puzzles.h5`` beside ``path``; when given and present, the shards must
            have been made from it.

    Returns:
        ``path``.

    Raises:
        ConfigError: a shard is not shard ``k`` of ``len(paths)``, the shards were made with
            another config, network or puzzle set (or from another ``puzzles.h5`` than
            ``puzzles``), or their row counts are not those of one split.
    """
    path, paths = Path(path), [Path(p) for p in paths]
    n_shards = len(paths)
    files: list[ActivationFile] = []
    try:
        for p in paths:
            files.append(ActivationFile(p))
            if puzzles is not None and len(files) == 1 and Path(puzzles).exists():
                made_from = files[0].puzzles_sha256
                if made_from != sha256_file(puzzles):
                    raise ConfigError(
                        f"{p} was made from another puzzles.h5 than {puzzles} (sha256 "
                        f"{made_from[:12]}...): merge into the folder whose puzzles.h5 the "
                        f"shards read (their inputs_dir)")
        config, total = _check_shards(files)
        first = files[0]
        groups = first.boards
        hooks = first.hooks
        shapes = {hook: tuple(first.dataset(hook, groups[0]).shape[1:]) for hook in hooks}
        network_sha256, puzzles_sha256 = first.network_sha256, first.puzzles_sha256
        if not overwrite and check_cache(path, network_sha256=network_sha256,
                                         puzzles_sha256=puzzles_sha256, config=config):
            log.info("%s is complete for these shards' network, puzzle set and config", path)
            remove_leftovers(path)
            return path
        ids = np.empty(total, dtype=object)
        for k, f in enumerate(files):
            ids[k::n_shards] = f.puzzle_ids
        valid = (gather([f.file["corrupted/valid"] for f in files], 0, total)
                 if "corrupted" in groups else np.ones(total, dtype=bool))
        root = {k: v for k, v in first.file.attrs.items()
                if k not in _OWN_ATTRS + SHARD_ATTRS}

        def layout(part: RowsFile) -> None:
            _create_layout(part, ids=list(ids), shapes=shapes, groups=groups, valid=valid,
                           dtype=config["dtype"], compression=config["compression"],
                           batch_size=batch_size, attrs=root)

        sources = {(g, hook): [f.file[g][hook] for f in files] for g in groups for hook in hooks}
        with RowsFile(path, schema=SCHEMA, config=config, rows=total, create=layout,
                      resume=not overwrite) as part:
            datasets = {key: part.file[key[0]][key[1]] for key in sources}
            bar = tqdm(total=total, initial=part.rows_done, unit="puzzle", desc="merge",
                       disable=not progress)
            try:
                with RowsWriter(part, on_commit=lambda stop: bar.update(stop - bar.n)) as writer:
                    for start in range(part.rows_done, total, batch_size):
                        stop = min(start + batch_size, total)
                        values = {key: gather(src, start, stop) for key, src in sources.items()}
                        writer.submit(stop, functools.partial(_put, datasets, start, stop,
                                                              values))
            finally:
                bar.close()
            part.finish()
    finally:
        for f in files:
            f.close()
    return path


def _check_shards(files: Sequence[ActivationFile]) -> tuple[dict, int]:
    """The shards' common config (less the shard keys) and the merged row count."""
    n_shards = len(files)
    config = None
    for k, f in enumerate(files):
        own = f.config
        where = (own.pop("shard", None), own.pop("num_shards", None))
        if where != (k, n_shards):
            raise ConfigError(f"{f.path} is shard {where[0]} of {where[1]} by its config, not "
                              f"shard {k} of {n_shards}: merge the shard files of one run, "
                              f"unrenamed")
        identity = (own, f.network_sha256, f.puzzles_sha256)
        if config is None:
            config, first = own, identity
        elif identity != first:
            what = ("config" if own != first[0] else "network" if identity[1] != first[1]
                    else "puzzle set")
            raise ConfigError(f"{f.path} was made with another {what} than {files[0].path}: "
                              f"merge only the shards of one run")
    total = sum(len(f) for f in files)
    for k, f in enumerate(files):
        if len(f) != len(range(k, total, n_shards)):
            raise ConfigError(f"{f.path} holds {len(f)} rows; shard {k} of a {total}-row split "
                              f"{n_shards} ways holds {len(range(k, total, n_shards))}")
    return config, total


def _put(datasets: Mapping[tuple[str, str], h5py.Dataset], start: int, stop: int,
         values: Mapping[tuple[str, str], np.ndarray]) -> None:
    for key, ds in datasets.items():
        ds[start:stop] = values[key]


# --- reading ---------------------------------------------------------------------------------

class ActivationFile:
    """A complete ``activations.h5``, opened read-only. Use as a context manager or ``close()``.

    >>> with ActivationFile("runs/default/activations.h5") as cache:  # doctest: +SKIP
    ...     x = cache.load("blocks.3.hook_resid_post", indices=[0, 5, 7])   # [3, 64, d_model]

    Raises:
        FileNotFoundError: no such file (the message names the stage that writes it).
        ValueError: not an activation cache, or an incomplete one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            hint = " (an unfinished run's partial file exists: rerun the activations stage)" \
                if has_partial(self.path) else ""
            raise FileNotFoundError(f"{self.path} not found: run the activations stage first "
                                    f"(leela-interp stage=activations){hint}")
        self.file = h5py.File(self.path, "r")
        attrs = self.file.attrs
        if attrs.get("schema") != SCHEMA:
            self.file.close()
            raise ValueError(f"{self.path} is not an activation cache of this version "
                             f"(schema {attrs.get('schema')!r}, expected {SCHEMA!r}); a cache "
                             f"of an older layout is rebuilt by rerunning the activations stage "
                             f"(leela-interp stage=activations)")
        if not attrs.get("complete", False):
            self.file.close()
            raise ValueError(f"{self.path} is incomplete (rows_done={attrs.get('rows_done')})")

    def __enter__(self) -> "ActivationFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    @property
    def hooks(self) -> list[str]:
        """Cached hook names, in forward order."""
        return json.loads(self.file.attrs["hooks"])

    @property
    def boards(self) -> list[str]:
        """``["clean"]``, ``["corrupted"]`` or ``["clean", "corrupted"]``."""
        return json.loads(self.file.attrs["boards"])

    @property
    def puzzle_ids(self) -> list[str]:
        """The puzzle id of each row (the dataset ``puzzle_id``)."""
        return read_strings(self.file["puzzle_id"])

    @property
    def network_sha256(self) -> str:
        return str(self.file.attrs["network_sha256"])

    @property
    def puzzles_sha256(self) -> str:
        return str(self.file.attrs["puzzles_sha256"])

    @property
    def config(self) -> dict:
        return json.loads(self.file.attrs["config"])

    def __len__(self) -> int:
        return int(self.file["puzzle_id"].shape[0])

    def check(self, *, network_sha256: str | None = None,
              puzzles_sha256: str | None = None) -> None:
        """Raise :class:`ActivationCacheMismatchError` unless the given identities match."""
        _check_identity(self.path, self.file.attrs, network_sha256, puzzles_sha256)

    def dataset(self, hook: str, board: str = "clean") -> h5py.Dataset:
        """The raw h5py dataset of ``hook`` (``[N, *shape]``).

        Raises:
            KeyError: the board or hook is not in this cache (the message lists what is).
        """
        if board not in self.boards:
            raise KeyError(f"{self.path} has no {board!r} boards; it has {self.boards}")
        group = self.file[board]
        if hook not in group:
            raise KeyError(f"{self.path} has no hook {hook!r}; it has {self.hooks}")
        return group[hook]

    def valid(self, board: str = "clean") -> np.ndarray:
        """``[N]`` bool: rows that hold a real board (all True for ``clean``)."""
        if board not in self.boards:
            raise KeyError(f"{self.path} has no {board!r} boards; it has {self.boards}")
        if board == "corrupted":
            return self.file["corrupted/valid"][()]
        return np.ones(len(self), dtype=bool)

    def load(self, hook: str, *, board: str = "clean",
             indices: Sequence[int] | np.ndarray | slice | None = None,
             device: str | torch.device | None = None) -> torch.Tensor:
        """``hook``'s activations of the puzzles ``indices`` (None = all), ``[len, *shape]``.

        ``indices`` may be in any order and repeat; rows come back in that order. Reads whole
        chunks, so memory is the result plus one chunk.
        """
        ds = self.dataset(hook, board)
        n = ds.shape[0]
        if indices is None:
            indices = slice(None)
        if isinstance(indices, slice):
            return _tensor(ds[indices], device)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} puzzles")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((idx.size, *ds.shape[1:]), dtype=ds.dtype)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        if not idx.size:
            return _tensor(out, device)
        rows = ds.chunks[0]
        bounds = np.flatnonzero(np.diff(sorted_idx // rows)) + 1
        for part_pos, part in zip(np.split(order, bounds), np.split(sorted_idx, bounds)):
            lo, hi = int(part[0]), int(part[-1]) + 1
            out[part_pos] = ds[lo:hi][part - lo]
        return _tensor(out, device)

    def iter(self, hook: str, *, board: str = "clean", chunk: int | None = None,
             device: str | torch.device | None = None) -> Iterator[torch.Tensor]:
        """Stream ``hook`` in puzzle order, ``chunk`` rows at a time (the last may be shorter).

        Block ``k`` holds rows ``k*chunk .. k*chunk+chunk-1``. Default ``chunk``: whole HDF5
        chunks adding up to about 64 MiB.
        """
        ds = self.dataset(hook, board)
        if chunk is None:
            row_bytes = int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
            chunk = ds.chunks[0] * max(1, (64 << 20) // max(row_bytes * ds.chunks[0], 1))
        if chunk < 1:
            raise ValueError(f"chunk={chunk!r}; must be >= 1")
        for start in range(0, ds.shape[0], chunk):
            yield _tensor(ds[start:start + chunk], device)


def _tensor(values: np.ndarray, device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(values))
    return t.to(device) if device is not None else t


def load_activation(path: str | Path, hook: str, *, board: str = "clean",
                    indices: Sequence[int] | np.ndarray | slice | None = None,
                    device: str | torch.device | None = None) -> torch.Tensor:
    """One hook's activations for some puzzles as a tensor ``[len(indices), *hook shape]``.

    Args:
        path: a complete ``activations.h5``.
        hook: a cached hook name, e.g. ``"blocks.3.hook_resid_post"``.
        board: ``"clean"`` or ``"corrupted"`` (rows without a corrupted board are NaN).
        indices: puzzle rows (any order, repeats allowed) or a slice; None = every puzzle.
        device: move the tensor there; None = CPU.

    Raises:
        FileNotFoundError, ValueError: see :class:`ActivationFile`.
        KeyError: the hook or board is not in the cache.
    """
    with ActivationFile(path) as cache:
        return cache.load(hook, board=board, indices=indices, device=device)


def iter_activation(path: str | Path, hook: str, board: str = "clean", chunk: int | None = None,
                    *, device: str | torch.device | None = None) -> Iterator[torch.Tensor]:
    """Stream one hook in puzzle order, ``chunk`` puzzles per tensor (:meth:`ActivationFile.iter`).

    >>> total = sum(x.double().sum() for x in iter_activation(p, "blocks.0.hook_resid_post"))
    ... # doctest: +SKIP
    """
    with ActivationFile(path) as cache:
        yield from cache.iter(hook, board=board, chunk=chunk, device=device)
