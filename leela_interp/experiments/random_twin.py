"""The random twin of a network: the same architecture and file format with seeded random
weights (the probes' control: what a probe reads off a network that learned nothing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from leela_interp.errors import ConfigError


def layer_sizes(net) -> dict[str, int]:
    """``{field path: number of values}`` of every non-empty ``Weights.Layer`` in a ``Net``."""
    from leela_interp.network.lc0.weights import decode_layer

    sizes: dict[str, int] = {}

    def walk(msg, prefix: str) -> None:
        for field, value in msg.ListFields():
            if field.message_type is None:
                continue
            path = f"{prefix}.{field.name}" if prefix else field.name
            items = list(value) if field.is_repeated else [value]
            for j, item in enumerate(items):
                p = f"{path}[{j}]" if field.is_repeated else path
                if field.message_type.name == "Layer":
                    size = decode_layer(item).size
                    if size:
                        sizes[p] = size
                else:
                    walk(item, p)

    walk(net.weights, "")
    return sizes


def twin_spec(net):
    """The :class:`~leela_interp.network.lc0.random_net.RandomNetSpec` of a ``Net``'s architecture.

    Check the result with :func:`write_random_twin`, which compares every layer's size.
    """
    from leela_interp.network.lc0.random_net import RandomNetSpec
    from leela_interp.network.lc0.weights import NETWORKS, decode_layer, net_format

    fmt = net_format(net)
    w = net.weights

    def n(layer) -> int:
        return decode_layer(layer).size

    common = dict(input_format=fmt.input_format,
                  policy={1: "classical", 2: "convolution", 3: "attention"}[fmt.policy],
                  value="wdl" if fmt.value == 2 else "classical", moves_left=fmt.moves_left == 1,
                  default_activation="mish" if fmt.default_activation == 1 else "relu")
    if not fmt.attention_body:
        c = n(w.input.bn_means) or n(w.input.biases)
        value_conv = w.value.bn_means if w.value.bn_means.params else w.value.biases
        spec = RandomNetSpec(
            body="cnn", channels=c, blocks=len(w.residual),
            se_channels=n(w.residual[0].se.b1) if len(w.residual) and
            w.residual[0].HasField("se") else 0,
            batch_norm=bool(w.input.bn_means.params), value_channels=n(value_conv),
            value_hidden=n(w.ip1_val_b), **common)
        if spec.moves_left:
            mov = w.moves_left.bn_means if w.moves_left.bn_means.params else w.moves_left.biases
            spec = dataclasses.replace(spec, mlh_channels=n(mov), mlh_hidden=n(w.ip1_mov_b))
        if spec.policy == "attention":
            spec = dataclasses.replace(spec, policy_embed=n(w.ip_pol_b), policy_d=n(w.ip2_pol_b),
                                       policy_encoders=len(w.pol_encoder),
                                       policy_heads_count=w.pol_headcount or 2)
        return spec
    from leela_interp.network.lc0.weights import ACTIVATIONS, EMBEDDINGS

    d = n(w.ip_emb_b)
    heads = int(w.headcount)
    enc = w.encoder[0]
    multi = fmt.network == NETWORKS["NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT"]
    act_name = {v: k.removeprefix("ACTIVATION_") for k, v in ACTIVATIONS.items()}
    dense = fmt.input_embedding == EMBEDDINGS["INPUT_EMBEDDING_PE_DENSE"]
    pol = w.policy_heads.vanilla if multi else w
    val = w.value_heads.winner if multi else w
    smolgen = enc.mha.HasField("smolgen")
    spec = RandomNetSpec(
        body="transformer", d_model=d, layers=len(w.encoder), heads=heads,
        d_ff=n(enc.ffn.dense1_b), embedding="PE_DENSE" if dense else "PE_MAP",
        dense_pos=n(w.ip_emb_preproc_b) // 64 if dense else 4,
        emb_ffn=n(w.ip_emb_ffn.dense1_b) if dense else 0,
        gating=w.HasField("ip_mult_gate"), smolgen=smolgen,
        smolgen_compress=n(enc.mha.smolgen.compress) // d if smolgen else 4,
        smolgen_hidden=n(enc.mha.smolgen.dense1_b) if smolgen else 32,
        smolgen_gen=n(enc.mha.smolgen.dense2_b) // heads if smolgen else 16,
        smolgen_activation=act_name.get(fmt.smolgen_activation, "DEFAULT"),
        ffn_activation=act_name.get(fmt.ffn_activation, "DEFAULT"),
        network="ATTENTIONBODY_WITH_MULTIHEADFORMAT" if multi else
        "ATTENTIONBODY_WITH_HEADFORMAT", multihead=multi,
        policy_embed=n(w.policy_heads.ip_pol_b if multi else w.ip_pol_b),
        policy_d=n(pol.ip2_pol_b), policy_encoders=len(pol.pol_encoder),
        policy_heads_count=pol.pol_headcount or 2,
        value_channels=n(val.ip_val_b), value_hidden=n(val.ip1_val_b), **common)
    if spec.moves_left:
        spec = dataclasses.replace(spec, mlh_channels=n(w.ip_mov_b), mlh_hidden=n(w.ip1_mov_b))
    return spec


def _match_conv_affines(real, twin, encoding: str) -> None:
    """Where a real conv stores a plain bias but the twin batch-norm statistics, fold them.

    ``RandomNetSpec.batch_norm`` applies to every conv, while real nets (Maia, dkappe's) use
    batch norm everywhere except the last policy conv, which has a bias. Folding the twin's
    statistics into its weights and bias (as lc0 does on load) keeps the twin's function and
    gives it the real net's fields.
    """
    from leela_interp.network.lc0.weights import decode_layer, encode_layer

    for field, value in real.ListFields():
        if field.message_type is None:
            continue
        pairs = zip(value, getattr(twin, field.name)) if field.is_repeated else \
            [(value, getattr(twin, field.name))]
        for r, t in pairs:
            if field.message_type.name != "ConvBlock":
                if field.message_type.name != "Layer":
                    _match_conv_affines(r, t, encoding)
                continue
            if r.biases.params and not r.bn_means.params and t.bn_means.params:
                w, means, var, gammas, betas = (decode_layer(getattr(t, k)) for k in (
                    "weights", "bn_means", "bn_stddivs", "bn_gammas", "bn_betas"))
                g = gammas / np.sqrt(var + np.float32(1e-5))
                t.weights.CopyFrom(encode_layer(
                    (w.reshape(len(g), -1) * g[:, None]).ravel(), encoding))
                t.biases.CopyFrom(encode_layer(betas - g * means, encoding))
                for k in ("bn_means", "bn_stddivs", "bn_gammas", "bn_betas"):
                    t.ClearField(k)


def write_random_twin(real_path: str | Path, out_path: str | Path, seed: int = 0) -> Path:
    """Write a seeded random-initialised network with the architecture of ``real_path``.

    The twin is :func:`leela_interp.network.lc0.random_net.random_net` of :func:`twin_spec`; every
    weight layer's size is compared with the real net's.

    Raises:
        ConfigError: ``RandomNetSpec`` cannot express the real net's shapes (lists the layers
            that differ).
    """
    from leela_interp.network.lc0.random_net import random_net
    from leela_interp.network.lc0.weights import read_net, write_net

    real = read_net(real_path)
    spec = twin_spec(real)
    twin = random_net(spec, seed)
    _match_conv_affines(real.weights, twin.weights, spec.encoding)
    want, got = layer_sizes(real), layer_sizes(twin)
    diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if diff:
        shown = ", ".join(f"{k}: real {want.get(k)} vs twin {got.get(k)}" for k in diff[:8])
        raise ConfigError(f"RandomNetSpec cannot express the shape of {real_path}: {len(diff)} "
                          f"layers differ ({shown}); spec was {spec!r}")
    return write_net(twin, out_path)
