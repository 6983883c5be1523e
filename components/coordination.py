"""NATS and etcd for a graph, installed with Helm, with generated credentials kept by reference.

Dynamo's default from 0.8 is Kubernetes-native discovery with no NATS and no etcd. This
component is the opt-in path for large graphs: `nats` installs the nats-io chart (JetStream on
a PVC, Prometheus exporter on 7777) and `etcd` installs the Bitnami etcd chart with RBAC
authentication on. Both live in the graph's namespace because a Secret can only be referenced
from its own namespace: one Secret per service then serves both the chart (server side) and
every Dynamo container (client side), and nothing is copied across namespaces.

An existing etcd can be used instead (`external_etcd`): its URLs and a Secret the user created
with its credentials, referenced the same way.

Passwords come from pulumi-random, so they only exist as Pulumi secrets and inside Kubernetes
Secrets. Chart values and Dynamo pod specs carry Secret *names* and keys, never the values.
"""

from __future__ import annotations

from typing import Any, NotRequired, Optional, TypedDict
from urllib.parse import urlsplit

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.dynamo_release import release
from components.graph import object_labels

NATS_REPO = "https://nats-io.github.io/k8s/helm/charts/"
NATS_CHART_VERSION = "2.14.2"
NATS_CLIENT_PORT = 4222
NATS_CLUSTER_PORT = 6222
NATS_METRICS_PORT = 7777
NATS_USERNAME = "dynamo"

# Bitnami moved its free images to docker.io/bitnamilegacy (Aug 2025); the chart still lives at
# bitnamicharts. Same chart and image Dynamo's own platform chart pins (etcd 12.0.18).
ETCD_CHART = "oci://registry-1.docker.io/bitnamicharts/etcd"
ETCD_CHART_VERSION = "12.0.18"
ETCD_IMAGE_REPOSITORY = "bitnamilegacy/etcd"
ETCD_IMAGE_TAG = "3.5.18-debian-12-r5"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_METRICS_PORT = 9090
# The Bitnami chart bootstraps RBAC with its root user only (the name is fixed).
ETCD_USERNAME = "root"

SECRET_USERNAME_KEY = "username"
SECRET_PASSWORD_KEY = "password"
HELM_RELEASE_NAME_MAX = 53


class NatsArgs(TypedDict):
    """How NATS is installed."""

    chart_version: NotRequired[str]
    """nats-io chart version (default 2.14.2)."""
    storage_size: NotRequired[str]
    """Size of the JetStream file-store PVC per server (default 10Gi)."""
    storage_class: NotRequired[str]
    """StorageClass of the JetStream PVC; empty uses the cluster default."""
    replicas: NotRequired[int]
    """NATS servers; more than 1 forms a JetStream cluster (3 recommended)."""


class EtcdArgs(TypedDict):
    """How etcd is installed."""

    chart_version: NotRequired[str]
    """Bitnami etcd chart version (default 12.0.18)."""
    image_tag: NotRequired[str]
    """Tag of bitnamilegacy/etcd (default 3.5.18-debian-12-r5)."""
    storage_size: NotRequired[str]
    """Size of each member's data PVC (default 1Gi)."""
    storage_class: NotRequired[str]
    """StorageClass of the data PVC; empty uses the cluster default."""
    replicas: NotRequired[int]
    """etcd members (1, or an odd number for a quorum)."""


class ExternalEtcdArgs(TypedDict):
    """An etcd that already runs elsewhere (not installed here)."""

    endpoints: str
    """Comma-separated client URLs, e.g. http://etcd.infra.svc:2379."""
    credentials_secret: str
    """Existing Secret in the graph's namespace with keys `username` and `password`."""


class CoordinationArgs(TypedDict):
    """What the coordination services need."""

    namespace: str
    """Namespace of the graph; the releases and their Secrets go there too."""
    graph_name: str
    """Name of the graph; prefixes the release and Secret names."""
    dynamo_version: str
    """Dynamo release; decides which env vars make Dynamo use NATS."""
    discovery: str
    """kubernetes or etcd; etcd needs `etcd` set."""
    nats: NotRequired[Optional[NatsArgs]]
    """Install NATS when set."""
    etcd: NotRequired[Optional[EtcdArgs]]
    """Install etcd when set."""
    external_etcd: NotRequired[Optional[ExternalEtcdArgs]]
    """Use this existing etcd for discovery instead of installing one."""


class CoordinationPeer(TypedDict):
    """How the network policies reach one installed service."""

    name: str
    """nats or etcd."""
    pod_labels: dict[str, str]
    """Labels the chart puts on the server pods (its selector labels)."""
    client_port: int
    """Port the graph's pods connect to."""
    metrics_port: int
    """Port Prometheus scrapes."""
    peer_ports: list[int]
    """Ports the servers use among themselves (empty for a single server)."""


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    """An EnvVar read from a Secret key, so the value never appears in a spec."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def nats_env(url: str, secret: str, dynamo_version: str) -> list[dict[str, Any]]:
    """What a Dynamo container needs to use an authenticated NATS.

    Up to 1.2.x NATS carried KV events by default, so the address is enough. From 1.3 the event
    plane defaults to ZMQ and NATS is opt-in: without the two plane variables the server would
    sit unused.
    """
    env = [
        {"name": "NATS_SERVER", "value": url},
        secret_env("NATS_AUTH_USERNAME", secret, SECRET_USERNAME_KEY),
        secret_env("NATS_AUTH_PASSWORD", secret, SECRET_PASSWORD_KEY),
    ]
    if release(dynamo_version) >= (1, 3, 0):
        env += [{"name": "DYN_EVENT_PLANE", "value": "nats"}, {"name": "DYN_REQUEST_PLANE", "value": "nats"}]
    return env


def etcd_env(endpoints: str, secret: str) -> list[dict[str, Any]]:
    """What a Dynamo container needs for etcd discovery against an authenticated etcd."""
    return [
        {"name": "ETCD_ENDPOINTS", "value": endpoints},
        secret_env("ETCD_AUTH_USERNAME", secret, SECRET_USERNAME_KEY),
        secret_env("ETCD_AUTH_PASSWORD", secret, SECRET_PASSWORD_KEY),
    ]


def nats_values(secret: str, args: NatsArgs) -> dict[str, Any]:
    """Values for the nats-io chart (keys as in its values.yaml for 2.14.2)."""
    replicas = args.get("replicas", 1)
    pvc: dict[str, Any] = {"enabled": True, "size": args.get("storage_size", "10Gi")}
    if args.get("storage_class"):
        pvc["storageClassName"] = args["storage_class"]
    config: dict[str, Any] = {
        "jetstream": {"enabled": True, "fileStore": {"enabled": True, "pvc": pvc}},
        # The exporter reads the monitoring port on localhost.
        "monitor": {"enabled": True},
        # `<< $VAR >>` is written unquoted into nats.conf, where $VAR reads the container's
        # environment: the password reaches the server from the Secret, not from the values.
        "merge": {"authorization": {
            "user": "<< $NATS_AUTH_USERNAME >>",
            "password": "<< $NATS_AUTH_PASSWORD >>",
        }},
    }
    if replicas > 1:
        # Routes stay unauthenticated: only the NATS pods may reach the cluster port (network policy).
        config["cluster"] = {"enabled": True, "replicas": replicas}
    return {
        "config": config,
        "container": {"env": {
            "NATS_AUTH_USERNAME": {"valueFrom": {"secretKeyRef": {"name": secret, "key": SECRET_USERNAME_KEY}}},
            "NATS_AUTH_PASSWORD": {"valueFrom": {"secretKeyRef": {"name": secret, "key": SECRET_PASSWORD_KEY}}},
        }},
        "promExporter": {"enabled": True, "port": NATS_METRICS_PORT},
        # nats-box is a debugging shell with its own client credentials; not needed by the graph.
        "natsBox": {"enabled": False},
    }


def etcd_values(secret: str, args: EtcdArgs) -> dict[str, Any]:
    """Values for the Bitnami etcd chart (keys as in its values.yaml for 12.0.x)."""
    replicas = args.get("replicas", 1)
    persistence: dict[str, Any] = {"enabled": True, "size": args.get("storage_size", "1Gi")}
    if args.get("storage_class"):
        persistence["storageClass"] = args["storage_class"]
    return {
        # The chart refuses images other than its own unless told; bitnamilegacy is the same build.
        "global": {"security": {"allowInsecureImages": True}},
        "image": {"repository": ETCD_IMAGE_REPOSITORY, "tag": args.get("image_tag", ETCD_IMAGE_TAG)},
        "replicaCount": replicas,
        "auth": {"rbac": {
            "create": True,
            "allowNoneAuthentication": False,
            "existingSecret": secret,
            "existingSecretPasswordKey": SECRET_PASSWORD_KEY,
        }},
        "persistence": persistence,
        # Metrics on their own port, so Prometheus never needs the client port.
        "metrics": {"enabled": True, "useSeparateEndpoint": True},
        "containerPorts": {"metrics": ETCD_METRICS_PORT},
        # This project's NetworkPolicies decide who reaches etcd; the chart's own would allow everyone.
        "networkPolicy": {"enabled": False},
        # Dynamo's platform chart disables this hook job too; it is only for upgrading old clusters.
        "preUpgradeJob": {"enabled": False},
        # A budget over one member would block every node drain.
        "pdb": {"create": replicas > 1},
    }


def nats_pod_labels(release_name: str) -> dict[str, str]:
    """The nats chart's selector labels for the server pods (not nats-box)."""
    return {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": release_name,
            "app.kubernetes.io/component": "nats"}


def etcd_pod_labels(release_name: str) -> dict[str, str]:
    """The Bitnami chart's match labels for the etcd StatefulSet pods."""
    return {"app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": release_name}


class Coordination(pulumi.ComponentResource):
    """Optional NATS and etcd for one graph, with generated credentials referenced by Secret name."""

    env: list[dict[str, Any]]
    """EnvVars every Dynamo container must get (plain names and Secret references only)."""
    releases: list[pulumi.Resource]
    """The Helm releases: make the graph depend on them so it starts after NATS/etcd are ready."""
    peers: list[CoordinationPeer]
    """Installed services, for the network policies and pod monitors."""
    nats_url: Optional[str]
    """nats:// URL of the installed NATS, or None."""
    etcd_endpoints: Optional[str]
    """Client URL(s) of the etcd the graph uses (installed or external), or None."""
    external_ports: list[int]
    """TCP ports of coordination services outside the cluster the graph must reach (external etcd)."""

    def __init__(self, name: str, args: CoordinationArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("dynamo:coordination:Coordination", name, None, opts)
        ns, graph = args["namespace"], args["graph_name"]
        external = args.get("external_etcd")
        if args.get("etcd") is not None and external is not None:
            raise ValueError("etcd is both installed and external; allowed: one of etcd or external_etcd")
        if args["discovery"] == "etcd" and args.get("etcd") is None and external is None:
            raise ValueError("discovery 'etcd' needs etcd; allowed: set etcd or external_etcd, or discovery 'kubernetes'")
        labels = object_labels(graph)
        self.env, self.releases, self.peers, self.external_ports = [], [], [], []
        self.nats_url = self.etcd_endpoints = None

        if (nats := args.get("nats")) is not None:
            release_name, secret_name = _release_name(graph, "nats"), f"{graph}-nats-auth"
            secret = self._credentials(f"{name}-nats", secret_name, NATS_USERNAME, ns, labels)
            self.releases.append(k8s.helm.v3.Release(
                f"{name}-nats",
                k8s.helm.v3.ReleaseArgs(
                    name=release_name,
                    namespace=ns,
                    chart="nats",
                    version=nats.get("chart_version", NATS_CHART_VERSION),
                    repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=NATS_REPO),
                    values=nats_values(secret.metadata["name"], nats),
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[secret]),
            ))
            self.nats_url = f"nats://{release_name}.{ns}.svc:{NATS_CLIENT_PORT}"
            self.env += nats_env(self.nats_url, secret_name, args["dynamo_version"])
            self.peers.append(CoordinationPeer(
                name="nats", pod_labels=nats_pod_labels(release_name), client_port=NATS_CLIENT_PORT,
                metrics_port=NATS_METRICS_PORT, peer_ports=[NATS_CLUSTER_PORT] if nats.get("replicas", 1) > 1 else []))

        if (etcd := args.get("etcd")) is not None:
            release_name, secret_name = _release_name(graph, "etcd"), f"{graph}-etcd-auth"
            secret = self._credentials(f"{name}-etcd", secret_name, ETCD_USERNAME, ns, labels)
            self.releases.append(k8s.helm.v3.Release(
                f"{name}-etcd",
                k8s.helm.v3.ReleaseArgs(
                    name=release_name,
                    namespace=ns,
                    chart=ETCD_CHART,
                    version=etcd.get("chart_version", ETCD_CHART_VERSION),
                    values=etcd_values(secret.metadata["name"], etcd),
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[secret]),
            ))
            self.etcd_endpoints = f"http://{release_name}.{ns}.svc:{ETCD_CLIENT_PORT}"
            if args["discovery"] == "etcd":
                self.env += etcd_env(self.etcd_endpoints, secret_name)
            self.peers.append(CoordinationPeer(
                name="etcd", pod_labels=etcd_pod_labels(release_name), client_port=ETCD_CLIENT_PORT,
                metrics_port=ETCD_METRICS_PORT,
                peer_ports=[ETCD_CLIENT_PORT, ETCD_PEER_PORT] if etcd.get("replicas", 1) > 1 else []))

        if external is not None:
            self.etcd_endpoints = external["endpoints"]
            self.external_ports = endpoint_ports(external["endpoints"])
            if args["discovery"] == "etcd":
                self.env += etcd_env(self.etcd_endpoints, external["credentials_secret"])

        self.register_outputs({
            "nats_url": self.nats_url,
            "etcd_endpoints": self.etcd_endpoints,
            "releases": [r.urn for r in self.releases],
        })

    def _credentials(self, name: str, secret_name: str, username: str, namespace: str,
                     labels: dict[str, str]) -> k8s.core.v1.Secret:
        """A random password (a Pulumi secret) stored with its user name in a Kubernetes Secret."""
        # Letters and digits only: nats.conf parses the substituted $VAR value as config syntax.
        password = random.RandomPassword(f"{name}-password", length=32, special=False,
                                         opts=pulumi.ResourceOptions(parent=self))
        return k8s.core.v1.Secret(
            f"{name}-auth",
            metadata={"name": secret_name, "namespace": namespace, "labels": labels},
            type="Opaque",
            string_data={SECRET_USERNAME_KEY: username, SECRET_PASSWORD_KEY: password.result},
            opts=pulumi.ResourceOptions(parent=self),
        )


def endpoint_ports(endpoints: str) -> list[int]:
    """Ports of comma-separated URLs (etcd's default 2379 where none is given)."""
    ports = {urlsplit(url.strip()).port or ETCD_CLIENT_PORT for url in endpoints.split(",") if url.strip()}
    return sorted(ports)


def _release_name(graph: str, service: str) -> str:
    """`<graph>-nats`: contains the chart name, so both charts use it as-is for their objects."""
    name = f"{graph}-{service}"
    if len(name) > HELM_RELEASE_NAME_MAX:
        raise ValueError(f"release name {name!r} is longer than Helm's {HELM_RELEASE_NAME_MAX} characters; "
                         f"allowed: a graph name of at most {HELM_RELEASE_NAME_MAX - len(service) - 1} characters")
    return name
