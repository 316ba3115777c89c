"""The experiment toolkit against hand computations: ActivationCache's names, stacks,
accumulated residual stream, per-head results, logit lens, device and batch moves; the hook
points hook_result and mlp.hook_pre; hook return-value checks; gradients and backward hooks."""

from __future__ import annotations

import chess
import pytest
import torch

from positions import lc0_positions

from leela_interp import HookError, UnknownHookError, load_network
from leela_interp.network.lc0.random_net import write_random_net
from leela_interp.network.cache import ActivationCache, act_name, gradient_cache

TRANSFORMER = dict(body="transformer", policy="attention", d_model=32, layers=3, heads=4,
                   d_ff=48, embedding="PE_DENSE", smolgen=True, default_activation="mish")
CNN = dict(body="cnn", channels=16, blocks=3)


@pytest.fixture(scope="module")
def tnet(tmp_path_factory):
    return load_network(write_random_net(tmp_path_factory.mktemp("nets") / "t.pb.gz", seed=3,
                                         **TRANSFORMER))


@pytest.fixture(scope="module", params=["transformer", "cnn"])
def net(request, tnet, tmp_path_factory):
    if request.param == "transformer":
        return tnet
    return load_network(write_random_net(tmp_path_factory.mktemp("nets") / "c.pb.gz", seed=3,
                                         **CNN))


@pytest.fixture(scope="module")
def planes(tnet):
    return tnet.encode(lc0_positions(5, seed=4))


def test_act_name_builds_hook_names_and_rejects_unknown_kinds():
    assert act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    assert act_name("attn_scores", 2) == "blocks.2.attn.hook_scores"
    assert act_name("mlp_pre", 1) == act_name("pre", 1) == "blocks.1.mlp.hook_pre"
    assert act_name("gate", 4) == "blocks.4.se.hook_gate"
    assert act_name("embed") == "embed.hook_out"
    assert act_name("blocks.2.hook_mlp_out") == "blocks.2.hook_mlp_out"
    with pytest.raises(UnknownHookError, match="'resid'"):
        act_name("resid", 1)
    with pytest.raises(UnknownHookError, match="needs a layer"):
        act_name("z")
    with pytest.raises(UnknownHookError, match="has no layer"):
        act_name("embed", 2)


def test_cache_is_a_mapping_with_short_keys(net, planes):
    _, cache = net.run_with_cache(planes)
    assert isinstance(cache, ActivationCache)
    plain = dict(cache)
    assert list(plain) == list(cache) and len(cache) == len(net.hook_names())
    assert cache["resid_post", 1] is plain["blocks.1.hook_resid_post"]
    assert ("resid_post", 1) in cache and ("resid_post", 99) not in cache
    with pytest.raises(UnknownHookError, match="blocks.99.hook_resid_post.*run_with_cache"):
        cache["resid_post", 99]


def test_stack_by_glob_and_by_list(net, planes):
    _, cache = net.run_with_cache(planes)
    stacked, labels = cache.stack("blocks.*.hook_resid_post")
    assert labels == [f"blocks.{l}.hook_resid_post" for l in range(net.config.n_layers)]
    assert torch.equal(stacked, torch.stack([cache[n] for n in labels]))
    stacked, labels = cache.stack([("resid_pre", 2), "blocks.0.hook_resid_post"])
    assert labels == ["blocks.2.hook_resid_pre", "blocks.0.hook_resid_post"]
    assert torch.equal(stacked[0], cache["blocks.2.hook_resid_pre"])
    with pytest.raises(UnknownHookError, match="matches nothing"):
        cache.stack("blocks.*.hook_nothing")


def test_accumulated_resid_is_the_stream_entering_each_block(net, planes):
    L = net.config.n_layers
    _, cache = net.run_with_cache(planes)
    acc, labels = cache.accumulated_resid()
    assert labels == [f"{l}_pre" for l in range(L)] + ["final_post"]
    for l in range(L):  # (the full cache takes the hooked attention path: equal to rounding)
        assert torch.allclose(acc[l], net(planes, stop_at_layer=l), atol=1e-5, rtol=0)
    assert torch.equal(acc[L], cache[f"blocks.{L - 1}.hook_resid_post"])
    acc1, labels1 = cache.accumulated_resid(1)
    assert labels1 == ["0_pre", "1_pre"] and torch.equal(acc1, acc[:2])
    # The same from a cache of resid_post only (post-LN: resid_post[l] == resid_pre[l+1]).
    _, post = net.run_with_cache(planes, names=["embed.hook_out", "blocks.*.hook_resid_post"])
    _, pre = net.run_with_cache(planes, names=["blocks.*.hook_resid_pre",
                                               "blocks.*.hook_resid_post"])  # the same path
    assert torch.equal(post.accumulated_resid()[0], pre.accumulated_resid()[0])
    if net.config.body == "transformer":
        mid, labels = cache.accumulated_resid(2, incl_mid=True)
        assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre"]
        assert torch.equal(mid[3], cache["blocks.1.hook_resid_mid"])


def test_hook_result_is_each_heads_output_in_residual_space(tnet, planes):
    net = tnet
    _, plain = net.run_with_cache(planes, names=["blocks.*.attn.hook_z",
                                                 "blocks.*.hook_attn_out"])
    out, cache = net.run_with_cache(planes, names="blocks.*.attn.hook_result")
    H, dh = net.config.n_heads, net.config.d_model // net.config.n_heads
    assert cache["result", 0].shape == (len(planes), H, 64, net.config.d_model)
    for l in range(net.config.n_layers):
        attn = net.blocks[l].attn
        z = plain[f"blocks.{l}.attn.hook_z"]
        for h in range(H):  # by hand: z_h @ W_O[:, h-slice]^T
            by_hand = z[:, h] @ attn.out.weight[:, h * dh:(h + 1) * dh].T
            assert torch.allclose(cache["result", l][:, h], by_hand, atol=1e-5, rtol=0)
        total = cache["result", l].sum(1) + attn.out.bias
        assert torch.allclose(total, plain[f"blocks.{l}.hook_attn_out"], atol=1e-5, rtol=0)
    assert torch.allclose(out.policy_logits, net(planes).policy_logits, atol=1e-5, rtol=0)
    stacked, labels = cache.stack_head_results()
    assert labels[:H + 1] == [f"L0H{h}" for h in range(H)] + ["L1H0"]
    assert stacked.shape == (net.config.n_layers * H, len(planes), 64, net.config.d_model)
    assert torch.equal(stacked[H + 2], cache["result", 1][:, 2])


def test_mlp_hook_pre_is_the_first_dense_layer_before_the_activation(tnet, planes):
    names = ["blocks.1.hook_resid_mid", "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post"]
    _, cache = tnet.run_with_cache(planes, names=names)
    mlp = tnet.blocks[1].mlp
    pre = cache["pre", 1]
    assert torch.allclose(pre, mlp.dense1(cache["resid_mid", 1]), atol=1e-6, rtol=0)
    assert torch.allclose(cache["post", 1], mlp.act(pre), atol=1e-6, rtol=0)
    assert not torch.equal(pre, cache["post", 1])


def test_logit_lens_runs_the_heads_on_a_layers_stream(net, planes):
    L = net.config.n_layers
    out, cache = net.run_with_cache(planes)
    assert torch.allclose(cache.logit_lens(L - 1).policy_logits, out.policy_logits, atol=1e-5)
    resid = cache["resid_post", 0]
    if net.config.body == "transformer":  # by hand: the policy head on the tokens
        by_hand = net.policy_head(resid, net.smolgen_w)
    else:
        by_hand = net.policy_head(resid.transpose(1, 2).reshape(len(planes), -1, 8, 8))
    assert torch.allclose(cache.logit_lens(0).policy_logits, by_hand, atol=1e-6, rtol=0)
    assert not torch.allclose(by_hand, out.policy_logits, atol=1e-3)


def test_batch_and_to(net, planes):
    _, cache = net.run_with_cache(planes)
    _, sub = net.run_with_cache(planes[[1, 3]])
    picked = cache.batch([1, 3])
    assert list(picked) == list(cache)
    for name in sub:  # boards do not interact: the slice is the run on those boards
        assert torch.allclose(picked[name], sub[name], atol=1e-5, rtol=0), name
    assert cache.batch(2)["resid_post", 0].shape[0] == 1
    assert torch.equal(cache.batch(slice(1, 3))["resid_post", 0], cache["resid_post", 0][1:3])
    moved = cache.to("cpu")
    assert moved.model is net and torch.equal(moved["resid_post", 0], cache["resid_post", 0])


# --------------------------------------------------------------------------- return checks


@pytest.mark.parametrize("bad, what", [
    (lambda t: t[:1], r"shape \[1, 64, 32\].*expected None or a tensor of shape \[5, 64, 32\]"),
    (lambda t: t.double(), "dtype torch.float64.*dtype torch.float32"),
    (lambda t: t.tolist(), "returned list"),
])
def test_a_wrong_hook_return_names_the_hook_and_the_expected_shape(tnet, planes, bad, what):
    with pytest.raises(HookError, match="forward hook on blocks.1.hook_resid_mid") as e:
        tnet.run_with_hooks(planes, fwd_hooks=[("blocks.1.hook_resid_mid",
                                                lambda t, hook: bad(t))])
    assert e.match(what)


# --------------------------------------------------------------------------- gradients


def _metric(out):
    return out.policy_logits[:, 7].sum() + out.value.sum()


def test_gradient_cache_equals_autograd_from_that_activation(net, planes):
    assert not any(p.requires_grad for p in net.parameters())  # frozen, as documented
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    out, acts, grads = gradient_cache(net, _metric, planes, names=names)
    assert list(grads) == names and not out.policy_logits.requires_grad
    for l, name in enumerate(names):
        x = acts[name].clone().requires_grad_(True)  # by hand: rerun from it, backpropagate
        _metric(net(start_at_layer=l + 1, resid=x)).backward()
        assert torch.allclose(grads[name], x.grad, atol=1e-5, rtol=1e-4), name
        assert grads[name].abs().sum() > 0


def test_backward_hooks_see_and_replace_gradients(net, planes):
    seen = {}

    def keep(g, hook):
        seen[hook.name] = g

    def zero(g, hook):
        return torch.zeros_like(g)

    out = net.run_with_hooks(planes, bwd_hooks=[("blocks.*.hook_resid_post", keep)])
    _metric(out).backward()  # after run_with_hooks returned: tensor hooks live on the graph
    L = net.config.n_layers
    assert sorted(seen) == sorted(f"blocks.{l}.hook_resid_post" for l in range(L))
    assert seen["blocks.0.hook_resid_post"].abs().sum() > 0
    seen.clear()
    out = net.run_with_hooks(planes, bwd_hooks=[("blocks.0.hook_resid_post", keep),
                                                (f"blocks.{L - 1}.hook_resid_post", zero)])
    _metric(out).backward()
    assert seen["blocks.0.hook_resid_post"].abs().sum() == 0  # only path through the zero
    with pytest.raises(HookError, match="backward hook on blocks.0.hook_resid_post.*"
                                        "expected None or a tensor of shape"):
        out = net.run_with_hooks(planes, bwd_hooks=[("blocks.0.hook_resid_post",
                                                     lambda g, hook: g[:1])])
        _metric(out).backward()
    with torch.no_grad(), pytest.raises(HookError, match="needs autograd"):
        net.run_with_hooks(planes, bwd_hooks=[("blocks.0.hook_resid_post", keep)])


def test_gradient_cache_needs_a_scalar_metric(tnet, planes):
    with pytest.raises(HookError, match="scalar"):
        gradient_cache(tnet, lambda out: out.policy_logits[:, 0], planes,
                       names="blocks.0.hook_resid_post")


def test_the_issues_retain_grad_example_now_has_a_way(tnet):
    board = chess.Board()
    planes = tnet.encode([board])
    _, acts, grads = gradient_cache(tnet, lambda out: out.value.sum(), planes,
                                    names="blocks.*.attn.hook_pattern")
    assert grads["pattern", 2].shape == acts["pattern", 2].shape == (1, 4, 64, 64)
    assert grads["pattern", 2].abs().sum() > 0
