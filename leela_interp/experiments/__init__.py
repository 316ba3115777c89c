"""The experiments on a network and its puzzles: activation caches, activation patching and
ablations (interventions), and look-ahead probes."""
