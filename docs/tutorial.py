# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # leela_interp in a notebook: a board, hooks, puzzles.h5, a new experiment
#
# This notebook is kept as `docs/tutorial.py` (jupytext percent format) and executed, outputs
# included, into `docs/tutorial.ipynb` by `tests/test_tutorial.py`. It uses the project's small
# trained nets in `data/nets/` (64 wide, 4 layers, 4 heads: the numbers show the mechanics, not
# the paper's findings) and writes a run folder `tutorial_run/` in the working directory.

# %%
from pathlib import Path

import chess
import torch

import leela_interp
from leela_interp import load_network

ROOT = Path(leela_interp.__file__).resolve().parents[1]  # the checkout: data/
torch.set_num_threads(1)
net = load_network(ROOT / "data/nets/strong-bt-64x4.pb.gz")
print(net.config.body, net.config.n_layers, "layers,", net.config.n_heads, "heads")

# %% [markdown]
# ## One board
# The move stack is the history lc0 sees; `move_probabilities` is a softmax over legal moves.

# %%
board = chess.Board()
for san in ["e4", "e5", "Nf3", "Nc6", "Bc4", "Nd4"]:
    board.push_san(san)
probs = net.move_probabilities([board])[0]
print(sorted(probs.items(), key=lambda kv: -kv[1])[:5])

# %% [markdown]
# ## Hooks and the activation cache
# `run_with_cache` returns an `ActivationCache`: a mapping of hook names with TransformerLens's
# tools (`docs/hooks.md`). The logit lens runs the heads on each layer's stream (lc0's blocks
# end in a LayerNorm, so every stream is already what the heads expect).

# %%
from leela_interp.board.encoding import square_to_token, transform_for
from leela_interp.board.policy import policy_index

planes = net.encode([board])
out, cache = net.run_with_cache(planes)
print(cache["pattern", 1].shape, cache.accumulated_resid()[1])
move = policy_index(board, chess.Move.from_uci("f3e5"),
                    transform=transform_for(board, net.config.input_format))
for layer in range(net.config.n_layers):
    logits = cache.logit_lens(layer).policy_logits[0]
    print(f"layer {layer}: logit of Nxe5 {float(logits[move]):+.2f}")

# %% [markdown]
# ## puzzles.h5
# The `puzzles` stage filters puzzles with a strong and a weak net and picks a corrupted board
# for each (`docs/puzzles.md`). Here on the first 40 rows of the shipped mined puzzles, without
# the Stockfish check, through the same Hydra config the CLI reads.

# %%
from hydra import compose, initialize_config_dir

from leela_interp.cli import CONFIG_PATH
from leela_interp.puzzles.puzzle_set import PuzzleSet
from leela_interp.stages import run_stages

out_dir = Path("tutorial_run").resolve()
with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
    cfg = compose("config", overrides=[
        "stage=puzzles", f"out_dir={out_dir}", f"model.path={net.path}",
        f"puzzles.source={ROOT}/data/puzzles/mined.csv", "puzzles.limit=40",
        f"puzzles.weak_model.path={ROOT}/data/nets/weak-bt-32x2.pb.gz",
        "puzzles.oracle.enabled=false", "puzzles.filters.unique=false",
        "puzzles.corruptions.min_oracle_drop_cp=null", "threads=1"])
run_stages(cfg)
puzzles = PuzzleSet.load(out_dir / "puzzles.h5")
print(len(puzzles), "puzzles; first:", puzzles.ids[0], puzzles.fens[0], puzzles.moves[0])

# %% [markdown]
# ## A new experiment in ten lines
# How much does each head of layer 1 attend from the 1st move's target square to the 3rd move's
# target square, on puzzles versus on ordinary positions? The ordinary ones: each puzzle's board
# after two random legal plies, with the net's own greedy line as "moves".

# %%
import random

def attention_1st_to_3rd(boards, lines, layer=1):
    _, c = net.run_with_cache(net.encode(boards), names=f"blocks.{layer}.attn.hook_pattern")
    tf = [transform_for(b, net.config.input_format) for b in boards]
    q = [square_to_token(m[0].to_square, b.turn, t) for b, m, t in zip(boards, lines, tf)]
    k = [square_to_token(m[2].to_square, b.turn, t) for b, m, t in zip(boards, lines, tf)]
    return c["pattern", layer][torch.arange(len(boards)), :, q, k].mean(0)  # [heads]

def greedy_line(board, n=3):
    b, line = board.copy(), []
    for _ in range(n):
        probs = net.move_probabilities([b])[0]
        line.append(chess.Move.from_uci(max(probs, key=probs.get)))
        b.push(line[-1])
    return line

rng = random.Random(0)
clean = [puzzles.clean_board(i) for i in range(len(puzzles)) if len(puzzles.pv(i)) >= 3]
lines = [[chess.Move.from_uci(m) for m in puzzles.pv(i)] for i in range(len(puzzles))
         if len(puzzles.pv(i)) >= 3]
ordinary = []
for b in clean:
    b = b.copy()
    for _ in range(2):
        b.push(rng.choice(list(b.legal_moves)))
    ordinary.append(b)
ordinary = [b for b in ordinary if not b.is_game_over()]
print("puzzles ", attention_1st_to_3rd(clean, lines).numpy().round(3))
print("ordinary", attention_1st_to_3rd(ordinary, [greedy_line(b) for b in ordinary])
      .numpy().round(3))

# %% [markdown]
# ## Attribution patching and a DataFrame
# `patching.method=attribution` estimates every residual and head patch from one backward pass
# (`docs/interventions.md`); `to_frame` turns the result into a long table with the puzzles'
# metadata.

# %%
from leela_interp.outputs.frames import to_frame

with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
    cfg = compose("config", overrides=[
        "stage=patching", f"out_dir={out_dir}", f"model.path={net.path}",
        "patching.method=attribution", "patching.figures=false", "threads=1"])
run_stages(cfg)
df = to_frame(out_dir / "patching.h5", "heads/effect")
print(df.groupby(["layer", "head"])["effect"].mean().unstack().round(3))
