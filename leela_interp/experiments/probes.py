"""Look-ahead probes: can a later move of the principal variation be read off the residual stream?

The paper's second line of evidence (Jenner et al. 2024, section 3.3): a small probe, given the
residual stream of one layer, predicts the square of the side to move's *next* move (the 3rd
move of the PV) better than any baseline. This module holds the parts that do not depend on
Hydra or on a run folder (the ``probes`` stage in :mod:`leela_interp.stages.probes` wires them
together); see ``docs/probes.md`` for the method and the output file.

Conventions:

- Squares are **tokens**: ``rank * 8 + file`` in the side-to-move frame of the puzzle position
  (after lc0's canonical transform), i.e. indices into the 64 rows of a residual-stream
  activation ``[64, d_model]``. :func:`pv_squares` maps PV moves with
  :func:`leela_interp.board.encoding.square_to_token`. Every probe predicts a token.
- PV plies are counted from 0: ply 0 is the side to move's first move, ply 1 the opponent's
  reply, ply 2 the side to move's next move (the paper's "3rd move").
- ``acts`` is one layer's activations ``[N, 64, d_model]`` (numpy, float16 or float32, as
  stored, or a :class:`LayerRows` reading them from the cache on demand); ``rows`` index it
  (puzzles), ``cond`` gives one conditioning token per row.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import chess
import h5py
import numpy as np
import torch
from torch import nn

from leela_interp.board.encoding import square_to_token, transform_for
from leela_interp.errors import ConfigError

log = logging.getLogger(__name__)

#: Schema of the ``activations.h5`` files this module reads (the ``activations`` stage's).
ACTIVATIONS_SCHEMA = "leela_interp.activations/1"
#: Probe kinds, in the order they appear in ``probes.h5``.
PROBES = ("bilinear", "logreg")
#: No-activation baselines (see :func:`evaluate_baselines`).
BASELINES = ("majority", "condition", "piece")
#: Puzzle subsets a probe can be trained and tested on.
SPLITS = ("all", "different_targets", "same_targets")
SQUARE_KINDS = ("from", "to")

# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetSpec:
    """What one probe predicts, and which square's residual it is conditioned on.

    Build from config with :func:`parse_targets`.
    """

    name: str
    """Name in ``probes.h5`` (e.g. ``"target"``)."""
    ply: int
    """PV ply whose square is predicted (0-based; 2 = the side to move's next move)."""
    square: str
    """``"to"`` (the move's target square) or ``"from"`` (its source square)."""
    condition_ply: int
    """PV ply whose square's residual the probe is conditioned on."""
    condition_square: str
    """``"to"`` or ``"from"``: which square of ``condition_ply``."""
    chain: str | None = None
    """Name of an earlier target: train on the true condition square, but *evaluate* at the
    square that target's probe predicted (the paper's chained source probe). None = the true
    PV square at train and test time."""
    joint: str | None = None
    """Chained targets only: also report ``joint``, the accuracy of getting both this target and
    its chain target right (the paper's headline "move" accuracy)."""


def parse_targets(items: Iterable[Mapping]) -> list[TargetSpec]:
    """Target specs from config entries.

    Each entry: ``name``, ``ply``, ``square`` (``to``/``from``), ``condition`` (either
    ``{ply, square}``: a PV square; or ``{target: NAME}``: chained on an earlier target), and
    optionally ``joint`` (chained targets only).

    Raises:
        ConfigError: a missing or bad field, a duplicate name, a chain to a later/unknown target.
    """
    specs: list[TargetSpec] = []
    names: set[str] = set()
    for item in items:
        item = dict(item)
        try:
            name, ply, square, cond = item["name"], int(item["ply"]), item["square"], \
                dict(item["condition"])
        except KeyError as e:
            raise ConfigError(f"probe target {item!r} lacks {e.args[0]!r}") from None
        if name in names or name in [s.joint for s in specs]:
            raise ConfigError(f"duplicate probe target name {name!r}")
        if ply < 0 or square not in SQUARE_KINDS:
            raise ConfigError(f"target {name!r}: ply must be >= 0 and square one of "
                              f"{SQUARE_KINDS}, got ply={ply!r}, square={square!r}")
        chain, joint = cond.get("target"), item.get("joint")
        if chain is not None:
            earlier = {s.name: s for s in specs}
            if chain not in earlier:
                raise ConfigError(f"target {name!r} chains on {chain!r}, which is not an "
                                  f"earlier target; choose one of {sorted(earlier)}")
            c_ply, c_square = earlier[chain].ply, earlier[chain].square
        else:
            if joint is not None:
                raise ConfigError(f"target {name!r}: joint needs a chained condition")
            try:
                c_ply, c_square = int(cond["ply"]), cond["square"]
            except KeyError as e:
                raise ConfigError(f"target {name!r}: condition {cond!r} needs 'target', or "
                                  f"'ply' and 'square' (missing {e.args[0]!r})") from None
            if c_ply < 0 or c_square not in SQUARE_KINDS:
                raise ConfigError(f"target {name!r}: bad condition {cond!r}")
        specs.append(TargetSpec(name, ply, square, c_ply, c_square, chain, joint))
        names.add(name)
    if not specs:
        raise ConfigError("no probe targets configured")
    return specs


def output_names(specs: Sequence[TargetSpec]) -> list[str]:
    """The ``target`` axis of ``probes.h5``: every target, each joint metric after its target."""
    out: list[str] = []
    for s in specs:
        out.append(s.name)
        if s.joint:
            out.append(s.joint)
    return out


@dataclass
class TargetLabels:
    """Per-puzzle labels of one target (arrays of length N, the puzzles' order)."""

    label: np.ndarray
    """Token to predict, -1 where undefined (PV too short)."""
    condition: np.ndarray
    """True conditioning token, -1 where undefined."""
    piece: np.ndarray
    """``chess.PieceType`` of the piece making the probed move (0 where undefined)."""

    @property
    def valid(self) -> np.ndarray:
        """Puzzles on which this target is defined."""
        return (self.label >= 0) & (self.condition >= 0)


def pv_squares(boards: Sequence[chess.Board], pvs: Sequence[Sequence[str]], input_format: int,
               plies: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of the first ``plies`` PV moves' squares, and the piece type making each move.

    Args:
        boards: puzzle positions (the clean boards; their turn and canonical transform fix the
            frame of every token, including the opponent's moves).
        pvs: each puzzle's PV in UCI.
        input_format: the network's input format (for :func:`transform_for`).
        plies: how many PV moves to map.

    Returns:
        ``tokens [N, plies, 2]`` (``[..., 0]`` from, ``[..., 1]`` to; -1 past the PV's end) and
        ``pieces [N, plies]`` (``chess.PieceType``, 0 past the end).
    """
    n = len(boards)
    tokens = np.full((n, plies, 2), -1, np.int64)
    pieces = np.zeros((n, plies), np.int8)
    for i, (root, pv) in enumerate(zip(boards, pvs)):
        board = root.copy(stack=False)
        turn, transform = root.turn, transform_for(root, input_format)
        for k, uci in enumerate(pv[:plies]):
            move = chess.Move.from_uci(uci)
            tokens[i, k, 0] = square_to_token(move.from_square, turn, transform)
            tokens[i, k, 1] = square_to_token(move.to_square, turn, transform)
            pieces[i, k] = board.piece_type_at(move.from_square) or 0
            board.push(move)
    return tokens, pieces


def target_labels(boards: Sequence[chess.Board], pvs: Sequence[Sequence[str]],
                  specs: Sequence[TargetSpec], input_format: int) -> dict[str, TargetLabels]:
    """Labels of every target for every puzzle (see :class:`TargetLabels`).

    A chained target's true condition is its chain target's label, and it is valid only where
    the chain target is.
    """
    plies = 1 + max(max(s.ply, s.condition_ply) for s in specs)
    tokens, pieces = pv_squares(boards, pvs, input_format, plies)
    col = {"from": 0, "to": 1}
    out: dict[str, TargetLabels] = {}
    for s in specs:
        label = tokens[:, s.ply, col[s.square]].copy()
        if s.chain is not None:
            condition = np.where(out[s.chain].valid, out[s.chain].label, -1)
        else:
            condition = tokens[:, s.condition_ply, col[s.condition_square]].copy()
        out[s.name] = TargetLabels(label, condition, pieces[:, s.ply].copy())
    return out


# --------------------------------------------------------------------------- splits


def split_rows(different: np.ndarray, split: str) -> np.ndarray:
    """Indices of the puzzles in ``split`` (``all``, ``different_targets``, ``same_targets``).

    Raises:
        ConfigError: an unknown split.
    """
    different = np.asarray(different, bool)
    if split == "all":
        mask = np.ones_like(different)
    elif split == "different_targets":
        mask = different
    elif split == "same_targets":
        mask = ~different
    else:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    return np.flatnonzero(mask)


def train_test(rows: np.ndarray, seed: int, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``rows`` with ``seed`` and cut them: the first ``round(f * n)`` train, the rest test.

    The split is by puzzle (every square and target of a puzzle lands on the same side). Both
    halves come back sorted, which keeps HDF5 and numpy reads sequential.
    """
    if not 0 < train_fraction < 1:
        raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    perm = np.random.default_rng(seed).permutation(np.asarray(rows))
    cut = int(round(train_fraction * len(perm)))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


# --------------------------------------------------------------------------- activations


def layer_hooks(path: str | Path, site: str = "hook_resid_post") -> dict[int, str]:
    """``{layer: hook name}`` of the ``clean/blocks.{layer}.{site}`` datasets in ``path``."""
    with h5py.File(path, "r") as f:
        if "clean" not in f:
            raise ConfigError(f"{path} has no clean/ group; is it an activations.h5?")
        names = list(f["clean"])
    found = {}
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] == site:
            found[int(parts[1])] = name
    return dict(sorted(found.items()))


def load_layer(path: str | Path, hook: str, *, dtype: str | None = None,
               chunk_rows: int = 128) -> np.ndarray:
    """One hook's activations ``[N, 64, d_model]`` from ``clean/{hook}``.

    Read in slabs of ``chunk_rows`` puzzles straight into one preallocated array, so peak memory
    is the array itself plus one slab.

    Args:
        dtype: ``"float32"`` or ``"float16"`` in memory; None = as stored. float16 halves the
            memory of wide nets (the probes compute in float32 batch by batch).
    """
    with h5py.File(path, "r") as f:
        ds = f["clean"][hook]
        out = np.empty(ds.shape, np.dtype(dtype) if dtype else ds.dtype)
        for start in range(0, ds.shape[0], chunk_rows):
            sl = np.s_[start:min(start + chunk_rows, ds.shape[0])]
            if out.dtype == ds.dtype:
                ds.read_direct(out, sl, sl)
            else:
                out[sl] = ds[sl]
    return out


class LayerRows:
    """One hook's activations read from an open HDF5 dataset as the probes ask for rows.

    Stands in for :func:`load_layer`'s array when a layer is too big to hold: indexing with an
    array of rows (any order, repeats allowed), optionally paired with one square per row
    (``acts[rows, squares]``), reads just those rows, so memory is one batch. Repeated passes
    are served by the OS page cache, not by this process's memory.

    h5py's row-list reads cost ~1-6 ms a row; for an unfiltered (uncompressed) dataset, rows are
    instead read with ``os.pread`` at their byte offsets in the file (chunk offsets from HDF5),
    ~100x faster. Compressed datasets fall back to h5py.
    """

    def __init__(self, dataset: h5py.Dataset, dtype: str | None = None) -> None:
        self.dataset = dataset
        self.shape = dataset.shape
        self.dtype = np.dtype(dtype) if dtype else dataset.dtype
        self._row_bytes = int(np.prod(self.shape[1:])) * dataset.dtype.itemsize
        self._offsets = self._row_offsets(dataset, self._row_bytes)
        self._fd = os.open(dataset.file.filename, os.O_RDONLY) if self._offsets is not None \
            else None

    @staticmethod
    def _row_offsets(ds: h5py.Dataset, row_bytes: int) -> np.ndarray | None:
        """Byte offset of every row in the file, or None (filtered or unallocated storage)."""
        plist = ds.id.get_create_plist()
        if plist.get_nfilters() or ds.dtype.byteorder == ">" or ds.size == 0:
            return None
        rows = np.arange(ds.shape[0], dtype=np.int64)
        if ds.chunks is None:
            base = ds.id.get_offset()
            return None if base is None else base + rows * row_bytes
        if ds.chunks[1:] != ds.shape[1:]:
            return None
        per = ds.chunks[0]
        starts = []
        for c in range(0, ds.shape[0], per):
            info = ds.id.get_chunk_info_by_coord((c,) + (0,) * (ds.ndim - 1))
            if info.byte_offset is None or info.size != per * row_bytes:
                return None
            starts.append(info.byte_offset)
        return np.asarray(starts, np.int64)[rows // per] + (rows % per) * row_bytes

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):  # one square per row, read 256 rows at a time
            rows, squares = (np.asarray(k, np.int64) for k in key)
            out = np.empty((len(rows), *self.shape[2:]), self.dtype)
            for start in range(0, len(rows), 256):
                sl = slice(start, start + 256)
                out[sl] = self[rows[sl]][np.arange(len(rows[sl])), squares[sl]]
            return out
        rows = np.asarray(key, np.int64)
        if self._fd is None:
            unique, back = np.unique(rows, return_inverse=True)
            return self.dataset[unique][back].astype(self.dtype, copy=False)
        out = np.empty((len(rows), *self.shape[1:]), self.dataset.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for i, offset in enumerate(self._offsets[rows]):
            flat[i] = np.frombuffer(os.pread(self._fd, self._row_bytes, int(offset)), np.uint8)
        return out.astype(self.dtype, copy=False)


def channel_rms(acts: np.ndarray, rows: np.ndarray, *, chunk_rows: int = 64) -> np.ndarray:
    """Root mean square of each channel over ``rows`` and all squares, float32 ``[d_model]``.

    Zero channels get 1 (nothing to scale).
    """
    total = np.zeros(acts.shape[-1], np.float64)
    for start in range(0, len(rows), chunk_rows):
        x = acts[rows[start:start + chunk_rows]].astype(np.float64)
        total += np.square(x).sum(axis=(0, 1))
    rms = np.sqrt(total / max(1, len(rows) * acts.shape[1]))
    return np.where(rms > 0, rms, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- bilinear probe


@dataclass(frozen=True)
class BilinearConfig:
    """Training settings of :class:`BilinearProbe` (defaults: the paper's)."""

    rank: int = 32
    lr: float = 1e-2
    epochs: int = 5
    batch_size: int = 64
    weight_decay: float = 0.0


class BilinearProbe(nn.Module):
    """The paper's rank-k bilinear square probe.

    ``logit[s] = sum_k (W_x[:, k] . X[s]) (W_z[:, k] . Z) / sqrt(k)`` for every square ``s``,
    softmax over the 64 squares; ``X`` is the residual stream ``[64, d_model]`` and ``Z`` the
    residual at the conditioning square. The ``1/sqrt(k)`` factor is applied in :meth:`forward`,
    so training and prediction use the same function (the paper's ``predict_proba`` left it
    out). The paper's scalar bias is dropped: it is the same for every square and cancels in the
    softmax.
    """

    def __init__(self, d_model: int, rank: int = 32, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.rank = rank
        std = 1 / math.sqrt(d_model)
        self.w_x = nn.Parameter(torch.randn(d_model, rank, generator=generator) * std)
        self.w_z = nn.Parameter(torch.randn(d_model, rank, generator=generator) * std)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 64]`` from ``x [B, 64, d_model]`` and ``z [B, d_model]``."""
        return torch.einsum("bsk,bk->bs", x @ self.w_x, z @ self.w_z) / math.sqrt(self.rank)


def _batch(acts: np.ndarray, rows: np.ndarray, cond: np.ndarray,
           scale: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(acts[rows]).float() / torch.from_numpy(scale)
    z = x[torch.arange(len(rows)), torch.from_numpy(np.asarray(cond, np.int64))]
    return x, z


def fit_bilinear(acts: np.ndarray, rows: np.ndarray, cond: np.ndarray, y: np.ndarray, *,
                 scale: np.ndarray, config: BilinearConfig = BilinearConfig(),
                 seed: int = 0) -> BilinearProbe:
    """Train a :class:`BilinearProbe` with Adam and cross-entropy, reshuffling every epoch.

    Args:
        acts, rows, cond: see the module docstring; ``y`` the target token of each row.
        scale: per-channel divisor (:func:`channel_rms` of the training rows); a fixed linear
            reparameterisation that only helps the optimiser (no centring, so the probe is
            exactly the paper's function class).
        config: rank and optimiser settings.
        seed: initialisation and batch order.
    """
    gen = torch.Generator().manual_seed(seed)
    probe = BilinearProbe(acts.shape[-1], config.rank, generator=gen)
    opt = torch.optim.Adam(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    y_t = torch.from_numpy(np.asarray(y, np.int64))
    for _ in range(config.epochs):
        order = torch.randperm(len(rows), generator=gen).numpy()
        for start in range(0, len(rows), config.batch_size):
            b = order[start:start + config.batch_size]
            x, z = _batch(acts, rows[b], cond[b], scale)
            loss = nn.functional.cross_entropy(probe(x, z), y_t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe


@torch.no_grad()
def bilinear_logits(probe: BilinearProbe, acts: np.ndarray, rows: np.ndarray,
                    cond: np.ndarray, *, scale: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The probe's logits over the 64 tokens for each row, float32 ``[len(rows), 64]`` (a
    softmax over the last axis is its predicted distribution)."""
    out = np.empty((len(rows), 64), np.float32)
    for start in range(0, len(rows), batch_size):
        sl = slice(start, start + batch_size)
        x, z = _batch(acts, rows[sl], cond[sl], scale)
        out[sl] = probe(x, z).numpy()
    return out


def predict_bilinear(probe: BilinearProbe, acts: np.ndarray, rows: np.ndarray,
                     cond: np.ndarray, *, scale: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Most likely token of each row, int64 ``[len(rows)]``."""
    return bilinear_logits(probe, acts, rows, cond, scale=scale,
                           batch_size=batch_size).argmax(axis=1).astype(np.int64)


# --------------------------------------------------------------------------- logistic regression


@dataclass(frozen=True)
class LogRegConfig:
    """Settings of the scikit-learn probe (see :class:`LogRegProbe`)."""

    components: int = 8
    """Principal components kept per square."""
    C: float = 1.0
    """Inverse L2 strength of ``LogisticRegression`` (on standardised features)."""
    max_iter: int = 200
    """L-BFGS iterations."""
    pca_rows: int = 20000
    """At most this many (puzzle, square) residuals fit the PCA."""


class SquarePCA:
    """Principal components of single-square residuals ``[d_model]``, fitted on training rows."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray) -> None:
        self.mean = mean
        """``[d_model]``"""
        self.basis = basis
        """``[d_model, components]``, orthonormal columns, largest variance first."""

    @classmethod
    def fit(cls, acts: np.ndarray, rows: np.ndarray, components: int, *, max_rows: int = 20000,
            seed: int = 0) -> "SquarePCA":
        """Fit on every square of a random subset of ``rows`` (at most ``max_rows`` residuals)."""
        k = max(1, min(len(rows), max_rows // acts.shape[1]))
        sample = np.sort(np.random.default_rng(seed).choice(rows, k, replace=False))
        x = acts[sample].reshape(-1, acts.shape[-1]).astype(np.float64)
        mean = x.mean(axis=0)
        x -= mean
        _, vecs = np.linalg.eigh(x.T @ x)
        basis = vecs[:, ::-1][:, :components]
        return cls(mean.astype(np.float32), np.ascontiguousarray(basis, np.float32))

    def transform(self, acts: np.ndarray, rows: np.ndarray, *,
                  chunk_rows: int = 128) -> np.ndarray:
        """Every square's projection, flattened: float32 ``[len(rows), 64 * components]``."""
        r = self.basis.shape[1]
        out = np.empty((len(rows), acts.shape[1] * r), np.float32)
        for start in range(0, len(rows), chunk_rows):
            x = acts[rows[start:start + chunk_rows]].astype(np.float32) - self.mean
            out[start:start + chunk_rows] = (x @ self.basis).reshape(len(x), -1)
        return out


class LogRegProbe:
    """Multinomial logistic regression over the 64 squares (scikit-learn, L-BFGS).

    Features of a puzzle: the residual at the conditioning square (``d_model``) concatenated
    with every square's residual projected on the top principal components of single-square
    residuals (``64 * components``), standardised. So a square's logit is linear in the
    conditioning residual and in the compressed residual of every square; unlike the bilinear
    probe it cannot multiply the two, but it sees all squares at once.
    """

    def __init__(self, config: LogRegConfig = LogRegConfig(), seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.model = None
        self.constant: int | None = None

    @staticmethod
    def features(acts: np.ndarray, rows: np.ndarray, cond: np.ndarray,
                 projected: np.ndarray) -> np.ndarray:
        """``[len(rows), d_model + 64 * components]``; ``projected`` is
        :meth:`SquarePCA.transform` of the same ``rows``."""
        z = acts[rows, np.asarray(cond, np.int64)].astype(np.float32)
        return np.concatenate([z, projected], axis=1)

    def fit(self, features: np.ndarray, y: np.ndarray) -> "LogRegProbe":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        classes = np.unique(y)
        if len(classes) < 2:  # nothing to learn: predict the only label seen
            self.constant = int(classes[0]) if len(classes) else 0
            return self
        self.model = make_pipeline(StandardScaler(), LogisticRegression(
            C=self.config.C, max_iter=self.config.max_iter, random_state=self.seed))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.model.fit(features, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.debug("logistic regression stopped at max_iter=%d before converging",
                      self.config.max_iter)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.model is None:
            return np.full(len(features), self.constant, np.int64)
        return self.model.predict(features).astype(np.int64)


# --------------------------------------------------------------------------- evaluation

#: ``fit_predict(spec, train_rows, train_cond, train_y, test_rows, test_cond) -> predictions``
FitPredict = Callable[[TargetSpec, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                      np.ndarray]


def evaluate_chained(specs: Sequence[TargetSpec], labels: Mapping[str, TargetLabels],
                     train: np.ndarray, test: np.ndarray,
                     fit_predict: FitPredict) -> dict[str, tuple[int, int]]:
    """Fit and test one predictor per target, in order, chaining conditions at test time.

    Each target uses the ``train``/``test`` puzzles on which it is defined. A chained target is
    trained at its true condition square and tested at the square its chain target's predictor
    chose for that puzzle.

    Returns:
        ``{output name: (n_correct, n_test)}`` for :func:`output_names`.
    """
    n = len(next(iter(labels.values())).label)
    preds: dict[str, np.ndarray] = {}
    out: dict[str, tuple[int, int]] = {}
    for s in specs:
        lab = labels[s.name]
        tr, te = train[lab.valid[train]], test[lab.valid[test]]
        cond_te = lab.condition[te] if s.chain is None else preds[s.chain][te]
        if len(tr) and len(te):
            pred = fit_predict(s, tr, lab.condition[tr], lab.label[tr], te, cond_te)
        else:
            pred = np.full(len(te), -1, np.int64)
        full = np.full(n, -1, np.int64)
        full[te] = pred
        preds[s.name] = full
        correct = pred == lab.label[te]
        out[s.name] = (int(correct.sum()), len(te))
        if s.joint:
            both = correct & (preds[s.chain][te] == labels[s.chain].label[te])
            out[s.joint] = (int(both.sum()), len(te))
    return out


def evaluate_layer(acts: np.ndarray, labels: Mapping[str, TargetLabels],
                   specs: Sequence[TargetSpec], train: np.ndarray, test: np.ndarray, *,
                   probes: Sequence[str] = PROBES, bilinear: BilinearConfig = BilinearConfig(),
                   logreg: LogRegConfig = LogRegConfig(),
                   seed: int = 0) -> dict[str, dict[str, tuple[int, int]]]:
    """Train every probe on ``train`` puzzles of one layer and test it on ``test``.

    Returns:
        ``{probe: {output name: (n_correct, n_test)}}``.

    Raises:
        ConfigError: an unknown probe name.
    """
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ConfigError(f"unknown probes {sorted(unknown)!r}; choose from {PROBES}")
    results: dict[str, dict[str, tuple[int, int]]] = {}
    if "bilinear" in probes:
        scale = channel_rms(acts, train)

        def bilinear_fp(s, tr, c_tr, y_tr, te, c_te):
            probe = fit_bilinear(acts, tr, c_tr, y_tr, scale=scale, config=bilinear, seed=seed)
            return predict_bilinear(probe, acts, te, c_te, scale=scale)

        results["bilinear"] = evaluate_chained(specs, labels, train, test, bilinear_fp)
    if "logreg" in probes:
        pca = SquarePCA.fit(acts, train, logreg.components, max_rows=logreg.pca_rows, seed=seed)
        rows = np.union1d(train, test)
        projected = pca.transform(acts, rows)
        where = np.full(len(acts), -1, np.int64)
        where[rows] = np.arange(len(rows))

        def logreg_fp(s, tr, c_tr, y_tr, te, c_te):
            probe = LogRegProbe(logreg, seed).fit(
                LogRegProbe.features(acts, tr, c_tr, projected[where[tr]]), y_tr)
            return probe.predict(LogRegProbe.features(acts, te, c_te, projected[where[te]]))

        results["logreg"] = evaluate_chained(specs, labels, train, test, logreg_fp)
    return results


class PriorBaseline:
    """Most frequent label given discrete keys, backing off from the most specific key to none.

    ``fit([k1, k2], y)`` learns the most frequent label for each value of ``k1``, of ``k2``, and
    overall; ``predict`` uses the first key whose value was seen in training (ties: the smaller
    token).
    """

    def fit(self, keys: Sequence[np.ndarray], y: np.ndarray) -> "PriorBaseline":
        y = np.asarray(y, np.int64)
        self.default = int(np.bincount(y, minlength=64).argmax()) if len(y) else 0
        self.tables = []
        for key in keys:
            table: dict[int, np.ndarray] = {}
            for k, label in zip(np.asarray(key).tolist(), y.tolist()):
                table.setdefault(k, np.zeros(64, np.int64))[label] += 1
            self.tables.append({k: int(c.argmax()) for k, c in table.items()})
        return self

    def predict(self, keys: Sequence[np.ndarray]) -> np.ndarray:
        n = len(keys[0]) if keys else 0
        out = []
        for i in range(n):
            for table, key in zip(self.tables, keys):
                k = int(key[i])
                if k in table:
                    out.append(table[k])
                    break
            else:
                out.append(self.default)
        return np.asarray(out, np.int64)


def evaluate_baselines(labels: Mapping[str, TargetLabels], specs: Sequence[TargetSpec],
                       train: np.ndarray, test: np.ndarray,
                       baselines: Sequence[str] = BASELINES) -> dict[str, dict[str, tuple[int, int]]]:
    """The no-activation baselines, fitted on ``train`` and tested on ``test``.

    - ``majority``: the most frequent label of the training puzzles.
    - ``condition``: the most frequent label given the conditioning token (the square the
      probes are conditioned on), backing off to ``majority``. It knows everything about the
      position that the conditioning square's *index* carries.
    - ``piece``: given the piece type that makes the probed move and the conditioning token,
      backing off to the piece type alone, then ``majority``. Generous: the probes are not told
      which piece moves.

    Chained targets are chained on each baseline's own predictions, like the probes.

    Raises:
        ConfigError: an unknown baseline name.
    """
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ConfigError(f"unknown baselines {sorted(unknown)!r}; choose from {BASELINES}")

    def keys(kind: str, s: TargetSpec, rows: np.ndarray, cond: np.ndarray) -> list[np.ndarray]:
        piece = labels[s.name].piece[rows].astype(np.int64)
        return {"majority": [], "condition": [cond],
                "piece": [piece * 64 + cond, piece]}[kind]

    results = {}
    for kind in baselines:
        def fp(s, tr, c_tr, y_tr, te, c_te, kind=kind):
            model = PriorBaseline().fit(keys(kind, s, tr, c_tr), y_tr)
            if kind == "majority":
                return np.full(len(te), model.default, np.int64)
            return model.predict(keys(kind, s, te, c_te))

        results[kind] = evaluate_chained(specs, labels, train, test, fp)
    return results


def mean_and_error(n_correct: np.ndarray, n_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean accuracy over the last axis (seeds) and its 2-sigma error bar.

    ``err = 2 * sqrt(s^2 / S + p (1 - p) / n)``: ``p`` the mean over the ``S`` seeds of each
    seed's accuracy ``n_correct / n_test``, ``s^2`` their sample variance (ddof 1; 0 for one
    seed) — training-set and initialisation noise —, and ``p (1 - p) / n`` the binomial variance
    of one test set of ``n`` puzzles (``n`` the mean test-set size over the seeds, the size of
    *this* split's test set for *this* target). The seeds' test sets overlap, so averaging them
    does not shrink the binomial term; the seed term also holds some test-sampling noise, so the
    bar is slightly conservative. Entries with ``n_test == 0`` are NaN.
    """
    n_correct = np.asarray(n_correct, np.float64)
    n_test = np.asarray(n_test, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n_test > 0, n_correct / n_test, np.nan)
        s = acc.shape[-1]
        p = acc.mean(axis=-1)
        var = acc.var(axis=-1, ddof=1) if s > 1 else np.zeros_like(p)
        n = n_test.mean(axis=-1)
        err = 2 * np.sqrt(var / s + p * (1 - p) / n)
    return p, err


# --------------------------------------------------------------------------- random twin


def layer_sizes(net) -> dict[str, int]:
    """``{field path: number of values}`` of every non-empty ``Weights.Layer`` in a ``Net``."""
    from leela_interp.network.lc0.weights import decode_layer

    sizes: dict[str, int] = {}

    def walk(msg, prefix: str) -> None:
        for field, value in msg.ListFields():
            if field.message_type is None:
                continue
            path = f"{prefix}.{field.name}" if prefix else field.name
            items = list(value) if field.is_repeated else [value]
            for j, item in enumerate(items):
                p = f"{path}[{j}]" if field.is_repeated else path
                if field.message_type.name == "Layer":
                    size = decode_layer(item).size
                    if size:
                        sizes[p] = size
                else:
                    walk(item, p)

    walk(net.weights, "")
    return sizes


def twin_spec(net):
    """The :class:`~leela_interp.network.lc0.random_net.RandomNetSpec` of a ``Net``'s architecture.

    Check the result with :func:`write_random_twin`, which compares every layer's size.
    """
    from leela_interp.network.lc0.random_net import RandomNetSpec
    from leela_interp.network.lc0.weights import NETWORKS, decode_layer, net_format

    fmt = net_format(net)
    w = net.weights

    def n(layer) -> int:
        return decode_layer(layer).size

    common = dict(input_format=fmt.input_format,
                  policy={1: "classical", 2: "convolution", 3: "attention"}[fmt.policy],
                  value="wdl" if fmt.value == 2 else "classical", moves_left=fmt.moves_left == 1,
                  default_activation="mish" if fmt.default_activation == 1 else "relu")
    if not fmt.attention_body:
        c = n(w.input.bn_means) or n(w.input.biases)
        value_conv = w.value.bn_means if w.value.bn_means.params else w.value.biases
        spec = RandomNetSpec(
            body="cnn", channels=c, blocks=len(w.residual),
            se_channels=n(w.residual[0].se.b1) if len(w.residual) and
            w.residual[0].HasField("se") else 0,
            batch_norm=bool(w.input.bn_means.params), value_channels=n(value_conv),
            value_hidden=n(w.ip1_val_b), **common)
        if spec.moves_left:
            mov = w.moves_left.bn_means if w.moves_left.bn_means.params else w.moves_left.biases
            spec = dataclasses.replace(spec, mlh_channels=n(mov), mlh_hidden=n(w.ip1_mov_b))
        if spec.policy == "attention":
            spec = dataclasses.replace(spec, policy_embed=n(w.ip_pol_b), policy_d=n(w.ip2_pol_b),
                                       policy_encoders=len(w.pol_encoder),
                                       policy_heads_count=w.pol_headcount or 2)
        return spec
    from leela_interp.network.lc0.weights import ACTIVATIONS, EMBEDDINGS

    d = n(w.ip_emb_b)
    heads = int(w.headcount)
    enc = w.encoder[0]
    multi = fmt.network == NETWORKS["NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT"]
    act_name = {v: k.removeprefix("ACTIVATION_") for k, v in ACTIVATIONS.items()}
    dense = fmt.input_embedding == EMBEDDINGS["INPUT_EMBEDDING_PE_DENSE"]
    pol = w.policy_heads.vanilla if multi else w
    val = w.value_heads.winner if multi else w
    smolgen = enc.mha.HasField("smolgen")
    spec = RandomNetSpec(
        body="transformer", d_model=d, layers=len(w.encoder), heads=heads,
        d_ff=n(enc.ffn.dense1_b), embedding="PE_DENSE" if dense else "PE_MAP",
        dense_pos=n(w.ip_emb_preproc_b) // 64 if dense else 4,
        emb_ffn=n(w.ip_emb_ffn.dense1_b) if dense else 0,
        gating=w.HasField("ip_mult_gate"), smolgen=smolgen,
        smolgen_compress=n(enc.mha.smolgen.compress) // d if smolgen else 4,
        smolgen_hidden=n(enc.mha.smolgen.dense1_b) if smolgen else 32,
        smolgen_gen=n(enc.mha.smolgen.dense2_b) // heads if smolgen else 16,
        smolgen_activation=act_name.get(fmt.smolgen_activation, "DEFAULT"),
        ffn_activation=act_name.get(fmt.ffn_activation, "DEFAULT"),
        network="ATTENTIONBODY_WITH_MULTIHEADFORMAT" if multi else
        "ATTENTIONBODY_WITH_HEADFORMAT", multihead=multi,
        policy_embed=n(w.policy_heads.ip_pol_b if multi else w.ip_pol_b),
        policy_d=n(pol.ip2_pol_b), policy_encoders=len(pol.pol_encoder),
        policy_heads_count=pol.pol_headcount or 2,
        value_channels=n(val.ip_val_b), value_hidden=n(val.ip1_val_b), **common)
    if spec.moves_left:
        spec = dataclasses.replace(spec, mlh_channels=n(w.ip_mov_b), mlh_hidden=n(w.ip1_mov_b))
    return spec


def _match_conv_affines(real, twin, encoding: str) -> None:
    """Where a real conv stores a plain bias but the twin batch-norm statistics, fold them.

    ``RandomNetSpec.batch_norm`` applies to every conv, while real nets (Maia, dkappe's) use
    batch norm everywhere except the last policy conv, which has a bias. Folding the twin's
    statistics into its weights and bias (as lc0 does on load) keeps the twin's function and
    gives it the real net's fields.
    """
    from leela_interp.network.lc0.weights import decode_layer, encode_layer

    for field, value in real.ListFields():
        if field.message_type is None:
            continue
        pairs = zip(value, getattr(twin, field.name)) if field.is_repeated else \
            [(value, getattr(twin, field.name))]
        for r, t in pairs:
            if field.message_type.name != "ConvBlock":
                if field.message_type.name != "Layer":
                    _match_conv_affines(r, t, encoding)
                continue
            if r.biases.params and not r.bn_means.params and t.bn_means.params:
                w, means, var, gammas, betas = (decode_layer(getattr(t, k)) for k in (
                    "weights", "bn_means", "bn_stddivs", "bn_gammas", "bn_betas"))
                g = gammas / np.sqrt(var + np.float32(1e-5))
                t.weights.CopyFrom(encode_layer(
                    (w.reshape(len(g), -1) * g[:, None]).ravel(), encoding))
                t.biases.CopyFrom(encode_layer(betas - g * means, encoding))
                for k in ("bn_means", "bn_stddivs", "bn_gammas", "bn_betas"):
                    t.ClearField(k)


def write_random_twin(real_path: str | Path, out_path: str | Path, seed: int = 0) -> Path:
    """Write a seeded random-initialised network with the architecture of ``real_path``.

    The twin is :func:`leela_interp.network.lc0.random_net.random_net` of :func:`twin_spec`; every
    weight layer's size is compared with the real net's.

    Raises:
        ConfigError: ``RandomNetSpec`` cannot express the real net's shapes (lists the layers
            that differ).
    """
    from leela_interp.network.lc0.random_net import random_net
    from leela_interp.network.lc0.weights import read_net, write_net

    real = read_net(real_path)
    spec = twin_spec(real)
    twin = random_net(spec, seed)
    _match_conv_affines(real.weights, twin.weights, spec.encoding)
    want, got = layer_sizes(real), layer_sizes(twin)
    diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if diff:
        shown = ", ".join(f"{k}: real {want.get(k)} vs twin {got.get(k)}" for k in diff[:8])
        raise ConfigError(f"RandomNetSpec cannot express the shape of {real_path}: {len(diff)} "
                          f"layers differ ({shown}); spec was {spec!r}")
    return write_net(twin, out_path)
