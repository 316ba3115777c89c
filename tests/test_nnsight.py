"""nnsight works on the native module: ``NNsight(net)`` traces, saves and edits activations at
the hook points (version pinned in the test extra; checked against run_with_cache/hooks)."""

from __future__ import annotations

import pytest
import torch

from positions import lc0_positions

from leela_interp import load_network
from leela_interp.network.lc0.random_net import write_random_net

nnsight = pytest.importorskip("nnsight", reason="nnsight (in the test extra) is not installed")

SPECS = {"transformer": dict(body="transformer", policy="attention", d_model=32, layers=3,
                             heads=4, d_ff=48, smolgen=True),
         "cnn": dict(body="cnn", channels=16, blocks=3)}


@pytest.fixture(scope="module", params=sorted(SPECS))
def net(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "n.pb.gz"
    return load_network(write_random_net(path, seed=5, **SPECS[request.param]))


def test_trace_save_and_edit(net):
    planes = net.encode(lc0_positions(4, seed=2))
    model = nnsight.NNsight(net)
    with model.trace(planes):
        resid = model.blocks[1].hook_resid_post.output.save()
        logits = model.output.policy_logits.save()
    _, cache = net.run_with_cache(planes, names="blocks.1.hook_resid_post")
    assert torch.allclose(resid, cache["resid_post", 1], atol=1e-6, rtol=0)
    assert torch.allclose(logits, net(planes).policy_logits, atol=1e-6, rtol=0)
    with model.trace(planes):
        model.blocks[1].hook_resid_post.output[:, 5] = 0  # zero square 5's stream
        edited = model.output.policy_logits.save()

    def zero(t, hook):
        t = t.clone()
        t[:, 5] = 0
        return t

    ref = net.run_with_hooks(planes, fwd_hooks=[("blocks.1.hook_resid_post", zero)])
    assert torch.allclose(edited, ref.policy_logits, atol=1e-6, rtol=0)
    assert not torch.allclose(edited, logits, atol=1e-3)
    assert all(not p._forward_hooks for p in net.hook_dict.values())  # nothing left behind


def test_the_version_is_the_one_documented():
    assert nnsight.__version__ == "0.8.1", nnsight.__version__
