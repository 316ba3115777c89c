"""Mine Lichess-format puzzles from PGN files or the project's own training-data games.

Rules, determinism and output format: :mod:`leela_interp.puzzles.mining`. Games are processed in
chunks (``--chunk-games``); after each chunk the CSV so far is rewritten, so progress is
visible, and every Stockfish result goes to the sqlite ``--cache``, so a killed run restarts
where it stopped at the cost of reading the cache.

Examples::

    # any PGN file (every position screened with a fast search, then verified)
    python scripts/mine_puzzles.py games.pgn --out puzzles.csv

    # the project's own games: the shards' Stockfish labels are the screen
    nohup nice -n 19 python scripts/mine_puzzles.py --shards runs/train_data --shard-range 0:44 \\
        --out data/puzzles/mined.csv --cache runs/mining_cache.sqlite > runs/mine.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leela_interp.puzzles.lichess import write_puzzles  # noqa: E402
from leela_interp.puzzles.mining import (MiningConfig, MiningStats, candidates_from_shards,  # noqa: E402
                                 mine_puzzles, read_pgn)

log = logging.getLogger("mine_puzzles")


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pgn", nargs="*", type=Path, help="PGN files")
    parser.add_argument("--shards", type=Path, default=None,
                        help="directory of scripts/make_training_data.py shards")
    parser.add_argument("--shard-range", default=None,
                        help="START:STOP shard indices to use (default: all present)")
    parser.add_argument("--out", type=Path, required=True, help="output CSV (.csv or .csv.zst)")
    parser.add_argument("--cache", type=Path, default=None, help="sqlite oracle cache")
    parser.add_argument("--max-games", type=int, default=None, help="PGN: read at most this many")
    parser.add_argument("--chunk-games", type=int, default=50)
    parser.add_argument("--max-puzzles", type=int, default=None,
                        help="stop after the chunk that reaches this many puzzles")
    defaults = MiningConfig()
    for name in ("depth", "confirm_depth", "screen_nodes", "screen_slack_cp", "margin_cp", "min_win_cp",
                 "max_second_cp", "min_plies", "max_plies", "min_game_ply", "max_per_game",
                 "seed", "hash_mb", "num_engines"):
        optional = name in ("max_second_cp", "max_per_game", "num_engines", "confirm_depth")
        parser.add_argument(f"--{name.replace('_', '-')}",
                            type=_int_or_none if optional else int,
                            default=getattr(defaults, name),
                            help="an integer, or 'none'" if optional else None)
    parser.add_argument("--stockfish", default=defaults.path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = MiningConfig(
        depth=args.depth, confirm_depth=args.confirm_depth, screen_nodes=args.screen_nodes, screen_slack_cp=args.screen_slack_cp,
        margin_cp=args.margin_cp, min_win_cp=args.min_win_cp, max_second_cp=args.max_second_cp,
        min_plies=args.min_plies, max_plies=args.max_plies, min_game_ply=args.min_game_ply,
        max_per_game=args.max_per_game, seed=args.seed, path=args.stockfish,
        hash_mb=args.hash_mb, num_engines=args.num_engines)
    log.info("%r", config)

    # (games, candidates or None) per chunk
    chunks = []
    if args.shards is not None:
        paths = sorted(args.shards.glob("shard-*.npz"))
        if args.shard_range:
            start, stop = (int(x) for x in args.shard_range.split(":"))
            wanted = {f"shard-{i:05d}.npz" for i in range(start, stop)}
            missing = wanted - {p.name for p in paths}
            if missing:
                raise SystemExit(f"missing shards in {args.shards}: {sorted(missing)[:5]} ...")
            paths = [p for p in paths if p.name in wanted]
        per_chunk = max(1, args.chunk_games // 8)
        for i in range(0, len(paths), per_chunk):
            chunks.append(candidates_from_shards(paths[i:i + per_chunk], config))
    games = [g for path in args.pgn for g in read_pgn(path, limit=args.max_games)]
    for i in range(0, len(games), args.chunk_games):
        chunks.append((games[i:i + args.chunk_games], None))

    stats, seen, puzzles = MiningStats(), set(), []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n, (chunk_games, candidates) in enumerate(chunks):
        t0 = time.time()
        found, _ = mine_puzzles(chunk_games, config, cache_path=args.cache, stats=stats,
                                seen=seen, candidates=candidates)
        puzzles.extend(found)
        write_puzzles(args.out, puzzles)
        log.info("chunk %d/%d: %d games, +%d puzzles (total %d), %.0fs", n + 1, len(chunks),
                 len(chunk_games), len(found), len(puzzles), time.time() - t0)
        if args.max_puzzles is not None and len(puzzles) >= args.max_puzzles:
            log.info("reached --max-puzzles %d", args.max_puzzles)
            break
    log.info("done: %s", json.dumps(stats.to_dict()))
    print(json.dumps(stats.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
