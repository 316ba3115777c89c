"""Train a small Leela-format attention-body network on the project's Stockfish-labelled data.

The network starts as ``random_net(RandomNetSpec(body="transformer", policy="attention", ...),
seed)`` (the project's seeded random BT-style net: PE_DENSE embedding, gating, smolgen, WDL and
moves-left heads) built into a native :class:`~leela_interp.network.net.LeelaNet`, and is
trained with AdamW on

* policy: cross-entropy over the legal moves (illegal logits masked out) against
  ``(1 - soft_weight) * onehot(best_move) + soft_weight * softmax(multipv_cp / soft_temperature_cp)``
  (the multipv moves of Stockfish's search; mates clipped to +-3000 cp);
* value: cross-entropy of the WDL head against the WDL target of the data (see
  ``scripts/make_training_data.py``);
* moves left (``mlh_weight``): Huber loss of the head's output against the plies left in the
  game, both divided by 20.

With ``tactical_weight > 0`` positions where Stockfish's best move beats its second-best by at
least ``tactical_margin_cp`` are drawn ``1 + tactical_weight`` times as often as the others
(positions with one clear best move carry the tactics; in quiet positions the label is one of
several near-equal moves).

The data are the shards ``shard-00000.npz ...`` of ``data_dir``. The training set grows on a
fixed schedule so that training can run while ``make_training_data.py`` is still writing
shards: at step ``s`` it is shards ``0 .. k-1`` with
``k = min(shards, shards_start + max(0, s - grow_from_step) * shards_per_1000_steps // 1000)``; with
``wait_for_data: true`` a shard that does not exist yet is waited for. Every shard with
``index % val_every == val_every - 1`` is held out for validation. Batches are drawn uniformly
(with replacement) from the current training set by a generator seeded with ``(seed, step)``,
so a run is a function of its config and the shards alone, resumed or not. Each shard is
encoded once (112 input planes as lc0 masks, legal-move mask, targets) into ``cache_dir``.

Resumable: a checkpoint (model, optimiser, step) is written atomically to
``<run_dir>/checkpoint.pt`` every ``checkpoint_every`` steps and a rerun resumes from it. Uses CUDA when available (``device: auto``). At the end the network is
written with :func:`leela_interp.network.lc0.export.save_network` to ``out``.

Configuration: a YAML file (``leela_interp/conf/train/strong.yaml``,
``leela_interp/conf/train/weak.yaml``) plus ``key=value`` overrides, e.g.::

    nohup nice -n 19 python scripts/train.py leela_interp/conf/train/strong.yaml \\
        > runs/train_strong.log 2>&1 &
    python scripts/train.py leela_interp/conf/train/weak.yaml steps=100 run_dir=runs/try
    python scripts/train.py leela_interp/conf/train/strong.yaml export_only=true \\
        out=runs/snapshot.pb.gz
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import chess
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from leela_interp.board.encoding import encode_bitboards, planes_from_bitboards  # noqa: E402
from leela_interp.board.policy import legal_moves_and_indices, policy_index  # noqa: E402
from leela_interp.network.lc0.export import save_network  # noqa: E402
from leela_interp.network.lc0.random_net import RandomNetSpec, random_net  # noqa: E402
from leela_interp.network.loading import build_network  # noqa: E402

log = logging.getLogger("train")

DEFAULTS = {
    "data_dir": "runs/train_data",
    "cache_dir": "runs/train_cache",
    "run_dir": "runs/train",
    "out": "runs/train/net.pb.gz",
    "encoding": "LINEAR16",
    "shards": 100,
    "shards_start": 100,
    "shards_per_1000_steps": 0,
    "grow_from_step": 0,
    "val_every": 50,
    "wait_for_data": True,
    "seed": 0,
    "device": "auto",
    "threads": 1,  # torch CPU threads (1 is fastest on a shared CPU); 0 = torch's default
    "net": {
        "d_model": 64, "layers": 4, "heads": 4, "d_ff": 128, "embedding": "PE_DENSE",
        "dense_pos": 4, "default_activation": "mish", "smolgen": True, "smolgen_compress": 4,
        "smolgen_hidden": 32, "smolgen_gen": 16, "policy_d": 32, "value_channels": 8,
        "value_hidden": 64, "moves_left": True, "mlh_channels": 4, "mlh_hidden": 16,
        "input_format": 1,
    },
    "steps": 10000,
    "batch_size": 256,
    "lr": 1e-3,
    "min_lr": 1e-5,
    "warmup_steps": 200,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "soft_weight": 0.5,
    "soft_temperature_cp": 50.0,
    "wdl_weight": 1.0,
    "tactical_weight": 0.0,  # sampling weight 1 + this for clear-best-move positions
    "tactical_margin_cp": 100,
    "mlh_weight": 0.1,
    "checkpoint_every": 250,
    "log_every": 50,
    "val_positions": 4096,
    "export_only": False,  # write `out` from the last checkpoint without training further
}

_PAD_CP = -1_000_000


# --------------------------------------------------------------------------- data

def encode_shard(src: Path, dst: Path, input_format: int) -> None:
    """Encode one data shard into training arrays (written atomically to ``dst``)."""
    d = np.load(src)
    games = [g.split() for g in d["game_moves"]]
    game_idx, plies = d["game"], d["ply"].astype(np.int64)
    mpv_moves = [m.split() for m in d["multipv_moves"]]
    k = d["multipv_cp"].shape[1]
    boards = []
    best = np.zeros(len(plies), np.int16)
    mpv_idx = np.full((len(plies), k), -1, np.int16)
    legal = np.zeros((len(plies), 1858), bool)
    # positions of one game come in ply order: replay each game once
    cur_game, board = -1, None
    for row, (g, ply) in enumerate(zip(game_idx, plies)):
        if g != cur_game:
            cur_game, board = g, chess.Board()
        while board.ply() < ply:
            board.push_uci(games[g][board.ply()])
        snap = board.copy()
        boards.append(snap)
        best[row] = policy_index(board, chess.Move.from_uci(str(d["best_move"][row])))
        for j, uci in enumerate(mpv_moves[row]):
            mpv_idx[row, j] = policy_index(board, chess.Move.from_uci(uci))
        _, idx = legal_moves_and_indices(board)
        legal[row, idx] = True
    masks, values, _ = encode_bitboards(boards, input_format=input_format)
    tmp = dst.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, masks=masks, rule50=values[:, 109].astype(np.float32),
             legal=np.packbits(legal, axis=1), best=best, mpv_idx=mpv_idx,
             mpv_cp=d["multipv_cp"].astype(np.int32), wdl=d["wdl"].astype(np.float32),
             plies_left=d["plies_left"].astype(np.float32))
    os.replace(tmp, dst)


class Data:
    """Positions of a growing list of encoded shards, in memory, with batch assembly."""

    KEYS = ("masks", "rule50", "legal", "best", "mpv_idx", "mpv_cp", "wdl", "plies_left")

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []
        self.n = 0

    def add(self, path: Path) -> None:
        with np.load(path) as f:
            self.parts.append({k: f[k] for k in self.KEYS})
        for k in self.KEYS:
            setattr(self, k, np.concatenate([p[k] for p in self.parts]))
        self.n = len(self.masks)

    def batch(self, rows: np.ndarray, cfg, device) -> dict[str, torch.Tensor]:
        values = np.ones((len(rows), 112), np.float32)
        values[:, 109] = self.rule50[rows]
        planes = planes_from_bitboards(self.masks[rows], values)
        legal = torch.from_numpy(np.unpackbits(self.legal[rows], axis=1, count=1858).astype(bool))
        # policy target: onehot(best) mixed with a softmax over the multipv scores
        target = np.zeros((len(rows), 1858), np.float32)
        target[np.arange(len(rows)), self.best[rows]] += 1.0 - cfg.soft_weight
        cp = self.mpv_cp[rows].astype(np.float64)
        idx = self.mpv_idx[rows]
        valid = (idx >= 0) & (cp > _PAD_CP)
        z = np.where(valid, np.clip(cp, -3000, 3000) / cfg.soft_temperature_cp, -np.inf)
        z = z - z.max(axis=1, keepdims=True)
        p = np.where(valid, np.exp(z), 0.0)
        p /= p.sum(axis=1, keepdims=True)
        for j in range(idx.shape[1]):
            ok = valid[:, j]
            np.add.at(target, (np.nonzero(ok)[0], idx[ok, j]), cfg.soft_weight * p[ok, j])
        return {
            "planes": planes.to(device),
            "legal": legal.to(device),
            "policy": torch.from_numpy(target).to(device),
            "best": torch.from_numpy(self.best[rows].astype(np.int64)).to(device),
            "wdl": torch.from_numpy(self.wdl[rows]).to(device),
            "plies_left": torch.from_numpy(self.plies_left[rows]).to(device),
        }


def shards_at(step: int, cfg) -> int:
    """How many shards (0 .. k-1) the training set holds at ``step``: a fixed schedule."""
    grown = cfg.shards_start + (max(0, step - cfg.grow_from_step)
                                * cfg.shards_per_1000_steps) // 1000
    return min(cfg.shards, grown)


class Shards:
    """Encodes shards on demand (waiting for data generation to write them) into train/val."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.data_dir, self.cache_dir = Path(cfg.data_dir), Path(cfg.cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.train, self.val = Data(), Data()
        self.loaded = 0

    def ensure(self, k: int, wait: bool) -> bool:
        """Load shards ``loaded .. k-1``; wait for missing ones (or raise if ``not wait``).

        Returns whether any shard was loaded."""
        cfg = self.cfg
        if self.loaded >= k:
            return False
        while self.loaded < k:
            i = self.loaded
            src = self.data_dir / f"shard-{i:05d}.npz"
            dst = self.cache_dir / f"enc{cfg.net.input_format}-shard-{i:05d}.npz"
            if not dst.exists():
                if not src.exists():
                    if not wait:
                        raise FileNotFoundError(
                            f"missing training shard {src}; run scripts/make_training_data.py")
                    log.info("waiting for %s", src)
                    while not src.exists():
                        time.sleep(30)
                t0 = time.time()
                encode_shard(src, dst, cfg.net.input_format)
                log.info("encoded %s (%.1fs)", src.name, time.time() - t0)
            (self.val if i % cfg.val_every == cfg.val_every - 1 else self.train).add(dst)
            self.loaded += 1
        log.info("data: shards 0..%d: %d training positions, %d validation positions",
                 k - 1, self.train.n, self.val.n)
        return True


# --------------------------------------------------------------------------- model

def make_net(cfg):
    n = cfg.net
    spec = RandomNetSpec(
        body="transformer", policy="attention", input_format=n.input_format,
        d_model=n.d_model, layers=n.layers, heads=n.heads, d_ff=n.d_ff, embedding=n.embedding,
        dense_pos=n.dense_pos, default_activation=n.default_activation, smolgen=n.smolgen,
        smolgen_compress=n.smolgen_compress, smolgen_hidden=n.smolgen_hidden,
        smolgen_gen=n.smolgen_gen, policy_d=n.policy_d, value_channels=n.value_channels,
        value_hidden=n.value_hidden, moves_left=n.moves_left, mlh_channels=n.mlh_channels,
        mlh_hidden=n.mlh_hidden, encoding="FLOAT32")
    net = build_network(random_net(spec, cfg.seed), path="<train>")
    net.requires_grad_(True)
    return net


def forward_losses(net, b, cfg) -> dict[str, torch.Tensor]:
    x = net(b["planes"], stop_at_layer=len(net.blocks))
    logits = net.policy_head(x, net.smolgen_w)
    logits = logits.masked_fill(~b["legal"], float("-inf"))
    logp = torch.log_softmax(logits, dim=1)
    policy = -(b["policy"] * logp.masked_fill(~b["legal"], 0.0)).sum(1).mean()
    wdl_logp = torch.log_softmax(net.value_head(x), dim=1)
    wdl = -(b["wdl"] * wdl_logp).sum(1).mean()
    out = {"policy": policy, "wdl": wdl,
           "acc": (logits.argmax(1) == b["best"]).float().mean()}
    total = policy + cfg.wdl_weight * wdl
    if net.mlh_head is not None and cfg.mlh_weight > 0:
        mlh = torch.relu(net.mlh_head(x)).squeeze(1)
        out["mlh"] = F.huber_loss(mlh / 20.0, b["plies_left"] / 20.0)
        total = total + cfg.mlh_weight * out["mlh"]
    out["loss"] = total
    return out


def lr_at(step: int, cfg) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def batch_rows(step: int, n: int, batch_size: int, seed: int,
               weights: np.ndarray | None = None) -> np.ndarray:
    """Rows of batch ``step``: drawn with replacement from the current training set, uniformly
    or with probability proportional to ``weights``, by a generator seeded with (seed, step)."""
    rng = np.random.default_rng([seed, step])
    if weights is None:
        return np.sort(rng.integers(0, n, batch_size))
    return np.sort(rng.choice(n, batch_size, p=weights[:n] / weights[:n].sum()))


def sample_weights(data: Data, cfg) -> np.ndarray | None:
    """``1 + tactical_weight`` for positions whose best move beats the second-best by at least
    ``tactical_margin_cp`` (Stockfish's multipv labels), 1 elsewhere; None if uniform."""
    if not cfg.tactical_weight:
        return None
    cp = data.mpv_cp.astype(np.int64)
    margin = np.where(cp[:, 1] > _PAD_CP, cp[:, 0] - cp[:, 1], 0)
    return 1.0 + cfg.tactical_weight * (margin >= cfg.tactical_margin_cp)


@torch.no_grad()
def validate(net, data: Data, cfg, device) -> dict[str, float]:
    net.eval()
    n = min(cfg.val_positions, data.n)
    sums: dict[str, float] = {}
    for start in range(0, n, 512):
        rows = np.arange(start, min(n, start + 512))
        out = forward_losses(net, data.batch(rows, cfg, device), cfg)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(rows)
    net.train()
    return {k: v / max(n, 1) for k, v in sums.items()}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not argv or "=" in argv[0]:
        raise SystemExit("usage: train.py CONFIG.yaml [key=value ...]")
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.load(argv[0]),
                          OmegaConf.from_dotlist(argv[1:]))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.export_only:
        OmegaConf.save(cfg, run_dir / "config.yaml")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    shards = Shards(cfg)

    net = make_net(cfg).to(device)
    net.train()
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in net.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    step = 0
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        log.info("resumed from %s at step %d", ckpt, step)
    train, val = shards.train, shards.val
    if not cfg.export_only:
        shards.ensure(shards_at(step, cfg), wait=cfg.wait_for_data)

    def save_checkpoint() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "config": OmegaConf.to_container(cfg)}, tmp)
        os.replace(tmp, ckpt)

    t0, running, weights = time.time(), {}, None
    while step < cfg.steps and not cfg.export_only:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        if shards.ensure(shards_at(step, cfg), wait=cfg.wait_for_data) or weights is None:
            weights = sample_weights(train, cfg)
        b = train.batch(batch_rows(step, train.n, cfg.batch_size, cfg.seed, weights), cfg,
                        device)
        out = forward_losses(net, b, cfg)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        for k, v in out.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if step % cfg.log_every == 0:
            msg = " ".join(f"{k}={v / cfg.log_every:.4f}" for k, v in running.items())
            log.info("step %d lr=%.2e %s (%.2f steps/s)", step, lr_at(step, cfg), msg,
                     cfg.log_every / (time.time() - t0))
            running, t0 = {}, time.time()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint()
            if val.n:
                v = validate(net, val, cfg, device)
                log.info("step %d validation: %s", step,
                         " ".join(f"{k}={x:.4f}" for k, x in v.items()))
    net.eval()
    if cfg.export_only:
        log.info("export_only: writing the network of step %d", step)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_network(net.cpu(), out, encoding=cfg.encoding)
    log.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
