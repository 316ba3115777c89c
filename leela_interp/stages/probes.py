"""``stage=probes``: look-ahead probes per layer, with random-twin and no-activation baselines.

Reads ``<out_dir>/puzzles.h5`` and ``<out_dir>/activations.h5`` (the ``activations`` stage's
``clean/blocks.{layer}.{site}`` datasets), writes ``<out_dir>/probes.h5`` with
:func:`leela_interp.experiments.probing.write_probes` and ``<out_dir>/figures/probes.png``
(:func:`~leela_interp.experiments.probing.plot`). With ``probes.random_twin.enabled`` it also
writes the random twin of ``model.path`` (``random_twin.pb.gz``) and caches its activations
(``random_twin_activations.h5``, same layout). Method, baselines and file layout:
``docs/probes.md``.

Memory: one layer of one network is in memory at a time. Resumable: every finished
(network, layer) is committed to ``probes.h5.partial.d/`` and skipped by a rerun with the same
config; ``probes.h5`` is assembled from them at the end. Skips entirely when ``probes.h5`` is
complete for the same config and inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from leela_interp.errors import ConfigError
from leela_interp.experiments.probing import (FIGURE, OUTPUT, ProbeSettings, cache_identity,
                                              peak_rss_mb, plot, write_probes)
from leela_interp.outputs.results import sha256_file
from leela_interp.stages.common import model_device, puzzles_net, run_dir, up_to_date

log = logging.getLogger(__name__)


def stage_config(cfg: DictConfig, activations: Path) -> dict:
    """What ``probes.h5`` records and hashes: the ``probes`` section (less the keys that do not
    change results: ``threads``, ``max_layer_gib``) and every input it reads: the activation
    cache's identity, the sha256 of ``puzzles.h5`` (the labels and splits) and of the network
    (its random twin).

    Raises:
        ConfigError: the activation cache is missing or incomplete, or was made from another
            ``puzzles.h5`` than the one in the folder now (rerun the activations stage).
    """
    probes = OmegaConf.to_container(cfg.probes, resolve=True)
    for key in ("threads", "max_layer_gib"):
        probes.pop(key, None)
    cache = cache_identity(activations)
    puzzles = activations.parent / "puzzles.h5"
    puzzles_sha = sha256_file(puzzles) if puzzles.exists() else ""
    if cache["puzzles_sha256"] != puzzles_sha:
        raise ConfigError(f"{activations} was made from another puzzles.h5 (sha256 "
                          f"{cache['puzzles_sha256'][:12]}..., the folder's is "
                          f"{puzzles_sha[:12] or 'missing'}...): rerun the activations stage "
                          f"first (leela-interp stage=activations out_dir={activations.parent})")
    return {"probes": probes, "activations": cache, "puzzles_sha256": puzzles_sha,
            "network_sha256": sha256_file(cfg.model.path)}


def run(cfg: DictConfig) -> Path:
    """Write ``<out_dir>/probes.h5`` and ``figures/probes.png`` (or skip when up to date);
    returns the path."""
    out = run_dir(cfg)
    config = stage_config(cfg, out / "activations.h5")
    path = out / OUTPUT
    if up_to_date(path, config, bool(cfg.force)):
        if not (out / FIGURE).exists():  # a run killed between the file and its figure
            plot(path, out / FIGURE)
        return path
    settings = ProbeSettings.from_section(OmegaConf.to_container(cfg.probes, resolve=True))
    write_probes(cfg.model.path, out, settings, config=config,
                 attrs=puzzles_net(out / "puzzles.h5", config["network_sha256"], cfg.model.path),
                 device=model_device(cfg), model_dtype=cfg.model.dtype,
                 batch_size=cfg.model.batch_size, resume=not cfg.force)
    plot(path, out / FIGURE)
    log.info("wrote %s and %s (peak RSS %.0f MiB)", path, out / FIGURE, peak_rss_mb())
    return path
