"""Dynamo release numbers and what they imply for the graph API."""

from __future__ import annotations


def release(version: str) -> tuple[int, int, int]:
    """'1.6.1' -> (1, 6, 1)."""
    major, minor, patch = (int(part) for part in version.split("."))
    return major, minor, patch


def graph_api_version(version: str) -> str:
    """nvidia.com/v1beta1 is served from Dynamo 1.2 (storage version from 1.4); v1alpha1 before."""
    return "nvidia.com/v1beta1" if release(version) >= (1, 2, 0) else "nvidia.com/v1alpha1"
