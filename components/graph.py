"""The Dynamo graph: one DynamoGraphDeployment (Frontend + vLLM workers) and its HF token Secret.

The operator turns the graph into pods; this component only decides what the graph says.
Both API dialects are written from the same facts: `nvidia.com/v1alpha1` (`spec.services`,
before Dynamo 1.2) and `nvidia.com/v1beta1` (`spec.components`, from 1.2).
"""

from __future__ import annotations

import json
from typing import Any, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.dynamo_release import graph_api_version, release

FRONTEND = "Frontend"
WORKER = "VllmWorker"
FRONTEND_PORT = 8000
WORKER_SYSTEM_PORT = 9090
GPU_RESOURCE = "nvidia.com/gpu"
# Component types that run an engine (and hold GPUs); the rest (frontend, planner) do not.
WORKER_TYPES = ("worker", "prefill", "decode")
DISCOVERY_ANNOTATION = "nvidia.com/dynamo-discovery-backend"
# Labels the operator puts on every pod it creates for a graph.
LABEL_COMPONENT = "nvidia.com/dynamo-component"
LABEL_COMPONENT_TYPE = "nvidia.com/dynamo-component-type"
LABEL_GRAPH = "nvidia.com/dynamo-graph-deployment-name"
# vLLM workers publish KV events over ZMQ only when told to (from Dynamo 1.0).
KV_EVENTS_CONFIG = json.dumps(
    {"publisher": "zmq", "topic": "kv-events", "endpoint": "tcp://*:20080", "enable_kv_cache_events": True},
    separators=(",", ":"),
)


def object_labels(graph_name: str) -> dict[str, str]:
    """Labels on every object this project creates for a graph (not its pods: the operator labels those)."""
    return {LABEL_GRAPH: graph_name, "app.kubernetes.io/part-of": "dynamo"}


def pod_selector(graph_name: str, component: str) -> dict[str, str]:
    """Labels that select the pods of one component of a graph, as the operator sets them."""
    return {LABEL_GRAPH: graph_name, LABEL_COMPONENT: component}


def type_selector(graph_name: str, component_type: str) -> dict[str, str]:
    """Labels that select the pods of one component type (frontend, worker, ...) of a graph."""
    return {LABEL_GRAPH: graph_name, LABEL_COMPONENT_TYPE: component_type}


class DynamoGraphArgs(TypedDict):
    """What the graph needs; every value comes from the typed stack config."""

    namespace: str
    """Namespace of the graph."""
    name: str
    """Name of the DynamoGraphDeployment."""
    dynamo_version: str
    """Dynamo release, e.g. 1.6.1; picks the API version and release-specific flags."""
    image: str
    """Runtime image of every container."""
    model: str
    """Hugging Face model id the workers serve."""
    frontend_replicas: int
    """Frontend replicas."""
    router_mode: str
    """kv, round-robin or random."""
    migration_limit: int
    """Request migration limit (0 = off)."""
    worker_replicas: int
    """vLLM worker replicas (data parallel)."""
    worker_gpus: int
    """GPUs per worker pod."""
    worker_node_count: int
    """Nodes one worker spans (multinode tensor parallel)."""
    hf_token: Optional[pulumi.Output]
    """The HF token as a Pulumi secret, or None to reference hf_token_secret_name."""
    hf_token_secret_name: str
    """Existing Secret with key HF_TOKEN, used when hf_token is None."""
    discovery: str
    """kubernetes or etcd: one backend for every component."""
    ready_timeout_seconds: int
    """How long Pulumi waits for the graph to report successful."""
    model_cache_volume: NotRequired[Optional[dict[str, Any]]]
    """A core Volume (named model-cache) mounted into the workers, or None."""
    model_cache_mount_path: NotRequired[str]
    """Where the model cache is mounted (also HF_HOME)."""
    extra_env: NotRequired[list[pulumi.Input[dict[str, Any]]]]
    """EnvVars every container gets (NATS/etcd wiring, by Secret reference)."""
    spread_across_nodes: NotRequired[bool]
    """Spread frontends and workers over nodes (multinode)."""


class DynamoGraph(pulumi.ComponentResource):
    """A DynamoGraphDeployment with a Frontend and vLLM workers; Pulumi waits until it is ready."""

    api_version: str
    """nvidia.com/v1alpha1 or nvidia.com/v1beta1."""
    graph_name: pulumi.Output[str]
    """Name of the DynamoGraphDeployment."""
    total_gpus: int
    """GPUs the graph requests: worker replicas x GPUs x nodes."""

    def __init__(self, name: str, args: DynamoGraphArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("dynamo:graph:DynamoGraph", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.api_version = graph_api_version(args["dynamo_version"])
        self.total_gpus = args["worker_replicas"] * args["worker_gpus"] * args["worker_node_count"]

        secret_name: pulumi.Input[str] = args["hf_token_secret_name"]
        if args["hf_token"] is not None:
            token_secret = k8s.core.v1.Secret(
                f"{name}-hf-token",
                metadata={"name": f"{args['name']}-hf-token", "namespace": args["namespace"]},
                type="Opaque",
                string_data={"HF_TOKEN": args["hf_token"]},
                opts=child,
            )
            secret_name = token_secret.metadata["name"]

        spec = graph_spec(args, secret_name, self.api_version)
        timeout = args["ready_timeout_seconds"]
        graph = k8s.apiextensions.CustomResource(
            name,
            api_version=self.api_version,
            kind="DynamoGraphDeployment",
            metadata={
                "name": args["name"],
                "namespace": args["namespace"],
                "annotations": {
                    DISCOVERY_ANNOTATION: args["discovery"],
                    # `pulumi up` returns when the operator reports the graph successful (like `kubectl wait`).
                    "pulumi.com/waitFor": "jsonpath={.status.state}=successful",
                    "pulumi.com/timeoutSeconds": str(timeout),
                },
            },
            spec=spec,
            opts=pulumi.ResourceOptions(parent=self, custom_timeouts=pulumi.CustomTimeouts(
                create=f"{timeout}s", update=f"{timeout}s")),
        )
        self.graph_name = graph.metadata["name"]
        self.register_outputs({"graph_name": self.graph_name, "api_version": self.api_version, "total_gpus": self.total_gpus})


# ------------------------------------------------------------------ the spec, per dialect

def _frontend_env(args: DynamoGraphArgs) -> list:
    env: list = [{"name": "DYN_ROUTER_MODE", "value": args["router_mode"]}]
    if release(args["dynamo_version"]) >= (1, 0, 0):
        # From 1.0 migration is a frontend setting; before it, a worker flag (see _worker_args).
        env.append({"name": "DYN_MIGRATION_LIMIT", "value": str(args["migration_limit"])})
    return env + list(args.get("extra_env", []))


def _worker_args(args: DynamoGraphArgs) -> list[str]:
    tp = args["worker_gpus"] * args["worker_node_count"]
    flags = ["--model", args["model"], "--tensor-parallel-size", str(tp)]
    v = release(args["dynamo_version"])
    if args["router_mode"] == "kv" and v >= (1, 0, 0):
        flags += ["--kv-events-config", KV_EVENTS_CONFIG]
    if v < (1, 0, 0) and args["migration_limit"] > 0:
        flags += ["--migration-limit", str(args["migration_limit"])]
    return flags


def _worker_env(args: DynamoGraphArgs) -> list:
    env: list = []
    if args.get("model_cache_volume"):
        env.append({"name": "HF_HOME", "value": _cache_mount_path(args)})
    return env + list(args.get("extra_env", []))


def _security_context(*add: str) -> dict:
    caps: dict = {"drop": ["ALL"]}
    if add:
        caps["add"] = list(add)
    return {"privileged": False, "allowPrivilegeEscalation": False, "capabilities": caps}


def _spread(args: DynamoGraphArgs, component: str) -> dict:
    if not args.get("spread_across_nodes"):
        return {}
    return {"topologySpreadConstraints": [{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": pod_selector(args["name"], component)},
    }]}


def _cache_mounts(args: DynamoGraphArgs) -> tuple[list, list]:
    volume = args.get("model_cache_volume")
    if not volume:
        return [], []
    return [volume], [{"name": volume["name"], "mountPath": _cache_mount_path(args)}]


def _cache_mount_path(args: DynamoGraphArgs) -> str:
    # Hugging Face's own cache folder for root, where no path is given.
    return args.get("model_cache_mount_path", "/root/.cache/huggingface")


def graph_spec(args: DynamoGraphArgs, secret_name: pulumi.Input[str], api_version: str) -> dict:
    if api_version == "nvidia.com/v1beta1":
        return _spec_v1beta1(args, secret_name)
    return _spec_v1alpha1(args, secret_name)


def _spec_v1beta1(args: DynamoGraphArgs, secret_name: pulumi.Input[str]) -> dict:
    volumes, mounts = _cache_mounts(args)
    frontend = {
        "name": FRONTEND,
        "type": "frontend",
        "replicas": args["frontend_replicas"],
        "podTemplate": {"spec": {
            "containers": [{
                "name": "main",
                "image": args["image"],
                "env": _frontend_env(args),
                # The frontend fetches the tokenizer and chat template of the model it serves.
                "envFrom": [{"secretRef": {"name": secret_name}}],
                "securityContext": _security_context(),
            }],
            **_spread(args, FRONTEND),
        }},
    }
    worker_container: dict = {
        "name": "main",
        "image": args["image"],
        "command": ["python3", "-m", "dynamo.vllm"],
        "args": _worker_args(args),
        "envFrom": [{"secretRef": {"name": secret_name}}],
        "resources": {"limits": {GPU_RESOURCE: str(args["worker_gpus"])}},
        "securityContext": _security_context("IPC_LOCK"),
    }
    if env := _worker_env(args):
        worker_container["env"] = env
    if mounts:
        worker_container["volumeMounts"] = mounts
    worker_pod: dict = {"containers": [worker_container], **_spread(args, WORKER)}
    if volumes:
        worker_pod["volumes"] = volumes
    worker: dict = {"name": WORKER, "type": "worker", "replicas": args["worker_replicas"], "podTemplate": {"spec": worker_pod}}
    if args["worker_node_count"] > 1:
        worker["multinode"] = {"nodeCount": args["worker_node_count"]}
    return {"backendFramework": "vllm", "components": [frontend, worker]}


def _spec_v1alpha1(args: DynamoGraphArgs, secret_name: pulumi.Input[str]) -> dict:
    v = release(args["dynamo_version"])
    volumes, mounts = _cache_mounts(args)

    def service(component_type: str, replicas: int) -> dict:
        svc: dict = {"componentType": component_type, "replicas": replicas}
        if v < (0, 9, 0):
            # 0.8 names the Dynamo namespace per service (deprecated from 0.9) and needs the
            # scaling adapter off, or its webhook rejects replica changes made by Pulumi.
            svc["dynamoNamespace"] = args["name"]
            svc["scalingAdapter"] = {"disable": True}
        return svc

    frontend = service("frontend", args["frontend_replicas"])
    frontend["envs"] = _frontend_env(args)
    frontend["envFromSecret"] = secret_name
    frontend["extraPodSpec"] = {
        "mainContainer": {"image": args["image"], "securityContext": _security_context()},
        **_spread(args, FRONTEND),
    }

    worker = service("worker", args["worker_replicas"])
    worker["envFromSecret"] = secret_name
    worker["resources"] = {"limits": {"gpu": str(args["worker_gpus"])}}
    if env := _worker_env(args):
        worker["envs"] = env
    main: dict = {
        "image": args["image"],
        "command": ["python3", "-m", "dynamo.vllm"],
        "args": _worker_args(args),
        "securityContext": _security_context("IPC_LOCK"),
    }
    if mounts:
        main["volumeMounts"] = mounts
    worker["extraPodSpec"] = {"mainContainer": main, **_spread(args, WORKER)}
    if volumes:
        worker["extraPodSpec"]["volumes"] = volumes
    if args["worker_node_count"] > 1:
        worker["multinode"] = {"nodeCount": args["worker_node_count"]}
    return {"backendFramework": "vllm", "services": {FRONTEND: frontend, WORKER: worker}}
