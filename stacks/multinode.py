"""multinode: production across nodes: several frontends behind a LoadBalancer, workers spread
over nodes, NATS + etcd, and disruption budgets so a node drain never takes a whole tier."""

from __future__ import annotations

from stacks.compose import deploy
from stacks.config import StackConfig


def build(cfg: StackConfig) -> dict:
    return deploy(cfg, spread_across_nodes=True, disruption_budgets=True)
