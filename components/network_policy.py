"""NetworkPolicies that make a graph default-deny while keeping it working.

No Dynamo release ships NetworkPolicies; its security docs ask operators to add their own.
Pods are selected by the labels the operator puts on every pod of a graph
(`nvidia.com/dynamo-graph-deployment-name`, `nvidia.com/dynamo-component-type`) and, for NATS
and etcd, by the selector labels their charts set.

Flows allowed (everything else is dropped once a pod is selected):
- frontend: TCP 8000 (OpenAI HTTP) from anywhere the Service exposes it; any port from the
  graph's own pods (workers connect back to its dynamic TCP response-stream port).
- workers: any port from the graph's own pods (request-plane, KV-event and NIXL ports are
  dynamic); the system/metrics port 9090 from Prometheus.
- egress of every graph pod: DNS, the graph's own pods, NATS/etcd client ports (an external
  etcd's ports anywhere), the API server (only with Kubernetes discovery, which watches it),
  and HTTPS (443) to Hugging Face: workers download weights, the frontend the tokenizer.
- NATS / etcd servers: client port from the graph's pods, metrics port from Prometheus, their
  own peers on the cluster ports.
"""

from __future__ import annotations

from typing import Any, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.coordination import CoordinationPeer
from components.graph import FRONTEND_PORT, LABEL_COMPONENT_TYPE, LABEL_GRAPH, WORKER_SYSTEM_PORT, WORKER_TYPES, object_labels, type_selector

API_SERVER_PORTS = [443, 6443]
HTTPS_PORT = 443
DNS_PORT = 53
# Any address; IPv4 and IPv6 so dual-stack clusters behave the same.
ANYWHERE = [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
# Labels of the Prometheus server pods (kube-prometheus-stack).
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}


class GraphNetworkPoliciesArgs(TypedDict):
    """Who may talk to the graph."""

    namespace: str
    """Namespace of the graph (and of NATS/etcd)."""
    graph_name: str
    """Name of the DynamoGraphDeployment whose pods are isolated."""
    discovery: str
    """kubernetes (pods need the API server) or etcd."""
    prometheus_namespace: NotRequired[Optional[str]]
    """Namespace Prometheus runs in; None allows no scrapes."""
    peers: NotRequired[list[CoordinationPeer]]
    """NATS / etcd installed for the graph (Coordination.peers)."""
    external_ports: NotRequired[list[int]]
    """TCP ports of coordination services outside the cluster (Coordination.external_ports)."""
    api_server_cidrs: NotRequired[list[str]]
    """Where the API server is; default anywhere (narrow it to the control plane's addresses)."""


def graph_pods(graph: str) -> dict[str, Any]:
    """Selector of every pod of the graph."""
    return {"matchLabels": {LABEL_GRAPH: graph}}


def frontend_pods(graph: str) -> dict[str, Any]:
    return {"matchLabels": type_selector(graph, "frontend")}


def worker_pods(graph: str) -> dict[str, Any]:
    return {"matchLabels": {LABEL_GRAPH: graph},
            "matchExpressions": [{"key": LABEL_COMPONENT_TYPE, "operator": "In", "values": list(WORKER_TYPES)}]}


def tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def policy_specs(args: GraphNetworkPoliciesArgs) -> dict[str, dict[str, Any]]:
    """NetworkPolicy specs by name suffix: the whole rule set, as plain data."""
    graph = args["graph_name"]
    peers = args.get("peers", [])
    own_pods = [{"podSelector": graph_pods(graph)}]
    prometheus: list[dict[str, Any]] = []
    if args.get("prometheus_namespace"):
        prometheus = [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": args["prometheus_namespace"]}},
            "podSelector": {"matchLabels": PROMETHEUS_POD_LABELS},
        }]

    egress: list[dict[str, Any]] = [
        {"ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}]},
        {"to": own_pods},
    ]
    for peer in peers:
        egress.append({"to": [{"podSelector": {"matchLabels": peer["pod_labels"]}}], "ports": tcp(peer["client_port"])})
    if args.get("external_ports"):
        # An external etcd has no labels we know: its ports, at any address or in any namespace
        # (some CNIs never match pod addresses with ipBlock).
        egress.append({"to": ANYWHERE + [{"namespaceSelector": {}}], "ports": tcp(*args["external_ports"])})
    # Hugging Face has no fixed addresses: HTTPS anywhere (workers: weights; frontend: tokenizer).
    egress.append({"to": ANYWHERE, "ports": tcp(HTTPS_PORT)})
    if args["discovery"] == "kubernetes":
        cidrs = args.get("api_server_cidrs")
        to = [{"ipBlock": {"cidr": c}} for c in cidrs] if cidrs else ANYWHERE
        egress.append({"to": to, "ports": tcp(*API_SERVER_PORTS)})

    worker_ingress: list[dict[str, Any]] = [{"from": own_pods}]
    if prometheus:
        worker_ingress.append({"from": prometheus, "ports": tcp(WORKER_SYSTEM_PORT)})

    specs: dict[str, dict[str, Any]] = {
        # Selecting every graph pod for both directions is what makes the rest an allow-list.
        "default-deny": {"podSelector": graph_pods(graph), "policyTypes": ["Ingress", "Egress"]},
        "frontend": {
            "podSelector": frontend_pods(graph),
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": tcp(FRONTEND_PORT)}, {"from": own_pods}],
        },
        "workers": {
            "podSelector": worker_pods(graph),
            "policyTypes": ["Ingress"],
            "ingress": worker_ingress,
        },
        "egress": {"podSelector": graph_pods(graph), "policyTypes": ["Egress"], "egress": egress},
    }
    for peer in peers:
        ingress: list[dict[str, Any]] = [{"from": own_pods, "ports": tcp(peer["client_port"])}]
        if prometheus:
            ingress.append({"from": prometheus, "ports": tcp(peer["metrics_port"])})
        if peer["peer_ports"]:
            ingress.append({"from": [{"podSelector": {"matchLabels": peer["pod_labels"]}}], "ports": tcp(*peer["peer_ports"])})
        specs[peer["name"]] = {
            "podSelector": {"matchLabels": peer["pod_labels"]},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        }
    return specs


class GraphNetworkPolicies(pulumi.ComponentResource):
    """Default-deny NetworkPolicies for a graph and its NATS/etcd, with the flows Dynamo needs."""

    policy_names: list[str]
    """Names of the NetworkPolicies created."""

    def __init__(self, name: str, args: GraphNetworkPoliciesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("dynamo:network_policy:GraphNetworkPolicies", name, None, opts)
        graph = args["graph_name"]
        self.policy_names = []
        for suffix, spec in policy_specs(args).items():
            policy_name = f"{graph}-{suffix}"
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{suffix}",
                metadata={"name": policy_name, "namespace": args["namespace"],
                          "labels": object_labels(graph)},
                spec=spec,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.policy_names.append(policy_name)
        self.register_outputs({"policy_names": self.policy_names})
