"""Prometheus for the twin: scrape jobs from the stack's PodMonitors, rules from its PrometheusRules.

prometheus-operator turns a PodMonitor into scrape targets for the pods its selector matches; the
twin does the same against its local processes, giving each one the labels the Dynamo operator
puts on the pod it stands in for, and the target labels prometheus-operator adds (job
`<namespace>/<monitor>`, namespace, pod, container, endpoint). So the stack's dashboard queries and
alert rules run unchanged against the twin.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from components.graph import LABEL_COMPONENT, LABEL_COMPONENT_TYPE, LABEL_GRAPH
from components.monitoring import FRONTEND_PORT_NAME, WORKER_PORT_NAME
from dynctl.twin_graph import TwinPlan
from dynctl.twin_servers import Server

# The twin lives for minutes: scrape and evaluate often so dashboards fill in seconds, whatever
# interval the PodMonitors ask of a long-running cluster Prometheus.
SCRAPE_INTERVAL = "2s"
LABEL_DYN_NAMESPACE = "nvidia.com/dynamo-namespace"
LABEL_APP_NAME = "app.kubernetes.io/name"


@dataclass(frozen=True)
class LocalPod:
    """A twin process seen as the pod it stands in for."""

    name: str
    namespace: str | None
    """None for etcd/NATS: their chart's namespace is not part of the graph."""
    labels: dict[str, str]
    ports: dict[str, str]
    """Container port name -> host:port serving it; "*" serves whatever port name a monitor asks for
    (etcd and NATS: their chart's port names are not part of the graph)."""


def pod_monitors(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o.get("kind") == "PodMonitor"]


def prometheus_rules(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o.get("kind") == "PrometheusRule"]


def dashboards(objects: list[dict]) -> list[dict]:
    """Grafana dashboards the stack ships (ConfigMaps labelled for Grafana's sidecar)."""
    out = []
    for o in objects:
        if o.get("kind") == "ConfigMap" and (o.get("metadata", {}).get("labels") or {}).get("grafana_dashboard"):
            out += [json.loads(text) for key, text in (o.get("data") or {}).items() if key.endswith(".json")]
    return out


def dashboard_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of a dashboard, rows' nested panels included."""
    out = []
    for panel in board.get("panels", []):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((panel.get("title", ""), target["expr"]))
        out += dashboard_queries({"panels": panel.get("panels", [])})
    return out


def _host_port(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def local_pods(plan: TwinPlan, servers: list[Server]) -> list[LocalPod]:
    by_name = {c.name: c for c in (plan.frontend, *plan.workers)}
    pods = []
    for s in servers:
        if s.role in ("frontend", "worker"):
            component = by_name[s.name.rsplit("-", 1)[0]]
            labels = {
                LABEL_COMPONENT: component.name, LABEL_COMPONENT_TYPE: component.type,
                LABEL_GRAPH: plan.graph, LABEL_DYN_NAMESPACE: f"{plan.namespace}-{plan.graph}",
                "nvidia.com/metrics-enabled": "true",
            }
            port = FRONTEND_PORT_NAME if s.role == "frontend" else WORKER_PORT_NAME
            pods.append(LocalPod(s.name, plan.namespace, labels, {port: _host_port(s.endpoint)}))
        elif s.role == "etcd":
            # etcd serves /metrics on its client port.
            pods.append(LocalPod(s.name, None, {LABEL_APP_NAME: "etcd"}, {"*": _host_port(s.endpoint)}))
        elif s.name == "nats-exporter":
            # nats-server itself has no /metrics; its exporter stands in for the chart's sidecar.
            pods.append(LocalPod("nats", None, {LABEL_APP_NAME: "nats"}, {"*": _host_port(s.endpoint)}))
    return pods


def _matches(selector: dict, pod: LocalPod) -> bool:
    labels = pod.labels
    if pod.namespace is None:
        # etcd/NATS: only the app name is meaningful locally; chart instance labels cannot match.
        want = (selector.get("matchLabels") or {}).get(LABEL_APP_NAME)
        return want is not None and labels.get(LABEL_APP_NAME) == want
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op, False)
        if not ok:
            return False
    return True


def _in_namespace(monitor: dict, pod: LocalPod) -> bool:
    if pod.namespace is None:
        return True
    sel = monitor["spec"].get("namespaceSelector") or {}
    if sel.get("any"):
        return True
    names = sel.get("matchNames") or [monitor["metadata"].get("namespace")]
    return pod.namespace in names


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _relabel(rules: list[dict] | None) -> list[dict]:
    """prometheus-operator's camelCase relabel configs as Prometheus's snake_case."""
    out = []
    for rule in rules or []:
        converted = {_CAMEL.sub("_", k).lower(): v for k, v in rule.items()}
        if "action" in converted:
            converted["action"] = converted["action"].lower()
        out.append(converted)
    return out


def scrape_configs(objects: list[dict], pods: list[LocalPod]) -> tuple[list[dict], list[str]]:
    """(Prometheus scrape_configs, notes about monitors the twin cannot scrape)."""
    jobs, notes = [], []
    for monitor in pod_monitors(objects):
        meta = monitor["metadata"]
        job = f"{meta.get('namespace')}/{meta['name']}"
        selected = [p for p in pods if _in_namespace(monitor, p) and _matches(monitor["spec"].get("selector") or {}, p)]
        for i, endpoint in enumerate(monitor["spec"].get("podMetricsEndpoints") or []):
            port = endpoint.get("port")
            statics = [
                {"targets": [pod.ports.get(port) or pod.ports["*"]],
                 "labels": {"job": job, "namespace": pod.namespace or meta.get("namespace", ""), "pod": pod.name,
                            "container": "main", "endpoint": port}}
                for pod in selected if port in pod.ports or "*" in pod.ports
            ]
            if not statics:
                notes.append(f"PodMonitor {job} port {port!r}: no local process serves it (not scraped)")
                continue
            config = {
                "job_name": f"podMonitor/{job}/{i}",
                "scrape_interval": SCRAPE_INTERVAL,
                "metrics_path": endpoint.get("path", "/metrics"),
                "scheme": endpoint.get("scheme", "http"),
                "static_configs": statics,
            }
            if endpoint.get("relabelings"):
                config["relabel_configs"] = _relabel(endpoint["relabelings"])
            if endpoint.get("metricRelabelings"):
                config["metric_relabel_configs"] = _relabel(endpoint["metricRelabelings"])
            jobs.append(config)
    return jobs, notes


def selects_nats(objects: list[dict]) -> bool:
    return any((m["spec"].get("selector") or {}).get("matchLabels", {}).get(LABEL_APP_NAME) == "nats"
               for m in pod_monitors(objects))


def write_config(run_dir: Path, objects: list[dict], plan: TwinPlan, servers: list[Server]) -> tuple[Path, list[str]]:
    """Write prometheus.yml and the rule files; returns (config path, notes)."""
    jobs, notes = scrape_configs(objects, local_pods(plan, servers))
    rules_dir = run_dir / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    for rule in prometheus_rules(objects):
        meta = rule["metadata"]
        # JSON is YAML: no YAML library needed in the twin.
        (rules_dir / f"{meta.get('namespace')}-{meta['name']}.yml").write_text(json.dumps({"groups": rule["spec"]["groups"]}, indent=1))
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules_dir / "*.yml")],
        "scrape_configs": jobs,
    }
    path = run_dir / "prometheus.yml"
    path.write_text(json.dumps(config, indent=1))
    return path, notes
