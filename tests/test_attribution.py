"""Attribution patching: each estimate equals -(corrupted - clean) . gradient computed by hand
from the patched activation onwards, it tracks exact patching on random nets, the agreement
measures against hand-made cases, and the patching stage's ``method`` key."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from test_interventions import CNN, TRANSFORMER, make_cfg, write_fixture

from leela_interp.experiments import attribution
from leela_interp.experiments import interventions as iv
from leela_interp.experiments import patching as pt
from leela_interp import load_network
from leela_interp.errors import ConfigError
from leela_interp.network.lc0.random_net import write_random_net


@pytest.fixture(scope="module", params=["transformer", "cnn"])
def setup(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    spec = TRANSFORMER if request.param == "transformer" else CNN
    net = load_network(write_random_net(tmp / "n.pb.gz", seed=3, **spec))
    puzzles = write_fixture(tmp / "puzzles.h5")
    prep = iv.prepare(net, chunk(puzzles), batch_size=4)
    heads = request.param == "transformer"
    sites = ["resid_post", "resid_mid"] if heads else ["resid_post"]
    return net, prep, attribution.attribution_patching(prep, sites=sites, heads=heads)


def chunk(puzzles):
    return [iv.Puzzle.from_set(puzzles, i) for i in range(len(puzzles))]


def _lo(prep, out, p):
    return iv.log_odds(out.policy_logits, prep.legal[[p]], prep.move[[p]]).sum()


def test_estimates_equal_the_first_order_term_by_hand(setup):
    net, prep, est = setup
    p = int(np.nonzero(prep.corrupted_ok)[0][0])
    clean = prep.cache("clean", "blocks.*.hook_resid_post")
    corr = prep.cache("corrupted", "blocks.*.hook_resid_post")
    for layer in range(net.config.n_layers - 1):
        name = f"blocks.{layer}.hook_resid_post"
        x = clean[name][[p]].clone().requires_grad_(True)  # rerun from it and backpropagate
        _lo(prep, net(start_at_layer=layer + 1, resid=x), p).backward()
        by_hand = -((corr[name][p] - clean[name][p]) * x.grad[0]).sum(-1)
        np.testing.assert_allclose(est.residual["resid_post"][p, layer], by_hand.numpy(),
                                   atol=2e-4, rtol=1e-3)
    if est.heads is not None:
        layer, name = 1, "blocks.1.attn.hook_z"
        z_clean = prep.cache("clean", name)[name][[p]].clone().requires_grad_(True)
        z_corr = prep.cache("corrupted", name)[name][p]
        out = net.run_with_hooks(prep.planes("clean")[[p]],
                                 fwd_hooks=[(name, lambda t, hook: z_clean)])
        _lo(prep, out, p).backward()
        by_hand = -((z_corr - z_clean[0].detach()) * z_clean.grad[0]).sum((1, 2))
        np.testing.assert_allclose(est.heads[p, layer], by_hand.numpy(), atol=2e-4, rtol=1e-3)


def test_estimates_track_exact_patching(setup):
    net, prep, est = setup
    exact = pt.residual_patching(prep)
    ok = prep.corrupted_ok
    assert np.isnan(est.residual["resid_post"][~ok]).all()
    same = exact[ok] == 0  # here: last-layer squares no legal move reads; zero gradient too
    assert (est.residual["resid_post"][ok][same] == 0).all()
    result = attribution.agreement(exact, est.residual["resid_post"], k=5)
    assert result["n_puzzles"] == ok.sum()
    assert np.nanmin(result["pearson"]) > 0.8, result  # 0.85-0.999 here
    assert result["top_k_overlap"].mean() >= 0.7, result  # 0.87-0.93 here
    if est.heads is not None:
        heads = attribution.agreement(pt.head_patching(prep), est.heads, k=3)
        assert np.nanmean(heads["spearman"]) > 0.9, heads  # 0.999 here


def test_agreement_against_hand_made_cases():
    exact = np.zeros((2, 2, 4))
    exact[0, 0] = [1, 2, 3, 4]
    exact[0, 1] = [0, 0, 5, -6]
    exact[1, 0] = [2, 1, 0, 0]
    exact[1, 1] = [0, 0, 0, 0]
    estimate = exact.copy()
    estimate[:, 1] *= -1  # layer 1 anti-correlated
    r = attribution.agreement(exact, estimate, k=2)
    np.testing.assert_allclose(r["pearson"], [1, -1])
    np.testing.assert_allclose(r["spearman"], [1, -1])
    np.testing.assert_allclose(r["top_k_overlap"], [1, 1])  # |effect| ranks the same
    estimate[0, 1] = [9, 8, 0, 0]  # puzzle 0's top 2 by |effect| become squares 4 and 5
    estimate[1] = np.nan
    r = attribution.agreement(exact, estimate, k=2)
    assert r["n_puzzles"] == 1
    np.testing.assert_allclose(r["top_k_overlap"], [0.0])
    with pytest.raises(ValueError, match="one shape"):
        attribution.agreement(exact, estimate[:, :1])


def test_the_stage_writes_attribution_estimates_in_the_same_layout(tmp_path):
    from leela_interp.stages import patching

    net_path = write_random_net(tmp_path / "t.pb.gz", seed=3, **TRANSFORMER)
    puzzles = write_fixture(tmp_path / "run" / "puzzles.h5")
    args = ("patching.require_pv0_top=false", "patching.figures=false",
            "patching.method=attribution")
    path = patching.run(make_cfg(tmp_path / "run", net_path, *args))
    net = load_network(net_path)
    prep = iv.prepare(net, chunk(puzzles), batch_size=8)
    est = attribution.attribution_patching(prep)
    with h5py.File(path) as f:
        assert f.attrs["method"] == "attribution" and "first order" in f.attrs["method_meaning"]
        np.testing.assert_allclose(f["residual/resid_post/effect"][()],
                                   est.residual["resid_post"], atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(f["heads/effect"][()], est.heads, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="patching.method='fast'.*exact"):
        patching.run(make_cfg(tmp_path / "run2", net_path, "patching.method=fast"))


def test_bad_arguments_raise_clear_errors(setup):
    net, prep, _ = setup
    with pytest.raises(ConfigError, match="resid_foo"):
        attribution.attribution_patching(prep, sites=["resid_foo"], heads=False)
    if net.config.body == "cnn":
        with pytest.raises(ConfigError, match="no attention heads"):
            attribution.attribution_patching(prep, heads=True)
        with pytest.raises(ConfigError, match="resid_mid"):
            attribution.attribution_patching(prep, sites=["resid_mid"], heads=False)
