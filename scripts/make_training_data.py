"""Generate Stockfish-labelled training positions from games Stockfish plays against itself.

Every game starts from the standard position, plays ``--random-plies`` uniformly random legal
moves (a random opening; the count itself is drawn uniformly from ``0..random_plies``), then
Stockfish plays both sides: at every ply it searches the position (``--nodes`` nodes,
``--multipv`` lines, one thread, hash cleared at the start of each game) and the move played is
sampled among the multipv moves with probability ``softmax(score_cp / --temperature-cp)``.
Every searched position is recorded with its labels:

* ``best_move``: Stockfish's first multipv move (UCI, python-chess notation: castling is
  ``e1g1``), the policy target;
* ``multipv_moves`` / ``multipv_cp``: all multipv moves and their scores (centipawns from the
  side to move, mates as ``+-(100000 - n)`` as in :mod:`leela_interp.puzzles.oracle`; ``-1000000``
  pads positions with fewer legal moves than ``--multipv``), for an optional
  soft policy target;
* ``wdl``: a (win, draw, loss) target for the side to move, from the best score through
  python-chess's Stockfish WDL model ``Score.wdl(model="sf15.1", ply=board.ply())`` (the model
  that matches this Debian Stockfish 15.1: its UCI centipawns are normalised so that 100 cp is
  a 50% win chance at move 32; mates give (1, 0, 0) or (0, 0, 1));
* ``plies_left``: plies from the position to the end of the recorded game (moves-left target;
  games cut at ``--max-plies`` count as ending there).

Games end at checkmate, stalemate, insufficient material, the 50-move rule, threefold
repetition or ``--max-plies``. Positions carry their full history: each shard stores the games
(``game_moves``: UCI moves from the standard start) and each position's game and ply, so the
position is ``chess.Board()`` plus the first ``ply`` moves of its game.

Shards: ``--out/shard-00000.npz`` ... each holds ``--games-per-shard`` games. Shard ``k`` is
fully determined by ``(--seed, k)`` and the search settings (which are stored in it), so a
rerun reproduces it. Runs are resumable: existing shards are skipped, a shard is written to a
temporary name and renamed when complete. ``--worker i --num-workers n`` splits the shards
(``k % n == i``) between processes.

Example (the project's recipe, see data/README.md)::

    nohup nice -n 19 python scripts/make_training_data.py --out runs/train_data \\
        --shards 400 --worker 0 --num-workers 2 > runs/gen0.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import chess
import chess.engine
import numpy as np

log = logging.getLogger("make_training_data")

MATE_CP = 100_000
#: ``multipv_cp`` entry for a missing line (fewer legal moves than ``--multipv``).
PAD_CP = -1_000_000


def _score_cp(score: chess.engine.PovScore, turn: chess.Color) -> int:
    pov = score.pov(turn)
    mate = pov.mate()
    if mate is not None:
        return MATE_CP - mate if mate > 0 else -(MATE_CP + mate)
    return int(pov.score())


def _wdl(score: chess.engine.PovScore, turn: chess.Color, ply: int) -> tuple[float, float, float]:
    w = score.pov(turn).wdl(model="sf15.1", ply=ply)
    total = w.wins + w.draws + w.losses
    return (w.wins / total, w.draws / total, w.losses / total)


def _terminal_wdl(board: chess.Board) -> tuple[float, float, float] | None:
    if board.is_checkmate():
        return (0.0, 0.0, 1.0)
    if board.is_stalemate() or board.is_insufficient_material():
        return (0.0, 1.0, 0.0)
    return None


def play_game(engine: chess.engine.SimpleEngine, rng: np.random.Generator, args) -> dict:
    """Play one game; return its moves and the labelled positions."""
    board = chess.Board()
    n_random = int(rng.integers(0, args.random_plies + 1))
    for _ in range(n_random):
        moves = list(board.legal_moves)
        if not moves or board.is_game_over(claim_draw=True):
            break
        board.push(moves[int(rng.integers(len(moves)))])
    positions = []
    game_token = object()  # a new object per game makes chess.engine send ucinewgame
    limit = chess.engine.Limit(nodes=args.nodes)
    while not board.is_game_over(claim_draw=True) and board.ply() < args.max_plies:
        infos = engine.analyse(board, limit, multipv=args.multipv, game=game_token)
        infos = [i for i in infos if "pv" in i and i["pv"]]
        if not infos:
            break
        turn = board.turn
        moves = [i["pv"][0] for i in infos]
        scores = [_score_cp(i["score"], turn) for i in infos]
        positions.append({
            "ply": board.ply(),
            "best_move": moves[0].uci(),
            "multipv_moves": " ".join(m.uci() for m in moves),
            "multipv_cp": scores + [PAD_CP] * (args.multipv - len(scores)),
            "wdl": _wdl(infos[0]["score"], turn, board.ply()),
        })
        clipped = np.clip(np.asarray(scores, dtype=np.float64), -3000, 3000)
        logits = (clipped - clipped.max()) / args.temperature_cp
        p = np.exp(logits)
        p /= p.sum()
        board.push(moves[int(rng.choice(len(moves), p=p))])
    end = board.ply()
    for pos in positions:
        pos["plies_left"] = end - pos["ply"]
    return {"moves": " ".join(m.uci() for m in board.move_stack), "positions": positions,
            "result": board.result(claim_draw=True)}


def make_shard(engine, shard: int, args) -> dict[str, np.ndarray]:
    games, rows = [], []
    for g in range(args.games_per_shard):
        rng = np.random.default_rng([args.seed, shard, g])
        game = play_game(engine, rng, args)
        games.append(game)
        for pos in game["positions"]:
            rows.append((len(games) - 1, pos))
    k = args.multipv
    settings = {key: getattr(args, key) for key in
                ("seed", "nodes", "multipv", "temperature_cp", "random_plies", "max_plies",
                 "games_per_shard")}
    settings["shard"] = shard
    settings["wdl_model"] = "python-chess Score.wdl(model='sf15.1', ply=board.ply())"
    return {
        "game_moves": np.array([g["moves"] for g in games], dtype=np.str_),
        "game_result": np.array([g["result"] for g in games], dtype=np.str_),
        "game": np.array([gi for gi, _ in rows], dtype=np.int32),
        "ply": np.array([p["ply"] for _, p in rows], dtype=np.int16),
        "best_move": np.array([p["best_move"] for _, p in rows], dtype=np.str_),
        "multipv_moves": np.array([p["multipv_moves"] for _, p in rows], dtype=np.str_),
        "multipv_cp": np.array([p["multipv_cp"] for _, p in rows], dtype=np.int32).reshape(-1, k),
        "wdl": np.array([p["wdl"] for _, p in rows], dtype=np.float32).reshape(-1, 3),
        "plies_left": np.array([p["plies_left"] for _, p in rows], dtype=np.int16),
        "settings": np.array(json.dumps(settings, sort_keys=True)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="shard directory")
    parser.add_argument("--shards", type=int, default=400, help="total number of shards")
    parser.add_argument("--games-per-shard", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=5000, help="Stockfish nodes per search")
    parser.add_argument("--multipv", type=int, default=4)
    parser.add_argument("--temperature-cp", type=float, default=40.0,
                        help="softmax temperature (cp) for sampling the played move")
    parser.add_argument("--random-plies", type=int, default=8,
                        help="random opening: uniform 0..N random legal moves")
    parser.add_argument("--max-plies", type=int, default=300)
    parser.add_argument("--stockfish", default="/usr/games/stockfish")
    parser.add_argument("--hash-mb", type=int, default=16)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    engine = chess.engine.SimpleEngine.popen_uci(args.stockfish)
    engine.configure({"Threads": 1, "Hash": args.hash_mb})
    try:
        for shard in range(args.worker, args.shards, args.num_workers):
            path = args.out / f"shard-{shard:05d}.npz"
            if path.exists():
                continue
            t0 = time.time()
            arrays = make_shard(engine, shard, args)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)
            n = len(arrays["ply"])
            log.info("shard %d: %d games, %d positions, %.1fs (%.1f pos/s)", shard,
                     args.games_per_shard, n, time.time() - t0, n / max(time.time() - t0, 1e-9))
    finally:
        engine.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
