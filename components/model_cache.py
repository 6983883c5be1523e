"""The Hugging Face model cache the workers share: a PersistentVolumeClaim, or a node directory."""

from __future__ import annotations

from typing import Any, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

VOLUME_NAME = "model-cache"


class ModelCacheArgs(TypedDict):
    """Where downloaded weights live between pod restarts."""

    namespace: str
    """Namespace of the graph."""
    claim_name: str
    """Name of the PersistentVolumeClaim."""
    size: str
    """Requested storage, e.g. 100Gi."""
    storage_class: str
    """StorageClass; empty string uses the cluster default."""
    access_mode: str
    """ReadWriteOnce (workers on one node) or ReadWriteMany (several nodes)."""
    host_path: str
    """A node directory to use instead of a claim; empty for a claim."""


class ModelCache(pulumi.ComponentResource):
    """A claim (or hostPath) mounted into every worker as the Hugging Face cache."""

    volume: dict[str, Any]
    """The core Volume (named model-cache) for the worker pods."""

    def __init__(self, name: str, args: ModelCacheArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("dynamo:model_cache:ModelCache", name, None, opts)
        if args["host_path"]:
            self.volume = {"name": VOLUME_NAME, "hostPath": {"path": args["host_path"], "type": "DirectoryOrCreate"}}
        else:
            spec: dict[str, Any] = {
                "accessModes": [args["access_mode"]],
                "resources": {"requests": {"storage": args["size"]}},
            }
            if args["storage_class"]:
                spec["storageClassName"] = args["storage_class"]
            k8s.core.v1.PersistentVolumeClaim(
                name,
                metadata={"name": args["claim_name"], "namespace": args["namespace"]},
                spec=spec,
                # A claim may stay Pending until a pod uses it (WaitForFirstConsumer): do not block on it.
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.volume = {"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": args["claim_name"]}}
        self.register_outputs({"volume": self.volume})
