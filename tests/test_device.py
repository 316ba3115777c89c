"""``model.device``: every stage loads its networks (the strong net, the weak net, the probes'
random twin) on the configured device, and null means cuda when available, else cpu.

No GPU here: ``load_network`` is wrapped to record the device each stage asks for and to load on
the CPU whatever it was asked, so the whole pipeline of a tiny real run still runs.
"""

from __future__ import annotations

import pytest
import torch
from tiny_run import ROWS, compose_config, write_inputs

import leela_interp.network
from leela_interp.errors import ConfigError
from leela_interp.network import load_network
from leela_interp.stages import activations, run_stages

#: Where a stage reaches ``load_network``: the package attribute that function-level imports
#: (``stages.common.load_model``, the puzzles stage, the probes' random twin) read at call time.
HOLDERS = (leela_interp.network,)


@pytest.fixture
def asked(monkeypatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    def recording(path, *args, device=None, **kwargs):
        calls.append((str(device), str(path)))
        return load_network(path, *args, device="cpu", **kwargs)

    for holder in HOLDERS:
        monkeypatch.setattr(holder, "load_network", recording)
    return calls


# CUDA is faked as present (the schema refuses a CUDA device on a machine without one).
@pytest.mark.parametrize("device, cuda, expected", [("cuda:1", True, "cuda:1"),
                                                    (None, True, "cuda")])
def test_every_stage_loads_its_nets_on_model_device(tmp_path, monkeypatch, asked, device, cuda,
                                                    expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    inputs = write_inputs(tmp_path, ROWS[:4], 4)
    setting = "null" if device is None else device
    # The report's figures (views.network) load the net on the CPU for one puzzle at a time.
    run_stages(compose_config(inputs, tmp_path / "run", f"model.device={setting}",
                              "stage=[puzzles,activations,patching,ablations,probes]"))
    _, strong, weak = inputs
    nets = {path for _, path in asked}
    assert {str(strong), str(weak)} <= nets and any("twin" in path for path in nets), nets
    assert {d for d, _ in asked} == {expected}, [c for c in asked if c[0] != expected]


def test_out_of_memory_names_the_batch_size(tmp_path, monkeypatch):
    def exhausted(cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(activations, "run", exhausted)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # else the schema refuses
    cfg = compose_config(write_inputs(tmp_path, ROWS[:2], 2), tmp_path / "run",
                         "stage=activations", "model.batch_size=512", "model.device=cuda:1")
    with pytest.raises(ConfigError, match=r"stage=activations ran out of memory on cuda:1 with "
                                          r"model\.batch_size=512 .*Tried to allocate"):
        run_stages(cfg)
