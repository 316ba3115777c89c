"""``stage=info``: print a network's summary (format fields, architecture, parameters, sha256)."""

from __future__ import annotations

from omegaconf import DictConfig

from leela_interp.network import load_network


def run(cfg: DictConfig) -> dict[str, object]:
    """Load ``cfg.model.path`` and print its summary, one ``key: value`` line each."""
    net = load_network(cfg.model.path, policy_head=cfg.model.policy_head,
                       value_head=cfg.model.value_head, device="cpu")
    summary = net.summary()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    return summary
