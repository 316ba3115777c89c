"""Look-ahead probes: can a later move of the principal variation be read off the residual stream?

The paper's second line of evidence (Jenner et al. 2024, section 3.3): a small probe, given the
residual stream of one layer, predicts the square of the side to move's *next* move (the 3rd
move of the PV) better than any baseline. This module holds the probes, reading a layer from
the activation cache, and the baselines; what they predict and on which puzzles is
:mod:`leela_interp.experiments.probe_targets`, the random-twin control
:mod:`leela_interp.experiments.random_twin`, and ``probes.h5``
:mod:`leela_interp.experiments.probing`; see ``docs/probes.md`` for the method and the output
file.

Conventions:

- Squares are **tokens**: ``rank * 8 + file`` in the side-to-move frame of the puzzle position
  (after lc0's canonical transform), i.e. indices into the 64 rows of a residual-stream
  activation ``[64, d_model]``. :func:`~leela_interp.experiments.probe_targets.pv_squares` maps
  PV moves with :func:`leela_interp.board.encoding.square_to_token`. Every probe predicts a
  token.
- PV plies are counted from 0: ply 0 is the side to move's first move, ply 1 the opponent's
  reply, ply 2 the side to move's next move (the paper's "3rd move").
- ``acts`` is one layer's activations ``[N, 64, d_model]`` (numpy, float16 or float32, as
  stored, or a :class:`LayerRows` reading them from the cache on demand); ``rows`` index it
  (puzzles), ``cond`` gives one conditioning token per row.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from leela_interp.errors import ConfigError
from leela_interp.experiments.probe_targets import TargetLabels, TargetSpec
from leela_interp.outputs.results import read_strings

log = logging.getLogger(__name__)

#: Schema of the ``activations.h5`` files this module reads (the ``activations`` stage's).
ACTIVATIONS_SCHEMA = "leela_interp.activations/2"
#: Probe kinds, in the order they appear in ``probes.h5``.
PROBES = ("bilinear", "logreg")
#: No-activation baselines (see :func:`evaluate_baselines`).
BASELINES = ("majority", "condition", "piece")

# --------------------------------------------------------------------------- activations


def cache_puzzle_ids(f: h5py.File) -> list[str]:
    """The puzzle id of each row of an open ``activations.h5`` (its dataset ``puzzle_id``).

    Raises:
        ConfigError: the file's schema is not :data:`ACTIVATIONS_SCHEMA` (a cache of an older
            layout, whose ids were ``puzzle_ids``: rerun the activations stage).
    """
    schema = f.attrs.get("schema")
    if schema != ACTIVATIONS_SCHEMA:
        raise ConfigError(f"{f.filename} has schema {schema!r}, not {ACTIVATIONS_SCHEMA!r} (an "
                          f"older layout or not an activation cache); rerun the activations "
                          f"stage (leela-interp stage=activations)")
    return read_strings(f["puzzle_id"])


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
        ``{output name: (n_correct, n_test)}`` for
        :func:`~leela_interp.experiments.probe_targets.output_names`.
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
                       baselines: Sequence[str] = BASELINES
                       ) -> dict[str, dict[str, tuple[int, int]]]:
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
