"""``model.dtype``: every stage runs in bfloat16 and float16, outputs and files stay float32.

The pipeline runs on a tiny real run (``tiny_run.py``'s puzzles and random nets) once per dtype;
the low-precision runs are compared with the float32 run on the same puzzles.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from tiny_run import ROWS, compose_config, write_inputs

from leela_interp.errors import ConfigError
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.network import load_network
from leela_interp.stages import run_stages

N_PUZZLES = 12
LOW = ("bfloat16", "float16")
OUTPUTS = ("puzzles.h5", "activations.h5", "patching.h5", "ablations.h5", "probes.h5")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("dtypes")
    inputs = write_inputs(root, ROWS, N_PUZZLES)
    folders = {}
    for dtype in ("float32", *LOW):
        folders[dtype] = root / dtype
        run_stages(compose_config(inputs, folders[dtype], f"model.dtype={dtype}",
                                  "ablations.method=[zero,mean]"))
    return {"inputs": inputs, **folders}


def float_dtypes(path) -> set[str]:
    kinds: set[str] = set()

    def visit(name, obj) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
            kinds.add(str(obj.dtype))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return kinds


@pytest.mark.parametrize("dtype", LOW)
def test_every_stage_runs_and_writes_float32_or_float64(runs, dtype):
    for name in OUTPUTS:
        assert float_dtypes(runs[dtype] / name) <= {"float32", "float64"}, name
    assert (runs[dtype] / "report.md").exists()
    with h5py.File(runs[dtype] / "patching.h5", "r") as f:
        assert f["analysed"][()].any()
        assert np.isfinite(f["clean_log_odds"][()]).all()


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_metrics_are_close_to_float32(runs, dtype):
    # Same puzzles (the random nets' filters are relaxed to keep them all) and the same metric:
    # the clean log-odds, computed in float64 from float32 logits, differ only by the network's
    # rounding (bfloat16 keeps 8 bits of mantissa, float16 11).
    tolerance = {"bfloat16": 0.25, "float16": 0.05}[dtype]
    with h5py.File(runs["float32"] / "patching.h5", "r") as ref, \
            h5py.File(runs[dtype] / "patching.h5", "r") as low:
        assert list(ref["puzzle_id"][()]) == list(low["puzzle_id"][()])
        d = np.abs(ref["clean_log_odds"][()] - low["clean_log_odds"][()])
        assert 0 < d.max() < tolerance


@pytest.mark.parametrize("dtype", LOW)
def test_outputs_are_float32_and_hooks_see_the_nets_dtype(runs, dtype):
    _, strong, _ = runs["inputs"]
    net = load_network(strong, dtype=dtype)
    out, cache = net.run_with_cache(torch.zeros(2, 112, 8, 8), names="blocks.0.hook_resid_post")
    assert out.policy_logits.dtype == out.value.dtype == out.wdl.dtype == torch.float32
    assert cache["blocks.0.hook_resid_post"].dtype == getattr(torch, dtype)


@pytest.mark.parametrize("dtype", ["float64", "half", "fp16", torch.int8])
def test_unsupported_dtype_names_the_value_and_the_choices(tmp_path, dtype):
    with pytest.raises(ConfigError, match=r"model\.dtype=.*float32.*bfloat16.*float16"):
        load_network(write_random_net(tmp_path / "net.pb.gz", seed=0), dtype=dtype)
