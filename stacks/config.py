"""Typed stack configuration: the one place that reads raw Pulumi config.

Every key a stack may set is declared once in FIELDS (dotted name, type, default,
allowed values, description). `parse()` turns the raw, nested config into frozen
dataclasses or raises one ConfigError that names the dotted key and what is allowed.
Nothing below this layer reads pulumi.Config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import pulumi

from components.dynamo_release import graph_api_version, release

PROJECT = "dynamo-distributed"
MIN_DYNAMO = (0, 8, 0)
SECRET_KEYS = ("hfToken",)


class ConfigError(ValueError):
    """Bad stack configuration: the message names the key and the allowed values."""


@dataclass(frozen=True)
class Field:
    key: str
    kind: type
    default: Any
    doc: str
    choices: tuple = ()
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    pattern: Optional[str] = None
    pattern_doc: str = ""


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_LABEL_DOC = "a DNS-1123 label (lower-case letters, digits and '-', at most 63 characters)"
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"

FIELDS: tuple[Field, ...] = (
    Field("topology", str, "dev", "Which composition of components to deploy.", choices=("dev", "multinode")),
    Field("namespace", str, "dynamo", "Namespace of the graph and its objects.", pattern=_DNS_LABEL, pattern_doc=_DNS_LABEL_DOC),
    Field("graph.name", str, "vllm-agg", "Name of the DynamoGraphDeployment.", pattern=_DNS_LABEL, pattern_doc=_DNS_LABEL_DOC),
    Field("graph.readyTimeoutSeconds", int, 2400, "How long `pulumi up` waits for the graph to become ready (model downloads included).", minimum=60),
    Field("dynamo.version", str, "1.6.1", "Dynamo release; selects the graph API (v1alpha1 before 1.2, v1beta1 from 1.2) and release-specific flags.",
          pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", pattern_doc="a release like 1.6.1 (0.8.0 or newer)"),
    Field("dynamo.image", str, "", "Runtime image; empty means nvcr.io/nvidia/ai-dynamo/vllm-runtime:<dynamo.version>."),
    Field("model.name", str, "Qwen/Qwen2.5-1.5B-Instruct", "Hugging Face model id served by the workers.", pattern=r"^\S+$", pattern_doc="a model id without spaces"),
    Field("frontend.replicas", int, 1, "Frontend (OpenAI HTTP + router) replicas.", minimum=1, maximum=64),
    Field("frontend.routerMode", str, "kv", "How the frontend routes requests to workers.", choices=("kv", "round-robin", "random")),
    Field("frontend.migrationLimit", int, 3, "Times a request may move to another worker when its worker dies (0 = off).", minimum=0, maximum=100),
    Field("frontend.service.type", str, "NodePort", "How the frontend is exposed.", choices=("NodePort", "LoadBalancer", "ClusterIP")),
    Field("frontend.service.nodePort", int, 30200, "Node port for the frontend when frontend.service.type is NodePort.", minimum=30000, maximum=32767),
    Field("workers.replicas", int, 2, "vLLM worker replicas (data parallel).", minimum=1, maximum=1024),
    Field("workers.gpus", int, 1, "GPUs per worker pod (tensor parallel size on one node).", minimum=1, maximum=64),
    Field("workers.nodeCount", int, 1, "Nodes one worker spans (>1 = multinode tensor parallel; needs Grove or LWS).", minimum=1, maximum=64),
    Field("modelCache.enabled", bool, True, "Mount a persistent Hugging Face cache into the workers."),
    Field("modelCache.size", str, "100Gi", "Size of the model cache PersistentVolumeClaim.", pattern=_QUANTITY, pattern_doc="a Kubernetes quantity like 100Gi"),
    Field("modelCache.storageClass", str, "", "StorageClass of the cache claim; empty uses the cluster default."),
    Field("modelCache.accessMode", str, "ReadWriteOnce", "Access mode of the cache claim (ReadWriteMany when workers run on several nodes).",
          choices=("ReadWriteOnce", "ReadWriteMany")),
    Field("modelCache.hostPath", str, "", "Use this node directory instead of a claim (must be absolute)."),
    Field("modelCache.mountPath", str, "/root/.cache/huggingface", "Where the cache is mounted in the workers (HF_HOME).", pattern=r"^/", pattern_doc="an absolute path"),
    Field("hfToken", str, "", "Hugging Face token, set with `pulumi config set --secret hfToken ...`; stored in a Secret the graph references."),
    Field("hfTokenSecretName", str, "hf-token-secret", "Existing Secret (key HF_TOKEN) to use when hfToken is not set.", pattern=_DNS_LABEL, pattern_doc=_DNS_LABEL_DOC),
    Field("discovery", str, "kubernetes", "Discovery backend for every component of the graph (no mixed modes).", choices=("kubernetes", "etcd")),
    Field("nats.enabled", bool, False, "Install NATS (Helm) and use it for the event and request planes."),
    Field("nats.chartVersion", str, "2.14.2", "Version of the nats-io `nats` chart.", pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
          pattern_doc="a chart version like 2.14.2"),
    Field("nats.replicas", int, 1, "NATS servers; more than one forms a JetStream cluster (use 3).", minimum=1, maximum=5),
    Field("nats.storageSize", str, "10Gi", "JetStream file-store claim per NATS server.", pattern=_QUANTITY, pattern_doc="a Kubernetes quantity like 10Gi"),
    Field("nats.storageClass", str, "", "StorageClass of the JetStream claims; empty uses the cluster default."),
    Field("etcd.enabled", bool, False, "Install etcd (Helm) with authentication on."),
    Field("etcd.chartVersion", str, "12.0.18", "Version of the Bitnami `etcd` chart (oci://registry-1.docker.io/bitnamicharts/etcd).",
          pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", pattern_doc="a chart version like 12.0.18"),
    Field("etcd.imageTag", str, "3.5.18-debian-12-r5", "Tag of the bitnamilegacy/etcd image.", pattern=r"^\S+$", pattern_doc="an image tag"),
    Field("etcd.replicas", int, 1, "etcd members: 1, 3 or 5 (an odd number keeps a quorum).", minimum=1, maximum=5),
    Field("etcd.storageSize", str, "1Gi", "Data claim per etcd member.", pattern=_QUANTITY, pattern_doc="a Kubernetes quantity like 1Gi"),
    Field("etcd.storageClass", str, "", "StorageClass of the etcd data claims; empty uses the cluster default."),
    Field("etcd.endpoints", str, "", "Client URLs (comma-separated) of an existing etcd to use instead of installing one.",
          pattern=r"^https?://[^,\s]+(,https?://[^,\s]+)*$", pattern_doc="comma-separated http(s):// URLs"),
    Field("etcd.credentialsSecret", str, "", "Secret in the graph's namespace (keys username, password) for etcd.endpoints.",
          pattern=_DNS_LABEL, pattern_doc=_DNS_LABEL_DOC),
    Field("networkPolicy.apiServerCidrs", str, "", "Comma-separated CIDRs of the Kubernetes API server that graph pods may reach "
          "(Kubernetes discovery); empty allows ports 443/6443 to any address.",
          pattern=r"^[0-9A-Fa-f:.]+/[0-9]+(,[0-9A-Fa-f:.]+/[0-9]+)*$", pattern_doc="comma-separated CIDRs like 10.96.0.1/32"),
    Field("monitoring.enabled", bool, True, "Create PodMonitors, the Grafana dashboard and alert rules."),
    Field("monitoring.prometheusRelease", str, "kube-prometheus-stack", "Value of the `release` label kube-prometheus-stack selects monitors on."),
    Field("monitoring.namespace", str, "monitoring", "Namespace where Prometheus and Grafana run (for network policies and the dashboard).",
          pattern=_DNS_LABEL, pattern_doc=_DNS_LABEL_DOC),
    Field("monitoring.platformMonitors", bool, False,
          "True when Dynamo's platform chart PodMonitors scrape the graph (then none are rendered here); "
          "false expects them off: dynamo-operator.dynamo.metrics.podMonitors.enabled=false."),
    Field("monitoring.alerts.errorRatioPercent", int, 5, "Alert when more than this percent of frontend requests fail (5 minutes).",
          minimum=1, maximum=100),
    Field("monitoring.alerts.ttftP90Ms", int, 2000, "Time-to-first-token SLO: alert when p90 stays above it for 10 minutes.", minimum=1),
    Field("monitoring.alerts.queuedRequests", int, 10, "Alert when more requests than this wait for a worker for 5 minutes.", minimum=1),
    Field("monitoring.alerts.kvCacheHitDropPercent", int, 50,
          "Alert when the share of prompt tokens served from the KV cache drops by this percent against the previous 6 hours.",
          minimum=1, maximum=100),
)
FIELDS_BY_KEY = {f.key: f for f in FIELDS}
SECTIONS = sorted({f.key.split(".")[0] for f in FIELDS})


# ---------------------------------------------------------------- typed objects

@dataclass(frozen=True)
class GraphConfig:
    name: str
    ready_timeout_seconds: int


@dataclass(frozen=True)
class DynamoConfig:
    version: str
    image: str

    @property
    def api_version(self) -> str:
        return graph_api_version(self.version)


@dataclass(frozen=True)
class ServiceConfig:
    type: str
    node_port: int


@dataclass(frozen=True)
class FrontendConfig:
    replicas: int
    router_mode: str
    migration_limit: int
    service: ServiceConfig


@dataclass(frozen=True)
class WorkersConfig:
    replicas: int
    gpus: int
    node_count: int

    @property
    def tensor_parallel_size(self) -> int:
        return self.gpus * self.node_count

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.gpus * self.node_count


@dataclass(frozen=True)
class ModelCacheConfig:
    enabled: bool
    size: str
    storage_class: str
    access_mode: str
    host_path: str
    mount_path: str


@dataclass(frozen=True)
class NatsConfig:
    enabled: bool
    chart_version: str
    replicas: int
    storage_size: str
    storage_class: str


@dataclass(frozen=True)
class EtcdConfig:
    enabled: bool
    chart_version: str
    image_tag: str
    replicas: int
    storage_size: str
    storage_class: str
    endpoints: str
    """An existing etcd (instead of installing one); empty when etcd.enabled or unused."""
    credentials_secret: str


@dataclass(frozen=True)
class MonitoringAlertsConfig:
    """Alert thresholds; field names match components.monitoring.AlertThresholds."""
    error_ratio_percent: int
    ttft_p90_ms: int
    queued_requests: int
    kv_cache_hit_drop_percent: int


@dataclass(frozen=True)
class NetworkPolicyConfig:
    api_server_cidrs: tuple[str, ...]
    """Where the API server is; empty = anywhere."""


@dataclass(frozen=True)
class MonitoringConfig:
    enabled: bool
    prometheus_release: str
    namespace: str
    platform_monitors: bool
    alerts: MonitoringAlertsConfig


@dataclass(frozen=True)
class StackConfig:
    topology: str
    namespace: str
    graph: GraphConfig
    dynamo: DynamoConfig
    model_name: str
    frontend: FrontendConfig
    workers: WorkersConfig
    model_cache: ModelCacheConfig
    hf_token: Optional[pulumi.Output]
    """The token as a Pulumi secret, or None to use hf_token_secret_name."""
    hf_token_secret_name: str
    discovery: str
    nats: NatsConfig
    etcd: EtcdConfig
    network_policy: NetworkPolicyConfig
    monitoring: MonitoringConfig


# ---------------------------------------------------------------- parsing

def flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    """{'frontend': {'service': {'type': 'X'}}} -> {'frontend.service.type': 'X'}."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not (dotted in FIELDS_BY_KEY):
            if not value and dotted in SECTIONS:
                continue
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _allowed(field: Field) -> str:
    if field.choices:
        return "allowed values: " + ", ".join(map(str, field.choices))
    if field.kind is bool:
        return "allowed values: true, false"
    if field.kind is int:
        lo = "" if field.minimum is None else f"{field.minimum}"
        hi = "" if field.maximum is None else f"{field.maximum}"
        return f"allowed: an integer from {lo or '-inf'} to {hi or 'inf'}"
    if field.pattern_doc:
        return f"allowed: {field.pattern_doc}"
    return "allowed: a string"


def _check(field: Field, value: Any) -> Any:
    def fail(why: str) -> ConfigError:
        return ConfigError(f"{field.key}: {why}; {_allowed(field)}")

    if field.kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise fail(f"{value!r} is not a boolean")
    elif field.kind is int:
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"{value!r} is not an integer")
        if (field.minimum is not None and value < field.minimum) or (field.maximum is not None and value > field.maximum):
            raise fail(f"{value} is out of range")
    else:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise fail(f"{value!r} is not a string")
        if field.choices and value not in field.choices:
            raise fail(f"{value!r} is not allowed")
        if field.pattern and value != "" and not re.search(field.pattern, value):
            raise fail(f"{value!r} is malformed")
    return value


def parse(raw: dict[str, Any], hf_token: Optional[pulumi.Output] = None) -> StackConfig:
    """Validate raw (nested) config into a StackConfig, or raise one ConfigError.

    `raw` holds every key but the secret token; `hf_token` is the token as a secret Output.
    """
    flat = flatten(raw)
    unknown = sorted(k for k in flat if k not in FIELDS_BY_KEY or k in SECRET_KEYS)
    if unknown:
        key = unknown[0]
        section = key.split(".")[0]
        known = [f.key for f in FIELDS if f.key.split(".")[0] == section and f.key not in SECRET_KEYS]
        hint = ("known keys in this section: " + ", ".join(known)) if known else (
            "known sections: " + ", ".join(s for s in SECTIONS))
        raise ConfigError(f"{key}: unknown configuration key; {hint}")
    v = {f.key: (_check(f, flat[f.key]) if f.key in flat else f.default) for f in FIELDS}

    version = v["dynamo.version"]
    if release(version) < MIN_DYNAMO:
        raise ConfigError(f"dynamo.version: {version} is too old; allowed: a release from 0.8.0 on (default 1.6.1)")
    if v["modelCache.hostPath"] and not v["modelCache.hostPath"].startswith("/"):
        raise ConfigError(f"modelCache.hostPath: {v['modelCache.hostPath']!r} is not absolute; allowed: an absolute node path or empty")
    if v["discovery"] == "etcd" and not (v["etcd.enabled"] or v["etcd.endpoints"]):
        raise ConfigError("discovery: 'etcd' needs etcd; allowed: set etcd.enabled=true (or etcd.endpoints to an existing etcd), "
                          "or discovery=kubernetes")
    if v["etcd.endpoints"]:
        if v["etcd.enabled"]:
            raise ConfigError("etcd.endpoints: set together with etcd.enabled; allowed: an existing etcd's URLs with "
                              "etcd.enabled=false, or empty")
        if v["discovery"] != "etcd":
            raise ConfigError("etcd.endpoints: etcd is only used for discovery; allowed: set discovery=etcd too, or empty")
        if not v["etcd.credentialsSecret"]:
            raise ConfigError("etcd.credentialsSecret: required with etcd.endpoints (Dynamo authenticates to etcd); "
                              "allowed: the name of a Secret with keys username and password")
    if v["etcd.enabled"] and v["discovery"] != "etcd":
        # Dynamo uses etcd only for discovery: an etcd nobody reads is cost without use.
        raise ConfigError("etcd.enabled: etcd is only used for discovery; allowed: set discovery=etcd too, or etcd.enabled=false")
    if v["etcd.replicas"] % 2 == 0:
        raise ConfigError(f"etcd.replicas: {v['etcd.replicas']} is even (it survives no more failures than one member fewer); allowed values: 1, 3, 5")
    shared_claim = v["modelCache.enabled"] and not v["modelCache.hostPath"]
    if shared_claim and v["modelCache.accessMode"] != "ReadWriteMany" and (
            v["workers.nodeCount"] > 1 or v["topology"] == "multinode"):
        # A ReadWriteOnce claim attaches to one node: workers on any other node would stay Pending.
        raise ConfigError("modelCache.accessMode: workers on several nodes need a shared cache; "
                          "allowed values: ReadWriteMany (or set modelCache.hostPath, or modelCache.enabled=false)")

    image = v["dynamo.image"] or f"nvcr.io/nvidia/ai-dynamo/vllm-runtime:{version}"
    return StackConfig(
        topology=v["topology"],
        namespace=v["namespace"],
        graph=GraphConfig(v["graph.name"], v["graph.readyTimeoutSeconds"]),
        dynamo=DynamoConfig(version, image),
        model_name=v["model.name"],
        frontend=FrontendConfig(
            replicas=v["frontend.replicas"],
            router_mode=v["frontend.routerMode"],
            migration_limit=v["frontend.migrationLimit"],
            service=ServiceConfig(v["frontend.service.type"], v["frontend.service.nodePort"]),
        ),
        workers=WorkersConfig(v["workers.replicas"], v["workers.gpus"], v["workers.nodeCount"]),
        model_cache=ModelCacheConfig(
            enabled=v["modelCache.enabled"], size=v["modelCache.size"], storage_class=v["modelCache.storageClass"],
            access_mode=v["modelCache.accessMode"], host_path=v["modelCache.hostPath"], mount_path=v["modelCache.mountPath"],
        ),
        hf_token=hf_token,
        hf_token_secret_name=v["hfTokenSecretName"],
        discovery=v["discovery"],
        nats=NatsConfig(v["nats.enabled"], v["nats.chartVersion"], v["nats.replicas"], v["nats.storageSize"], v["nats.storageClass"]),
        etcd=EtcdConfig(v["etcd.enabled"], v["etcd.chartVersion"], v["etcd.imageTag"], v["etcd.replicas"],
                        v["etcd.storageSize"], v["etcd.storageClass"], v["etcd.endpoints"], v["etcd.credentialsSecret"]),
        network_policy=NetworkPolicyConfig(tuple(c for c in v["networkPolicy.apiServerCidrs"].split(",") if c)),
        monitoring=MonitoringConfig(v["monitoring.enabled"], v["monitoring.prometheusRelease"], v["monitoring.namespace"],
                                    platform_monitors=v["monitoring.platformMonitors"], alerts=MonitoringAlertsConfig(
                                        error_ratio_percent=v["monitoring.alerts.errorRatioPercent"],
                                        ttft_p90_ms=v["monitoring.alerts.ttftP90Ms"],
                                        queued_requests=v["monitoring.alerts.queuedRequests"],
                                        kv_cache_hit_drop_percent=v["monitoring.alerts.kvCacheHitDropPercent"])),
    )


def load() -> StackConfig:
    """Read this stack's Pulumi config (project defaults + stack file) and validate it."""
    cfg = pulumi.Config()
    raw: dict[str, Any] = {}
    for section in SECTIONS:
        if section in SECRET_KEYS:
            continue
        try:
            value = cfg.get_object(section)
        except Exception:  # a scalar where a section (object) is expected, e.g. `frontend: 3`
            value = cfg.get(section)
        if value is not None:
            raw[section] = value
    # Keys outside the declared sections are unknown keys: find them so they can be refused.
    for key in _all_project_keys():
        if key not in raw and key not in SECRET_KEYS:
            raw[key] = cfg.get(key)
    token: Optional[pulumi.Output] = None
    if cfg.get("hfToken"):
        if not _is_secret(f"{PROJECT}:hfToken"):
            raise ConfigError("hfToken: set in plain text; allowed: a secret (`pulumi config set --secret hfToken <token>`), "
                              "or hfTokenSecretName naming an existing Secret")
        token = cfg.require_secret("hfToken")
    return parse(raw, token)


def _all_project_keys() -> list[str]:
    """Every key of this project that the engine handed the program (set in-process or via PULUMI_CONFIG)."""
    from pulumi.runtime.config import CONFIG, get_config_env

    prefix = f"{PROJECT}:"
    keys = set(CONFIG.get()) | set(get_config_env())
    return sorted(k[len(prefix):] for k in keys if k.startswith(prefix))


def _is_secret(full_key: str) -> bool:
    from pulumi.runtime.config import get_config_secret_keys_env

    return pulumi.runtime.is_config_secret(full_key) or full_key in get_config_secret_keys_env()
