"""Monitoring for one Dynamo graph: PodMonitors, a Grafana dashboard and alert rules.

Everything here targets kube-prometheus-stack (prometheus-operator + Grafana's dashboard sidecar):
- PodMonitors (`monitoring.coreos.com/v1`) for the frontend (port `http`) and the workers (port
  `system`), selected by the labels the Dynamo operator puts on the graph's pods, plus NATS and
  etcd when the stack installs them. Each carries `release: <prometheusRelease>`, the label
  kube-prometheus-stack selects monitors and rules on.
- A dashboard ConfigMap labelled `grafana_dashboard: "1"`, from components/dashboards/dynamo.json.
- A PrometheusRule with the alerts an on-call engineer needs; thresholds come from stack config.

Queries find this graph's series by the `job` label prometheus-operator gives every target of a
PodMonitor: `<monitor namespace>/<monitor name>` (see `job_label`). No Grafana-only syntax is used
except `$__rate_interval` (substitute e.g. `1m` to run a dashboard query on a plain Prometheus)
and the `datasource` template variable (only in panel datasources, never in a query).

Dynamo's platform chart can create its own PodMonitors (dynamo-frontend, dynamo-worker: every
graph in the cluster) whenever the prometheus-operator CRDs exist. To avoid scraping every pod
twice, install it with `dynamo-operator.dynamo.metrics.podMonitors.enabled=false` (recent charts;
older ones have no switch, but their monitors carry no `release` label, and kube-prometheus-stack's
default selector ignores monitors without it; the chart only adds one when
`dynamo-operator.dynamo.metrics.podMonitors.labels.release` is set), or keep them and set
`platform_monitors`: this component then renders no frontend/worker monitors and its queries
select the platform monitors' series instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.graph import LABEL_COMPONENT_TYPE, LABEL_GRAPH, object_labels, type_selector

DASHBOARD_FILE = Path(__file__).parent / "dashboards" / "dynamo.json"
MONITORING_API = "monitoring.coreos.com/v1"
FRONTEND_PORT_NAME = "http"
WORKER_PORT_NAME = "system"
# Container port names the charts give their metrics endpoints: the nats chart's prom-exporter
# sidecar (port 7777) and Bitnami etcd with metrics.useSeparateEndpoint.
NATS_PORT_NAME = "prom-metrics"
ETCD_PORT_NAME = "metrics"
# Job names of the platform chart's monitors (prometheus-operator job label `<namespace>/<name>`).
PLATFORM_MONITOR_NAMES = {"frontend": "dynamo-frontend", "worker": "dynamo-worker"}
SCRAPE_INTERVAL = "15s"
# Grafana refuses dashboard uids longer than 40 characters.
GRAFANA_UID_MAX = 40
# Below this share of prompt tokens served from cache there is no cache effect to lose.
KV_BASELINE_MIN = 0.1


class ScrapeTarget(TypedDict):
    """A service installed next to the graph whose pods Prometheus scrapes (NATS or etcd)."""

    namespace: str
    """Namespace of its pods."""
    pod_labels: dict[str, str]
    """Labels that select its server pods (the chart's selector labels)."""


class AlertThresholds(TypedDict, total=False):
    """When alerts fire; every field has a default."""

    error_ratio_percent: int
    """Frontend requests failing, percent over 5 minutes (default 5)."""
    ttft_p90_ms: int
    """Time-to-first-token SLO: p90 above this for 10 minutes alerts (default 2000)."""
    queued_requests: int
    """Requests waiting (frontend queue + engine queues) for 5 minutes (default 10)."""
    kv_cache_hit_drop_percent: int
    """Share of prompt tokens served from the KV cache falling by this percent against the previous 6 hours (default 50)."""


DEFAULT_THRESHOLDS: AlertThresholds = {
    "error_ratio_percent": 5,
    "ttft_p90_ms": 2000,
    "queued_requests": 10,
    "kv_cache_hit_drop_percent": 50,
}


class MonitoringArgs(TypedDict):
    """What the monitoring component needs."""

    namespace: str
    """Namespace of the graph; the PodMonitors and the PrometheusRule go there."""
    graph_name: str
    """Name of the DynamoGraphDeployment (the operator's pod label value)."""
    prometheus_release: str
    """Value of the `release` label kube-prometheus-stack selects monitors and rules on."""
    dashboard_namespace: NotRequired[str]
    """Where the dashboard ConfigMap goes (Grafana's namespace); default: the graph's."""
    platform_monitors: NotRequired[bool]
    """True when Dynamo's platform chart monitors scrape the graph: render no frontend/worker monitors."""
    thresholds: NotRequired[AlertThresholds]
    """Alert thresholds; missing fields take DEFAULT_THRESHOLDS."""
    nats: NotRequired[Optional[ScrapeTarget]]
    """NATS pods to scrape (exporter sidecar), or None when the stack runs no NATS."""
    etcd: NotRequired[Optional[ScrapeTarget]]
    """etcd pods to scrape, or None when the stack runs no etcd."""


def coordination_targets(namespace: str, peers: list[dict]) -> dict[str, ScrapeTarget]:
    """MonitoringArgs' `nats`/`etcd` from the Coordination component's peers (its pods run in `namespace`)."""
    return {p["name"]: ScrapeTarget(namespace=namespace, pod_labels=dict(p["pod_labels"]))
            for p in peers if p["name"] in ("nats", "etcd")}


# ---------------------------------------------------------------- naming and selection

def monitor_name(args: MonitoringArgs, target: str) -> str:
    return f"{args['graph_name']}-{target}"


def job_label(pod_monitor: dict) -> str:
    """The `job` label prometheus-operator gives every series a PodMonitor scrapes (no jobLabel set)."""
    meta = pod_monitor["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def targets(args: MonitoringArgs) -> list[str]:
    """What this graph's Prometheus scrapes: frontend and worker always, NATS/etcd when installed."""
    return ["frontend", "worker"] + [t for t in ("nats", "etcd") if args.get(t)]


def selectors(args: MonitoringArgs) -> dict[str, str]:
    """PromQL label matchers (without braces) that select each target's series of this graph."""
    ns = args["namespace"]
    out = {t: f'job="{ns}/{monitor_name(args, t)}"' for t in targets(args)}
    if args.get("platform_monitors"):
        # The platform's monitors live in the platform's namespace and scrape every graph; the
        # pods' namespace is the best boundary they leave us.
        for target, name in PLATFORM_MONITOR_NAMES.items():
            out[target] = f'namespace="{ns}",job=~".+/{name}"'
    return out


def _metadata(args: MonitoringArgs, name: str, namespace: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {"release": args["prometheus_release"], **object_labels(args["graph_name"])},
    }


# ---------------------------------------------------------------- PodMonitors

def pod_monitors(args: MonitoringArgs) -> list[dict]:
    """The PodMonitor objects for this graph."""
    ns, graph = args["namespace"], args["graph_name"]
    wanted: list[tuple[str, str, dict[str, str], str]] = []  # target, namespace, pod labels, port
    if not args.get("platform_monitors"):
        wanted.append(("frontend", ns, type_selector(graph, "frontend"), FRONTEND_PORT_NAME))
        wanted.append(("worker", ns, type_selector(graph, "worker"), WORKER_PORT_NAME))
    for target, port in (("nats", NATS_PORT_NAME), ("etcd", ETCD_PORT_NAME)):
        if svc := args.get(target):
            wanted.append((target, svc["namespace"], dict(svc["pod_labels"]), port))

    monitors = []
    for target, pod_namespace, labels, port in wanted:
        endpoint: dict[str, Any] = {"port": port, "path": "/metrics", "interval": SCRAPE_INTERVAL}
        if target == "frontend":
            # dynamo_frontend_requests_total carries its own `endpoint` label (chat_completions, ...);
            # without this Prometheus would rename it exported_endpoint and overwrite it with the port name.
            endpoint["honorLabels"] = True
        monitors.append({
            "apiVersion": MONITORING_API,
            "kind": "PodMonitor",
            "metadata": _metadata(args, monitor_name(args, target), ns),
            "spec": {
                "selector": {"matchLabels": labels},
                "namespaceSelector": {"matchNames": [pod_namespace]},
                "podMetricsEndpoints": [endpoint],
            },
        })
    return monitors


# ---------------------------------------------------------------- dashboard

def dashboard_uid(args: MonitoringArgs) -> str:
    uid = re.sub(r"[^a-zA-Z0-9-]", "-", f"dynamo-{args['namespace']}-{args['graph_name']}")
    if len(uid) > GRAFANA_UID_MAX:
        digest = hashlib.sha256(uid.encode()).hexdigest()[:8]
        uid = f"{uid[:GRAFANA_UID_MAX - 9]}-{digest}"
    return uid


def dashboard_title(args: MonitoringArgs) -> str:
    return f"Dynamo / {args['namespace']} / {args['graph_name']}"


def dashboard(args: MonitoringArgs) -> dict:
    """The dashboard for this graph: the data file with its selectors filled in.

    Panels marked `"dynamoRequires": "nats"|"etcd"` (rows included) are kept only when the stack
    scrapes that service; `@frontend@`-style placeholders become this graph's label matchers.
    """
    board = json.loads(DASHBOARD_FILE.read_text())
    enabled = set(targets(args))
    sel = selectors(args)
    panels = []
    for panel in board["panels"]:
        needs = panel.pop("dynamoRequires", None)
        if needs is not None and needs not in enabled:
            continue
        for tgt in panel.get("targets", []):
            tgt["expr"] = fill(tgt["expr"], sel)
        panels.append(panel)
    board["panels"] = panels
    board["uid"] = dashboard_uid(args)
    board["title"] = dashboard_title(args)
    return board


def fill(expr: str, sel: dict[str, str]) -> str:
    """Replace @target@ placeholders with label matchers; refuse a placeholder with no target."""
    def one(match: re.Match) -> str:
        target = match.group(1)
        if target not in sel:
            raise ValueError(f"dashboard query uses @{target}@ but the stack does not scrape {target}; "
                             f"allowed: {', '.join('@' + t + '@' for t in sel)}")
        return sel[target]
    return re.sub(r"@([a-z]+)@", one, expr)


def dashboard_config_map(args: MonitoringArgs) -> dict:
    namespace = args.get("dashboard_namespace") or args["namespace"]
    uid = dashboard_uid(args)
    meta = _metadata(args, uid, namespace)
    meta["labels"]["grafana_dashboard"] = "1"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {f"{uid}.json": json.dumps(dashboard(args), indent=1, sort_keys=True)},
    }


# ---------------------------------------------------------------- alerts

def _alert(name: str, expr: str, for_: str, severity: str, summary: str, runbook: str, graph: str) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, "dynamo_graph": graph},
        "annotations": {"summary": summary, "runbook": runbook},
    }


def alert_rules(args: MonitoringArgs) -> list[dict]:
    """Prometheus rule groups (the PrometheusRule spec.groups / a promtool rule file's groups)."""
    t = {**DEFAULT_THRESHOLDS, **args.get("thresholds", {})}
    s = selectors(args)
    ns, graph = args["namespace"], args["graph_name"]
    where = f"{ns}/{graph}"
    pods = f"kubectl -n {ns} get pods -l {LABEL_GRAPH}={graph}"
    logs = f"kubectl -n {ns} logs -l {LABEL_GRAPH}={graph},{LABEL_COMPONENT_TYPE}"
    f, w = s["frontend"], s["worker"]
    ratio = t["error_ratio_percent"] / 100
    slo = t["ttft_p90_ms"] / 1000
    keep = 1 - t["kv_cache_hit_drop_percent"] / 100

    def hit_ratio(window: str, offset: str = "") -> str:
        """Share of prompt tokens served from cache over `window`, `offset` ago."""
        shift = f" offset {offset}" if offset else ""
        return (f"sum(rate(dynamo_frontend_cached_tokens_sum{{{f}}}[{window}]{shift}))"
                f" / sum(rate(dynamo_frontend_input_sequence_tokens_sum{{{f}}}[{window}]{shift}))")

    rules = [
        _alert("DynamoFrontendDown", f"up{{{f}}} == 0 or absent(up{{{f}}})", "5m", "critical",
               f"Dynamo frontend of {where} is down or not scraped: no request metrics, no dashboard data.",
               f"{pods}; if the pods run, check the frontend PodMonitor carries release="
               f"{args['prometheus_release']} and its port http answers /metrics.", where),
        _alert("DynamoModelNotServed",
               f"max by (model) (dynamo_frontend_model_ready{{{f}}}) < 1 or absent(dynamo_frontend_model_ready{{{f}}})",
               "10m", "critical",
               f"No worker of {where} serves model {{{{ $labels.model }}}}: requests fail with 503.",
               f"{pods}; {logs}=worker (model download, GPU, OOM); GET /v1/models on the frontend lists served models.",
               where),
        _alert("DynamoWorkerDown", f"up{{{w}}} == 0", "5m", "warning",
               f"Dynamo worker {{{{ $labels.pod }}}} of {where} does not answer /metrics on its system port.",
               f"{pods}; kubectl -n {ns} describe pod {{{{ $labels.pod }}}}; {logs}=worker.", where),
        _alert("DynamoHighErrorRatio",
               f'sum(rate(dynamo_frontend_requests_total{{{f},status="error"}}[5m]))'
               f" / sum(rate(dynamo_frontend_requests_total{{{f}}}[5m])) > {ratio:g}",
               "5m", "critical",
               f"{{{{ $value | humanizePercentage }}}} of requests to {where} fail (threshold {t['error_ratio_percent']}%).",
               f"Break down by error_type on the dashboard's Errors panel; {logs}=frontend; errors inside 200 "
               "streams count too. Worker deaths: set frontend.migrationLimit > 0.", where),
        _alert("DynamoTTFTAboveSLO",
               f"histogram_quantile(0.9, sum by (le) (rate(dynamo_frontend_time_to_first_token_seconds_bucket{{{f}}}[5m])))"
               f" > {slo:g}",
               "10m", "warning",
               f"p90 time to first token of {where} is {{{{ $value | humanizeDuration }}}} (SLO {slo:g}s).",
               "Check queued requests and worker KV cache usage on the dashboard; add workers (workers.replicas) "
               "or use frontend.routerMode=kv for prefix reuse.", where),
        _alert("DynamoRequestsQueueing",
               f"(sum(dynamo_frontend_queued_requests{{{f}}}) or vector(0))"
               f" + (sum(vllm:num_requests_waiting{{{w}}}) or vector(0)) > {t['queued_requests']}",
               "5m", "warning",
               f"{{{{ $value }}}} requests of {where} are waiting for a worker (threshold {t['queued_requests']}).",
               "Workers are saturated: compare in-flight per worker on the dashboard; add workers (workers.replicas) "
               "or check for a stuck worker.", where),
        _alert("DynamoKVCacheHitRateCollapse",
               f"({hit_ratio('30m')}) < {keep:g} * ({hit_ratio('6h', '30m')})"
               f" and ({hit_ratio('6h', '30m')}) > {KV_BASELINE_MIN:g}",
               "30m", "warning",
               f"Share of prompt tokens of {where} served from the KV cache fell to {{{{ $value | humanizePercentage }}}}, "
               f"under {100 - t['kv_cache_hit_drop_percent']}% of the previous 6 hours.",
               "Check the frontend still routes with kv (DYN_ROUTER_MODE), workers publish KV events "
               "(--kv-events-config), workers were not restarted (cold caches) and traffic did not change shape.", where),
    ]
    if "nats" in s:
        n = s["nats"]
        rules.append(_alert("DynamoNATSDown", f"up{{{n}}} == 0 or absent(up{{{n}}})", "5m", "critical",
                            f"NATS of {where} is down or its exporter is not scraped: KV events / requests over NATS stop.",
                            f"kubectl -n {args['nats']['namespace']} get pods -l app.kubernetes.io/name=nats; "
                            "check the prom-exporter sidecar and the nats container logs.", where))
    if "etcd" in s:
        e = s["etcd"]
        etcd_ns = args["etcd"]["namespace"]
        rules.append(_alert("DynamoEtcdDown", f"up{{{e}}} == 0 or absent(up{{{e}}})", "5m", "critical",
                            f"etcd of {where} is down or not scraped: discovery and leases stop.",
                            f"kubectl -n {etcd_ns} get pods -l app.kubernetes.io/name=etcd; check member logs and PVC.",
                            where))
        rules.append(_alert("DynamoEtcdNoLeader", f"max(etcd_server_has_leader{{{e}}}) < 1", "2m", "critical",
                            f"etcd of {where} has no leader: writes (registrations, leases) fail.",
                            f"kubectl -n {etcd_ns} logs -l app.kubernetes.io/name=etcd; restore quorum "
                            "(a majority of members must run).", where))
    return [{"name": f"dynamo-{graph}", "rules": rules}]


def prometheus_rule(args: MonitoringArgs) -> dict:
    return {
        "apiVersion": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": _metadata(args, f"{args['graph_name']}-alerts", args["namespace"]),
        "spec": {"groups": alert_rules(args)},
    }


# ---------------------------------------------------------------- component

class Monitoring(pulumi.ComponentResource):
    """PodMonitors, dashboard and alert rules for one graph, for kube-prometheus-stack."""

    dashboard_uid: str
    """Grafana uid: open <grafana>/d/<uid>."""
    dashboard_title: str
    """Dashboard title as Grafana lists it."""
    dashboard_config_map: str
    """namespace/name of the ConfigMap the Grafana sidecar loads."""
    alert_names: list[str]
    """Names of the alerts in the PrometheusRule."""
    pod_monitors: list[str]
    """namespace/name of every PodMonitor rendered."""

    def __init__(self, name: str, args: MonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("dynamo:monitoring:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        monitors = pod_monitors(args)
        for monitor in monitors:
            k8s.apiextensions.CustomResource(
                f"{name}-{monitor['metadata']['name']}",
                api_version=monitor["apiVersion"], kind=monitor["kind"],
                metadata=monitor["metadata"], spec=monitor["spec"], opts=child)

        rule = prometheus_rule(args)
        k8s.apiextensions.CustomResource(
            f"{name}-alerts", api_version=rule["apiVersion"], kind=rule["kind"],
            metadata=rule["metadata"], spec=rule["spec"], opts=child)

        board = dashboard_config_map(args)
        k8s.core.v1.ConfigMap(f"{name}-dashboard", metadata=board["metadata"], data=board["data"], opts=child)

        self.dashboard_uid = dashboard_uid(args)
        self.dashboard_title = dashboard_title(args)
        self.dashboard_config_map = f"{board['metadata']['namespace']}/{board['metadata']['name']}"
        self.alert_names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
        self.pod_monitors = [job_label(m) for m in monitors]
        self.register_outputs({
            "dashboard_uid": self.dashboard_uid,
            "dashboard_title": self.dashboard_title,
            "dashboard_config_map": self.dashboard_config_map,
            "alert_names": self.alert_names,
            "pod_monitors": self.pod_monitors,
        })
