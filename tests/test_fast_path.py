"""The fused attention path (``scaled_dot_product_attention``) against the hooked definition.

An :class:`~leela_interp.network.transformer.Attention` layer takes the fused path unless a hook is
registered on its ``hook_scores`` or ``hook_pattern``. These tests count the fused calls, so a
wrong switch fails them as surely as a wrong result.
"""

from __future__ import annotations

import math

import chess
import pytest
import torch
import torch.nn.functional as F

from leela_interp import load_network
from leela_interp.network.lc0.random_net import write_random_net

TOL = 1e-5
SMOLGEN = dict(body="transformer", policy="attention", d_model=48, layers=3, heads=4, d_ff=64,
               embedding="PE_DENSE", smolgen=True, policy_encoders=1,
               default_activation="mish")
NO_SMOLGEN = dict(body="transformer", policy="attention", d_model=32, layers=2, heads=4,
                  d_ff=48, embedding="PE_MAP", smolgen=False, gating=False)
FENS = ["r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
        "8/5pk1/6p1/8/3Q4/8/5PPP/6K1 b - - 0 40",
        "4k3/P7/8/8/8/8/8/4K3 w - - 0 1",
        "r3k2r/ppp2ppp/2n5/3qp3/3P4/2N5/PPP2PPP/R2QK2R b KQkq - 0 9"]


@pytest.fixture(scope="module", params=["smolgen", "no-smolgen"])
def net(request, tmp_path_factory):
    spec = SMOLGEN if request.param == "smolgen" else NO_SMOLGEN
    path = write_random_net(tmp_path_factory.mktemp("nets") / "n.pb.gz", seed=3, **spec)
    return load_network(path)


@pytest.fixture(scope="module")
def planes(net):
    return net.encode([chess.Board(fen) for fen in FENS])


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of ``F.scaled_dot_product_attention`` (the fused path) during the test."""
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def _attention_layers(net) -> list[str]:
    return [name[:-len(".hook_pattern")] for name in net.hook_dict
            if name.endswith("attn.hook_pattern")]


def _outputs(out):
    return [t for t in (out.policy_logits, out.value, out.wdl, out.mlh) if t is not None]


#: Observe-only hooks on every pattern: every layer takes the hooked path.
HOOKED_PATH = [("*hook_pattern", lambda t, hook: None)]


def _assert_close(a_out, b_out):
    for a, b in zip(_outputs(a_out), _outputs(b_out), strict=True):
        assert (a - b).abs().max() <= TOL, float((a - b).abs().max())


def test_fused_path_equals_the_hooked_path(net, planes, fused_calls):
    n_layers = len(_attention_layers(net))
    fused = net(planes)
    assert len(fused_calls) == n_layers
    hooked = net.run_with_hooks(planes, fwd_hooks=HOOKED_PATH)
    assert len(fused_calls) == n_layers  # no fused call on the hooked path
    _assert_close(fused, hooked)


def test_fused_path_has_the_hooked_paths_gradients(tmp_path):
    # relu^2 in the FFN: its in-place form would break autograd, so it must stay out of place.
    spec = dict(SMOLGEN, ffn_activation="RELU_2")
    path = write_random_net(tmp_path / "g.pb.gz", seed=4, **spec)
    net = load_network(path).requires_grad_(True)
    planes = net.encode([chess.Board(fen) for fen in FENS])
    grads = []
    for fwd_hooks in ([], HOOKED_PATH):
        net.zero_grad()
        out = net.run_with_hooks(planes, fwd_hooks=fwd_hooks)
        (out.policy_logits.square().mean() + out.value.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()
                      if p.grad is not None})
    fused, hooked = grads
    for name in ("blocks.1.attn.q.weight", "blocks.1.attn.smolgen.dense2.weight",
                 "smolgen_w.weight", "embed.linear.weight"):
        scale = hooked[name].abs().max()
        assert scale > 0, name
        assert (fused[name] - hooked[name]).abs().max() <= TOL * max(1.0, float(scale)), name


def test_a_scores_or_pattern_hook_switches_that_layer_to_the_hooked_path(net, planes,
                                                                         fused_calls):
    layers = _attention_layers(net)
    n = len(layers)
    seen = []
    for site in ("hook_scores", "hook_pattern"):
        fused_calls.clear()
        net.run_with_hooks(planes, fwd_hooks=[(f"{layers[1]}.{site}",
                                               lambda t, hook: seen.append((hook.name, t)))])
        assert len(fused_calls) == n - 1
        assert seen[-1][0] == f"{layers[1]}.{site}"
    pattern = seen[-1][1]  # a real pattern: rows of a softmax
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-6)

    # A plain PyTorch forward hook on the point switches too; removing it switches back.
    fused_calls.clear()
    handle = net.hook_dict[f"{layers[0]}.hook_scores"].register_forward_hook(
        lambda module, args, output: seen.append((module.name, output)))
    try:
        net(planes)
    finally:
        handle.remove()
    assert len(fused_calls) == n - 1 and seen[-1][0] == f"{layers[0]}.hook_scores"
    net(planes)
    assert len(fused_calls) == 2 * n - 1

    # So do a global module hook (it fires on every point) and run_with_cache.
    fused_calls.clear()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, args, out: None)
    try:
        net(planes)
    finally:
        handle.remove()
    _, cache = net.run_with_cache(planes, names="*hook_pattern")
    assert fused_calls == [] and len(cache) == n


def _by_hand(attn, x, smolgen_w):
    """Every attention activation from the layer's input, written out independently."""
    b, h = x.shape[0], attn.n_heads
    q, k, v = (lin(x).reshape(b, 64, h, -1).permute(0, 2, 1, 3)
               for lin in (attn.q, attn.k, attn.v))
    acts = {"q": q, "k": k, "v": v}
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if attn.smolgen is not None:
        acts["smolgen"] = attn.smolgen(x, smolgen_w)
        scores = scores + acts["smolgen"]
    acts["scores"] = scores
    acts["pattern"] = torch.softmax(scores, dim=-1)
    acts["z"] = torch.einsum("bhqk,bhkd->bhqd", acts["pattern"], v)
    return acts


@pytest.mark.parametrize("site", ["q", "k", "v", "smolgen", "scores", "pattern", "z"])
def test_every_attention_hook_sees_and_changes_the_real_tensor(net, planes, site, fused_calls):
    layer = _attention_layers(net)[1]
    attn = net.get_submodule(layer)
    name = f"{layer}.hook_{site}"
    if name not in net.hook_dict:
        pytest.skip(f"{name} exists only in smolgen nets")
    n = len(_attention_layers(net))
    fused_path = site not in ("scores", "pattern")
    # Sees: the hooked tensor equals the one computed by hand from the layer's input.
    resid = layer.replace(".attn", ".hook_resid_pre")
    _, cache = net.run_with_cache(planes, names=[name, resid])
    assert len(fused_calls) == (n if fused_path else n - 1)
    with torch.no_grad():
        expected = _by_hand(attn, cache[resid], net.smolgen_w)[site]
    assert cache[name].shape == expected.shape
    assert (cache[name] - expected).abs().max() <= TOL

    # Changes: halving head 2 (and shifting head 0, but not of a pattern) changes the output
    # exactly as it does on the hooked path, the definition.
    def edit(t, hook):
        t = t.clone()
        t[:, 2] *= 0.5
        t[:, 0] += 0.25 if site != "pattern" else 0.0
        return t

    clean = net(planes)
    fused_calls.clear()
    edited = net.run_with_hooks(planes, fwd_hooks=[(name, edit)])
    assert len(fused_calls) == (n if fused_path else n - 1)
    reference = net.run_with_hooks(planes, fwd_hooks=[(name, edit)] + HOOKED_PATH)
    _assert_close(edited, reference)
    assert (edited.policy_logits - clean.policy_logits).abs().max() > 100 * TOL

