"""Hook points and interventions on the native modules (no lc0 engine needed): names and
shapes, patching with a hook's own value is exact, every hook point of every body and head kind
is live (noise there changes exactly the outputs downstream of it), hooks never leak."""

from __future__ import annotations

import chess
import pytest
import torch

from positions import lc0_positions

from leela_interp import UnknownHookError, load_network
from leela_interp.network.lc0.random_net import write_random_net

TRANSFORMER = dict(body="transformer", policy="attention", d_model=32, layers=3, heads=4,
                   d_ff=48, embedding="PE_DENSE", smolgen=True, default_activation="mish")
CNN = dict(body="cnn", channels=16, blocks=3)


@pytest.fixture(scope="module", params=["transformer", "cnn"])
def net(request, tmp_path_factory):
    spec = TRANSFORMER if request.param == "transformer" else CNN
    path = write_random_net(tmp_path_factory.mktemp("nets") / "n.pb.gz", seed=2, **spec)
    return load_network(path)


@pytest.fixture(scope="module")
def planes(net):
    boards = []
    for fen in ["r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
                "8/5pk1/6p1/8/3Q4/8/5PPP/6K1 b - - 0 40",
                "4k3/P7/8/8/8/8/8/4K3 w - - 0 1"]:
        boards.append(chess.Board(fen))
    return net.encode(boards)


def _outputs(out):
    return [t for t in (out.policy_logits, out.value, out.wdl, out.mlh) if t is not None]


def test_hook_names_are_module_paths_with_shapes(net):
    names = net.hook_names()
    L = net.config.n_layers
    d = net.config.d_model
    for layer in range(L):
        for site in ("hook_resid_pre", "hook_resid_post"):
            assert names[f"blocks.{layer}.{site}"] == (64, d)
    if net.config.body == "transformer":
        h = net.config.n_heads
        assert names["embed.hook_out"] == (64, d)
        assert names["blocks.0.attn.hook_pattern"] == (h, 64, 64)
        assert names["blocks.0.attn.hook_scores"] == (h, 64, 64)
        assert names["blocks.0.attn.hook_smolgen"] == (h, 64, 64)
        assert names["blocks.0.attn.hook_z"] == (h, 64, d // h)
        assert names["blocks.0.attn.hook_q"] == (h, 64, d // h)
        assert names["blocks.0.hook_resid_mid"] == (64, d)
        assert names["blocks.0.mlp.hook_post"] == (64, 48)
    else:
        assert names["blocks.0.hook_conv1"] == (64, d)
        assert names["blocks.0.se.hook_gate"] == (d,)
    assert names["policy_head.hook_logits"] == (1858,)
    assert list(names) == [n for n in net.hook_dict if n in names]  # forward order


def test_patching_every_hook_with_its_own_value_is_bit_identical(net, planes):
    _, cache = net.run_with_cache(planes)
    assert set(cache) == set(net.hook_names())
    for name in cache:
        # Cached and patched with one hooked point, so both runs take the same attention path.
        observed, own = net.run_with_cache(planes, names=name)
        out = net.run_with_hooks(planes, fwd_hooks=[(name, lambda t, hook: own[hook.name])])
        for a, b in zip(_outputs(observed), _outputs(out)):
            assert torch.equal(a, b), name


def test_no_hooked_tensor_is_overwritten_later_in_the_forward(net, planes):
    # The modules work in place on fresh tensors; a tensor a hook has seen must stay as it was,
    # whether its point is hooked alone or with every other point.
    seen = {}

    def keep(t, hook):
        seen[hook.name] = (t, t.clone())

    for names in [None, *net.hook_dict]:
        seen.clear()
        with net.hooks([(names, keep)]):
            net(planes)
        assert seen
        for name, (t, copy) in seen.items():
            assert torch.equal(t, copy), (names, name)


def test_start_at_layer_reproduces_the_full_forward(net, planes):
    clean, cache = net.run_with_cache(planes, names="blocks.*.hook_resid_pre")
    for layer in range(net.config.n_layers):
        resid = cache[f"blocks.{layer}.hook_resid_pre"]
        out = net(start_at_layer=layer, resid=resid)
        for a, b in zip(_outputs(clean), _outputs(out)):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
        assert torch.equal(net(planes, stop_at_layer=layer), resid)
    # float64 residuals are cast to the net's dtype; the moves-left head is there when the net has it
    out = net(start_at_layer=0, resid=cache["blocks.0.hook_resid_pre"].double())
    assert torch.allclose(out.policy_logits, clean.policy_logits, atol=1e-5, rtol=0)
    assert (out.mlh is not None) == net.config.moves_left
    with pytest.raises(ValueError, match="give planes, or start_at_layer and resid"):
        net()


def test_summary_names_the_format_and_the_architecture(net):
    c = net.config
    summary = net.summary()
    assert {k: summary[k] for k in ("body", "layers", "width", "heads", "policy", "value",
                                     "moves_left", "policy_head", "value_head")} == \
        dict(body=c.body, layers=c.n_layers, width=c.d_model, heads=c.n_heads, policy=c.policy,
             value=c.value, moves_left=c.moves_left, policy_head=c.policy_head,
             value_head=c.value_head)
    assert summary["parameters"] == sum(p.numel() for p in net.parameters())


def test_zeroing_a_head_pattern_equals_removing_its_contribution(net, planes):
    if net.config.body != "transformer":
        pytest.skip("attention heads exist only in transformers")
    layer, head = 1, 2
    _, cache = net.run_with_cache(planes, names=[f"blocks.{layer}.attn.hook_z",
                                                 f"blocks.{layer}.hook_attn_out",
                                                 f"blocks.{layer}.hook_resid_pre"])

    def zero_pattern(pattern, hook):
        pattern = pattern.clone()
        pattern[:, head] = 0
        return pattern

    ablated = net.run_with_hooks(planes, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern",
                                                     zero_pattern)])
    # By hand: the head's contribution is z_h @ W_O[:, h-slice]^T; remove it from attn_out.
    attn = net.blocks[layer].attn
    d_head = attn.d_head
    z = cache[f"blocks.{layer}.attn.hook_z"][:, head]  # [B, 64, d_head]
    w_o = attn.out.weight[:, head * d_head:(head + 1) * d_head]  # [d_model, d_head]
    attn_out = cache[f"blocks.{layer}.hook_attn_out"] - z @ w_o.T
    by_hand = net.run_with_hooks(planes, fwd_hooks=[(f"blocks.{layer}.hook_attn_out",
                                                     lambda t, hook: attn_out)])
    for a, b in zip(_outputs(ablated), _outputs(by_hand)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(ablated.policy_logits, net(planes).policy_logits)


def test_hooks_are_removed_after_use_even_on_error(net, planes):
    def boom(t, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        net.run_with_hooks(planes, fwd_hooks=[("blocks.0.hook_resid_post", boom)])
    assert all(not h._forward_hooks for h in net.hook_dict.values())
    with net.hooks([("blocks.*.hook_resid_post", lambda t, hook: t * 0)]):
        zeroed = net(planes).policy_logits
        assert torch.equal(zeroed, net(planes).policy_logits)  # active for every call inside
    assert not torch.equal(zeroed, net(planes).policy_logits)
    assert all(not h._forward_hooks for h in net.hook_dict.values())


def test_names_filters(net, planes):
    _, cache = net.run_with_cache(planes, names="blocks.*.hook_resid_post", device="cpu")
    assert sorted(cache) == sorted(f"blocks.{i}.hook_resid_post"
                                   for i in range(net.config.n_layers))
    _, cache = net.run_with_cache(planes, names=lambda n: n.endswith("hook_logits"))
    assert "policy_head.hook_logits" in cache
    with pytest.raises(UnknownHookError, match="blocks.99"):
        net.run_with_cache(planes, names="blocks.99.hook_resid_post")
    assert all(not t.requires_grad for t in cache.values())


def test_move_probabilities_are_a_legal_softmax(net):
    board = chess.Board()
    board.push_san("e4")
    (probs,) = net.move_probabilities([board])
    assert set(probs) == {m.uci() for m in board.legal_moves}
    assert abs(sum(probs.values()) - 1) < 1e-5


def test_hook_names_follow_forward_order(net):
    order = []
    with net.hooks([(None, lambda t, hook: order.append(hook.name))]):
        net(torch.zeros(1, 112, 8, 8))
    assert order == list(net.hook_names())


# --------------------------------------------------------------------------- every hook is live

_T = dict(body="transformer", policy="attention")
#: Every body and head kind: hook points differ between them.
BODY_KINDS = {
    "transformer-pe-dense-smolgen-gating-emb-ffn": dict(TRANSFORMER, moves_left=True),
    "transformer-pe-map-policy-encoder-classical-value": dict(
        _T, embedding="PE_MAP", smolgen=False, gating=False, policy_encoders=1,
        value="classical", moves_left=False),
    "transformer-multihead": dict(_T, multihead=True,
                                  network="ATTENTIONBODY_WITH_MULTIHEADFORMAT"),
    "cnn-se-conv-policy-wdl-mlh": dict(CNN),
    "cnn-classical-policy-no-se-classical-value": dict(policy="classical", se_channels=0,
                                                       value="classical", moves_left=False),
    "cnn-attention-policy-encoder": dict(policy="attention", policy_encoders=1,
                                         policy_embed=24),
}
HEADS = {"policy_head": ("policy",), "value_head": ("value", "wdl"), "mlh_head": ("mlh",)}


def _named_outputs(out) -> dict[str, torch.Tensor]:
    names = ("policy", "value", "wdl", "mlh")
    tensors = (out.policy_logits, out.value, out.wdl, out.mlh)
    return {n: t for n, t in zip(names, tensors) if t is not None}


@pytest.mark.parametrize("kind", BODY_KINDS)
def test_every_hook_point_is_live(kind, tmp_path):
    """Adding noise at any hook point changes exactly the outputs downstream of it: every
    output for a body hook, only that head's for a head hook. A hook whose output the forward
    pass ignored (a dead end) or that sits in the wrong place fails here.

    The nets' outputs must not sit at a clamp (the moves-left output is ReLU'd: noise on a
    negative pre-ReLU logit that stays negative would be invisible), so that is checked first.
    """
    net = load_network(write_random_net(tmp_path / "n.pb.gz", seed=0, **BODY_KINDS[kind]))
    planes = net.encode(lc0_positions(32, seed=1))
    with torch.no_grad():
        clean = _named_outputs(net(planes))
        if "mlh" in clean:
            assert (clean["mlh"] > 0).sum() >= 2, "moves-left output clamped at 0"
        for name in net.hook_names():
            gen = torch.Generator().manual_seed(0)

            def noise(t, hook):
                scale = float(t.float().std()) or 1.0
                return t + 0.5 * scale * torch.randn(t.shape, generator=gen)

            out = _named_outputs(net.run_with_hooks(planes, fwd_hooks=[(name, noise)]))
            changed = {k for k in clean if (clean[k] - out[k]).abs().max() > 1e-4}
            head = name.split(".")[0]
            expected = {k for k in HEADS.get(head, clean) if k in clean}
            assert changed == expected, (name, changed, expected)
