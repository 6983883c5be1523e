"""Policy configuration: defaults in code, overridden by the policy-pack config file.

pulumi-policy hands each policy only the properties written in the config file
(`args.get_config()`), without the schema's defaults, so every policy reads its settings
through `settings(args, DEFAULTS[...])`. The same dictionaries feed the config schemas, so
what a reviewer reads in `pulumi policy` output is what the code uses.
"""

from __future__ import annotations

from typing import Any

from pulumi_policy import PolicyConfigSchema

# Registries and repositories images may come from. Dynamo's own images, and the images
# the NATS chart (nats-io/k8s 2.x: nats, natsio/*) and the etcd chart (bitnami) pull.
DEFAULT_ALLOWED_IMAGE_PREFIXES = [
    "nvcr.io/nvidia/ai-dynamo/",
    "docker.io/library/nats",
    "docker.io/natsio/",
    "docker.io/bitnami/etcd",
    "docker.io/bitnamilegacy/etcd",
    "docker.io/bitnamilegacy/os-shell",
    "quay.io/coreos/etcd",
    "gcr.io/etcd-development/etcd",
    "registry.k8s.io/etcd",
]

# Host directories a model cache may live in (hostPath volumes elsewhere are flagged).
DEFAULT_HOSTPATH_PREFIXES = ["/mnt/models", "/mnt/hf-cache", "/data/models", "/var/lib/dynamo"]

DEFAULTS: dict[str, dict[str, Any]] = {
    "gpus-per-pod-within-node": {"gpusPerNode": 8},
    "stack-gpu-budget": {"maxGpus": 8},
    "images-pinned-and-allowed": {"allowedImagePrefixes": DEFAULT_ALLOWED_IMAGE_PREFIXES},
    "etcd-discovery-needs-etcd": {"providedOutsideStack": False},
    "nats-planes-need-nats": {"providedOutsideStack": False},
    "kv-routing-frontend-replicas": {"maxKvFrontendReplicas": 5},
    "graph-has-podmonitor": {"providedOutsideStack": False},
    "model-cache-hostpath-prefix": {"allowedPrefixes": DEFAULT_HOSTPATH_PREFIXES},
}

_DESCRIPTIONS = {
    "gpusPerNode": "GPUs on one node of the target cluster.",
    "maxGpus": "GPUs this stack may use in total (replicas x GPUs per pod x nodes, all graphs).",
    "allowedImagePrefixes": "Image name prefixes (registry/repository) allowed; Docker Hub "
                            "names are matched in full form, e.g. docker.io/library/nats.",
    "providedOutsideStack": "True when it is installed outside this stack (e.g. by the "
                            "dynamo-platform chart), so the graph may rely on it.",
    "maxKvFrontendReplicas": "Most frontend replicas to run with KV-aware routing.",
    "allowedPrefixes": "Host directories a hostPath model cache may use.",
}


def _json_type(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer", "minimum": 0}
    if isinstance(value, list):
        return {"type": "array", "items": {"type": "string"}}
    return {"type": "string"}


def schema(policy_name: str) -> PolicyConfigSchema | None:
    """The config schema of a policy, generated from its defaults."""
    defaults = DEFAULTS.get(policy_name)
    if not defaults:
        return None
    return PolicyConfigSchema(properties={
        key: {**_json_type(value), "default": value, "description": _DESCRIPTIONS[key]}
        for key, value in defaults.items()
    })


def settings(args: Any, policy_name: str) -> dict[str, Any]:
    """The policy's defaults overlaid with what the config file sets."""
    merged = dict(DEFAULTS.get(policy_name, {}))
    for key, value in (args.get_config() or {}).items():
        if key not in merged:
            continue
        # Config reaches the pack through a protobuf Struct, where every number is a float.
        if isinstance(merged[key], int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        merged[key] = value
    return merged
