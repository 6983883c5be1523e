"""Topologies: which components a stack deploys, and how they are wired together."""

from __future__ import annotations

from typing import Callable

from stacks import dev, multinode
from stacks.config import StackConfig

TOPOLOGIES: dict[str, Callable[[StackConfig], dict]] = {"dev": dev.build, "multinode": multinode.build}


def build(cfg: StackConfig) -> dict:
    """Deploy the stack's topology; returns the stack outputs."""
    return TOPOLOGIES[cfg.topology](cfg)
