"""Puzzles, from the Lichess CSV to ``puzzles.h5``: reading (:mod:`~leela_interp.puzzles.lichess`),
the Stockfish oracle, corruptions, mining, the filtering pipeline, the puzzle set and shards."""
