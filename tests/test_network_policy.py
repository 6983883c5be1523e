"""The graph's NetworkPolicies allow exactly the flows Dynamo needs, and nothing else.

The rendered policies are evaluated with the NetworkPolicy semantics of the Kubernetes API
(a pod selected by any policy of a direction only gets what some rule of those policies
allows; rules add up). Pods carry the labels the operator and the charts really set.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

import schemas
from conftest import objects_of, rendered
from components.coordination import Coordination
from components.network_policy import GraphNetworkPolicies, policy_specs
from recording import record

GRAPH_LABEL = "nvidia.com/dynamo-graph-deployment-name"
TYPE_LABEL = "nvidia.com/dynamo-component-type"


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: tuple


@dataclass(frozen=True)
class External:
    ip: str


Endpoint = Pod | External
NAMESPACE_LABELS = {ns: {"kubernetes.io/metadata.name": ns} for ns in ("dynamo", "monitoring", "other", "kube-system", "infra")}


def pod(namespace: str, **labels: str) -> Pod:
    return Pod(namespace, tuple(sorted(labels.items())))


def graph_pod(graph: str, component: str, kind: str) -> Pod:
    """A pod as the Dynamo operator labels it."""
    return Pod("dynamo", tuple(sorted({GRAPH_LABEL: graph, "nvidia.com/dynamo-component": component,
                                       TYPE_LABEL: kind, "nvidia.com/dynamo-namespace": f"dynamo-{graph}"}.items())))


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and expr["key"] not in labels:
            return False
        if op == "DoesNotExist" and expr["key"] in labels:
            return False
    return True


def _peer_matches(peer: dict, other: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        # Cluster pods are not matched by ipBlock here: what CNIs do with pod IPs varies.
        if not isinstance(other, External):
            return False
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        inside = ip.version == ipaddress.ip_network(block["cidr"]).version and ip in ipaddress.ip_network(block["cidr"])
        return inside and not any(ip.version == ipaddress.ip_network(e).version and ip in ipaddress.ip_network(e)
                                  for e in block.get("except", []))
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], NAMESPACE_LABELS.get(other.namespace, {})):
            return False
    elif other.namespace != policy_ns:
        return False
    return _selects(peer.get("podSelector", {}), dict(other.labels))


def _port_matches(rule: dict, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports)


def _direction_allows(policies: list[dict], target: Pod, other: Endpoint, port: int, protocol: str, direction: str) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if p["metadata"]["namespace"] == target.namespace
                 and _selects(p["spec"]["podSelector"], dict(target.labels))
                 and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, other, policy["metadata"]["namespace"]) for peer in peers)) \
                    and _port_matches(rule, port, protocol):
                return True
    return False


def allowed(policies: list[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Can src open a connection to dst:port? Both ends' policies must agree."""
    if isinstance(src, Pod) and not _direction_allows(policies, src, dst, port, protocol, "Egress"):
        return False
    if isinstance(dst, Pod) and not _direction_allows(policies, dst, src, port, protocol, "Ingress"):
        return False
    return True


# ------------------------------------------------------------------ the flows

FRONTEND = graph_pod("vllm-dp", "Frontend", "frontend")
WORKER = graph_pod("vllm-dp", "VllmWorker", "worker")
OTHER_GRAPH_WORKER = graph_pod("other-graph", "VllmWorker", "worker")
NATS = pod("dynamo", **{"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "vllm-dp-nats",
                        "app.kubernetes.io/component": "nats"})
NATS_BOX = pod("dynamo", **{"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "vllm-dp-nats",
                            "app.kubernetes.io/component": "nats-box"})
ETCD = pod("dynamo", **{"app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": "vllm-dp-etcd",
                        "app.kubernetes.io/component": "etcd"})
PROMETHEUS = pod("monitoring", **{"app.kubernetes.io/name": "prometheus", "prometheus": "kube-prometheus-stack-prometheus"})
GRAFANA = pod("monitoring", **{"app.kubernetes.io/name": "grafana"})
STRANGER = pod("other", app="curl")
NEIGHBOUR = pod("dynamo", app="something-else")
DNS = pod("kube-system", **{"k8s-app": "kube-dns"})
INTERNET = External("203.0.113.7")
HUGGING_FACE = External("18.244.0.10")
API_SERVER = External("10.96.0.1")


@dataclass
class Flow:
    id: str
    src: Endpoint
    dst: Endpoint
    port: int
    allowed: bool
    protocol: str = "TCP"


FLOWS = [
    # The OpenAI port is public; nothing else on the frontend is.
    Flow("internet -> frontend http", INTERNET, FRONTEND, 8000, True),
    Flow("stranger pod -> frontend http", STRANGER, FRONTEND, 8000, True),
    Flow("internet -> frontend other port", INTERNET, FRONTEND, 9090, False),
    Flow("stranger -> frontend response-stream port", STRANGER, FRONTEND, 42311, False),
    # Request plane, KV events, response stream: dynamic ports, within the graph only.
    Flow("frontend -> worker request plane", FRONTEND, WORKER, 34567, True),
    Flow("frontend -> worker kv events", FRONTEND, WORKER, 20080, True),
    Flow("worker -> frontend response stream", WORKER, FRONTEND, 42311, True),
    Flow("worker -> worker (multinode TP)", WORKER, WORKER, 29500, True),
    Flow("other graph -> worker", OTHER_GRAPH_WORKER, WORKER, 34567, False),
    Flow("worker -> other graph", WORKER, OTHER_GRAPH_WORKER, 34567, False),
    Flow("neighbour pod -> worker", NEIGHBOUR, WORKER, 9090, False),
    Flow("stranger -> worker metrics", STRANGER, WORKER, 9090, False),
    Flow("internet -> worker", INTERNET, WORKER, 34567, False),
    # Metrics: Prometheus only, and only the metrics ports.
    Flow("prometheus -> worker metrics", PROMETHEUS, WORKER, 9090, True),
    Flow("prometheus -> worker request plane", PROMETHEUS, WORKER, 34567, False),
    Flow("grafana -> worker metrics", GRAFANA, WORKER, 9090, False),
    Flow("prometheus -> frontend metrics", PROMETHEUS, FRONTEND, 8000, True),
    Flow("prometheus -> nats exporter", PROMETHEUS, NATS, 7777, True),
    Flow("prometheus -> nats client port", PROMETHEUS, NATS, 4222, False),
    Flow("prometheus -> etcd metrics", PROMETHEUS, ETCD, 9090, True),
    Flow("prometheus -> etcd client port", PROMETHEUS, ETCD, 2379, False),
    # NATS and etcd serve the graph and nobody else.
    Flow("frontend -> nats", FRONTEND, NATS, 4222, True),
    Flow("worker -> nats", WORKER, NATS, 4222, True),
    Flow("worker -> etcd", WORKER, ETCD, 2379, True),
    Flow("frontend -> etcd", FRONTEND, ETCD, 2379, True),
    Flow("worker -> nats monitoring port", WORKER, NATS, 8222, False),
    Flow("worker -> nats-box", WORKER, NATS_BOX, 4222, False),
    Flow("worker -> etcd peer port", WORKER, ETCD, 2380, False),
    Flow("stranger -> nats", STRANGER, NATS, 4222, False),
    Flow("neighbour -> etcd", NEIGHBOUR, ETCD, 2379, False),
    Flow("other graph -> etcd", OTHER_GRAPH_WORKER, ETCD, 2379, False),
    # Single servers: no peer traffic is needed, so none is opened.
    Flow("etcd -> etcd peer (single member)", ETCD, ETCD, 2380, False),
    Flow("nats -> nats cluster (single server)", NATS, NATS, 6222, False),
    # Egress: DNS, the API server (Kubernetes discovery), Hugging Face for workers.
    Flow("frontend -> dns", FRONTEND, DNS, 53, True, "UDP"),
    Flow("worker -> dns over tcp", WORKER, DNS, 53, True, "TCP"),
    Flow("worker -> hugging face", WORKER, HUGGING_FACE, 443, True),
    Flow("frontend -> hugging face (tokenizer)", FRONTEND, HUGGING_FACE, 443, True),
    Flow("worker -> plain http", WORKER, INTERNET, 80, False),
    Flow("frontend -> stranger pod", FRONTEND, STRANGER, 8080, False),
    Flow("worker -> prometheus", WORKER, PROMETHEUS, 9090, False),
]


def policies_of(result) -> list[dict]:
    return objects_of(result, "NetworkPolicy")


@pytest.mark.parametrize("flow", FLOWS, ids=[f.id for f in FLOWS])
def test_multinode_allows_exactly_the_graph_flows(multinode, flow):
    assert allowed(policies_of(multinode), flow.src, flow.dst, flow.port, flow.protocol) is flow.allowed


@pytest.mark.parametrize("stack, component, kind, port, expected", [
    # Kubernetes discovery watches the API server; with etcd discovery no pod needs it.
    ("multinode", "Frontend", "frontend", 6443, False),
    ("multinode", "VllmWorker", "worker", 6443, False),
    ("dev", "Frontend", "frontend", 6443, True),
    ("dev", "Frontend", "frontend", 443, True),
    ("dev", "VllmWorker", "worker", 6443, True),
], ids=["etcd discovery: frontend 6443", "etcd discovery: worker 6443", "kubernetes discovery: frontend 6443",
        "kubernetes discovery: frontend 443", "kubernetes discovery: worker 6443"])
def test_api_server_is_reachable_only_with_kubernetes_discovery(stack, component, kind, port, expected):
    result = rendered(stack)
    source = graph_pod(result.config.graph.name, component, kind)
    assert allowed(policies_of(result), source, API_SERVER, port) is expected


def test_dev_isolates_its_graph_too(dev):
    policies = policies_of(dev)
    frontend = graph_pod("vllm-agg", "Frontend", "frontend")
    worker = graph_pod("vllm-agg", "VllmWorker", "worker")
    assert allowed(policies, INTERNET, frontend, 8000)
    assert allowed(policies, frontend, worker, 34567) and allowed(policies, worker, frontend, 42311)
    assert not allowed(policies, STRANGER, worker, 34567)
    assert not allowed(policies, worker, NATS, 4222), "dev has no NATS, so no flow to one"
    assert {p["metadata"]["name"] for p in policies} == {f"vllm-agg-{s}" for s in ("default-deny", "frontend", "workers", "egress")}


def test_replicated_servers_talk_to_their_peers_only():
    result = rendered("multinode", "nats.replicas=3", "etcd.replicas=3")
    policies = policies_of(result)
    assert allowed(policies, ETCD, ETCD, 2380) and allowed(policies, NATS, NATS, 6222)
    assert not allowed(policies, WORKER, ETCD, 2380) and not allowed(policies, WORKER, NATS, 6222)
    assert not allowed(policies, NATS_BOX, NATS, 6222)


def test_without_monitoring_nobody_scrapes_the_workers():
    result = rendered("multinode", "monitoring.enabled=false")
    assert not allowed(policies_of(result), PROMETHEUS, WORKER, 9090)
    assert allowed(policies_of(result), INTERNET, FRONTEND, 8000)


def test_api_server_cidrs_narrow_the_control_plane_rule():
    args = {"namespace": "dynamo", "graph_name": "vllm-dp", "discovery": "kubernetes", "api_server_cidrs": ["10.96.0.1/32"]}
    policies = [{"metadata": {"namespace": "dynamo", "name": n}, "spec": s} for n, s in policy_specs(args).items()]
    assert allowed(policies, FRONTEND, API_SERVER, 6443)
    assert not allowed(policies, FRONTEND, INTERNET, 6443)


@pytest.mark.parametrize("stack", ["dev", "multinode"])
def test_policies_validate_strictly_and_select_pods_by_real_labels(stack):
    result = rendered(stack)
    graph = result.config.graph.name
    for policy in policies_of(result):
        schemas.validate(policy)
        assert policy["metadata"]["namespace"] == result.config.namespace
        selector = policy["spec"]["podSelector"]
        labels = set(selector.get("matchLabels", {})) | {e["key"] for e in selector.get("matchExpressions", [])}
        assert labels <= {GRAPH_LABEL, TYPE_LABEL, "app.kubernetes.io/name", "app.kubernetes.io/instance",
                          "app.kubernetes.io/component"}, labels
        if GRAPH_LABEL in labels:
            assert selector["matchLabels"][GRAPH_LABEL] == graph


def test_policy_selectors_match_the_chart_release_names():
    def build():
        coordination = Coordination("c", {"namespace": "ns", "graph_name": "g", "dynamo_version": "1.6.1",
                                          "discovery": "etcd", "nats": {}, "etcd": {}})
        return GraphNetworkPolicies("n", {"namespace": "ns", "graph_name": "g", "discovery": "etcd",
                                          "prometheus_namespace": "monitoring", "peers": coordination.peers})

    rec = record(build)
    releases = {r.inputs["chart"].rsplit("/", 1)[-1]: r.inputs["name"] for r in rec.of_type("kubernetes:helm.sh/v3:Release")}
    selected = {r.name: r.inputs["spec"]["podSelector"]["matchLabels"] for r in rec.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
                if r.name in ("n-nats", "n-etcd")}
    assert selected["n-nats"]["app.kubernetes.io/instance"] == releases["nats"]
    assert selected["n-etcd"]["app.kubernetes.io/instance"] == releases["etcd"]
    assert rec.built.policy_names == ["g-default-deny", "g-frontend", "g-workers", "g-egress", "g-nats", "g-etcd"]


def test_the_evaluator_denies_what_no_policy_opens():
    # Guards the evaluator itself: with only the default-deny, nothing reaches a graph pod.
    deny = [{"metadata": {"namespace": "dynamo", "name": "d"},
             "spec": {"podSelector": {"matchLabels": {GRAPH_LABEL: "vllm-dp"}}, "policyTypes": ["Ingress", "Egress"]}}]
    assert not allowed(deny, INTERNET, FRONTEND, 8000)
    assert not allowed(deny, FRONTEND, WORKER, 1234)
    assert allowed(deny, STRANGER, NEIGHBOUR, 80)


def test_an_external_etcd_is_reachable_on_its_ports_only():
    result = rendered("dev", "discovery=etcd", "etcd.endpoints=http://etcd.infra.svc:12379", "etcd.credentialsSecret=c")
    policies = policies_of(result)
    worker = graph_pod("vllm-agg", "VllmWorker", "worker")
    frontend = graph_pod("vllm-agg", "Frontend", "frontend")
    in_cluster_etcd = pod("infra", **{"app.kubernetes.io/name": "etcd"})
    assert allowed(policies, frontend, in_cluster_etcd, 12379) and allowed(policies, worker, External("192.0.2.10"), 12379)
    assert not allowed(policies, frontend, in_cluster_etcd, 2379)
    assert not allowed(policies, frontend, External("192.0.2.10"), 6443), "etcd discovery: no API server rule"


def test_api_server_cidrs_from_stack_config():
    result = rendered("dev", "networkPolicy.apiServerCidrs=10.96.0.1/32,fd00::1/128")
    egress = next(p for p in policies_of(result) if p["metadata"]["name"] == "vllm-agg-egress")["spec"]["egress"]
    api_rules = [r for r in egress if any(port["port"] == 6443 for port in r.get("ports", []))]
    assert api_rules and api_rules[0]["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}, {"ipBlock": {"cidr": "fd00::1/128"}}]
    frontend = graph_pod("vllm-agg", "Frontend", "frontend")
    assert allowed(policies_of(result), frontend, API_SERVER, 6443)
    assert not allowed(policies_of(result), frontend, INTERNET, 6443)
