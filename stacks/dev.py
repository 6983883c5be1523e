"""dev: the lab on one node with 2 GPUs: one Frontend, two 1-GPU vLLM workers, NodePort 30200."""

from __future__ import annotations

from stacks.compose import deploy
from stacks.config import StackConfig


def build(cfg: StackConfig) -> dict:
    # One node: spreading pods or budgeting disruptions would only block a drain of that node.
    return deploy(cfg, spread_across_nodes=False, disruption_budgets=False)
