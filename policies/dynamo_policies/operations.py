"""Advisory checks on running the graph well; they warn and never block a deployment.

- KV-aware routing with many frontends: each frontend keeps its own view of the workers' KV
  caches, and with more than a handful of replicas those views go stale (the lab's known issue).
- A graph nobody scrapes: without a PodMonitor, the dashboards and alerts see nothing.
- A hostPath model cache outside the directories meant for it can expose or fill host paths.
- Workers without request migration: a worker dying mid-request fails the request
  (measured: 5-6 of 100 requests failed when one of two workers was killed, 0 with migration).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from . import settings as cfg
from .shapes import (
    all_volumes,
    as_list,
    as_map,
    describe,
    dig,
    graph_components,
    graph_name,
    image_version,
    is_graph,
    kubernetes_kind,
    to_count,
)

GRAPH_NAME_LABEL = "nvidia.com/dynamo-graph-deployment-name"


def _router_mode(component) -> str:
    return (component.env_value("DYN_ROUTER_MODE") or component.flag("--router-mode") or "").lower()


def kv_routing_frontend_replicas(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_graph(args.resource_type):
        return
    limit = cfg.settings(args, "kv-routing-frontend-replicas")["maxKvFrontendReplicas"]
    for c in graph_components(args.resource_type, args.props):
        if c.is_frontend and _router_mode(c) == "kv" and c.replicas > limit:
            report(f"{describe(args.resource_type, args.props, args.name)} component {c.name} runs "
                   f"{c.replicas} frontend replicas with KV routing; above {limit} each frontend's "
                   "view of the KV caches goes stale and routing degrades. Use at most "
                   f"{limit} frontends (frontend.replicas) or round-robin routing.", None)


def _selects_graph(monitor: Mapping, graph: str, namespace: str | None) -> bool:
    spec = as_map(monitor.get("spec"))
    ns_selector = as_map(spec.get("namespaceSelector"))
    monitor_ns = dig(monitor, "metadata", "namespace")
    if namespace and not ns_selector.get("any"):
        names = list(as_list(ns_selector.get("matchNames")))
        if names and namespace not in names:
            return False
        if not names and monitor_ns and monitor_ns != namespace:
            return False
    selector = as_map(spec.get("selector"))
    labels = as_map(selector.get("matchLabels"))
    wanted = labels.get(GRAPH_NAME_LABEL)
    if wanted is not None and wanted != graph:
        return False
    keys = list(labels) + [as_map(e).get("key", "") for e in as_list(selector.get("matchExpressions"))]
    # A monitor for something else (NATS, etcd) does not count: it must select Dynamo pods.
    return any(str(k).startswith("nvidia.com/dynamo") for k in keys)


def graph_has_podmonitor(args: StackValidationArgs, report: ReportViolation) -> None:
    # The platform chart's own PodMonitors (monitoring.platformMonitors) scrape every graph.
    if cfg.settings(args, "graph-has-podmonitor")["providedOutsideStack"]:
        return
    monitors = [r.props for r in args.resources
                if kubernetes_kind(r.resource_type) == ("monitoring.coreos.com", "PodMonitor")]
    for r in args.resources:
        if not is_graph(r.resource_type):
            continue
        name = graph_name(r.props, r.name)
        namespace = dig(r.props, "metadata", "namespace")
        if not any(_selects_graph(m, name, namespace) for m in monitors):
            report(f"{describe(r.resource_type, r.props, r.name)} has no PodMonitor selecting its "
                   "pods, so Prometheus scrapes nothing from it. Enable monitoring "
                   "(monitoring.enabled) or add a PodMonitor selecting "
                   f"{GRAPH_NAME_LABEL}={name}.", r.urn)


def _host_paths(resource_type: str, props: Mapping) -> list[str]:
    if kubernetes_kind(resource_type) == ("core", "PersistentVolume"):
        path = dig(props, "spec", "hostPath", "path")
        return [str(path)] if path else []
    return [str(dig(v, "hostPath", "path")) for v in all_volumes(resource_type, props)
            if dig(v, "hostPath", "path")]


def _inside(path: str, prefix: str) -> bool:
    path = posixpath.normpath(path)
    prefix = posixpath.normpath(prefix)
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def model_cache_hostpath_prefix(args: ResourceValidationArgs, report: ReportViolation) -> None:
    allowed = list(cfg.settings(args, "model-cache-hostpath-prefix")["allowedPrefixes"])
    for path in _host_paths(args.resource_type, args.props):
        if not any(_inside(path, p) for p in allowed):
            report(f"{describe(args.resource_type, args.props, args.name)} mounts host path "
                   f"{path}, outside the model cache directories ({', '.join(allowed)}). Use a "
                   "path under one of them (modelCache.hostPath) or a PVC, or add the directory "
                   "to allowedPrefixes.", None)


def _positive(value) -> bool:
    count = to_count(value)
    return bool(count and count > 0)


def _graph_release(components) -> tuple[int, int, int] | None:
    for c in components:
        for container in c.containers[:1]:
            version = image_version(str(container.get("image") or ""))
            if version:
                return version
    return None


def workers_request_migration(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_graph(args.resource_type):
        return
    components = graph_components(args.resource_type, args.props)
    workers = [c for c in components if c.is_worker]
    if not workers:
        return
    frontend_on = any(_positive(c.env_value("DYN_MIGRATION_LIMIT")) or
                      _positive(c.flag("--migration-limit"))
                      for c in components if c.is_frontend)
    worker_on = all(_positive(c.flag("--migration-limit")) or
                    _positive(c.env_value("DYN_MIGRATION_LIMIT")) for c in workers)
    release = _graph_release(components)
    # Migration moved from a worker flag to a frontend setting in Dynamo 1.0.
    if release is None:
        enabled = frontend_on or worker_on
    elif release >= (1, 0, 0):
        enabled = frontend_on
    else:
        enabled = worker_on
    if enabled:
        return
    where = ("on the Frontend (env DYN_MIGRATION_LIMIT or --migration-limit, Dynamo >= 1.0)"
             if release is None or release >= (1, 0, 0)
             else "on every worker (--migration-limit, Dynamo < 1.0)")
    names = ", ".join(c.name for c in workers)
    report(f"{describe(args.resource_type, args.props, args.name)}: workers {names} run without "
           "request migration, so a worker dying mid-request fails its requests. Set a migration "
           f"limit of at least 1 {where}; config frontend.migrationLimit.", None)


POLICIES = [
    ResourceValidationPolicy(
        name="kv-routing-frontend-replicas",
        description="At most a few frontend replicas when KV-aware routing is on.",
        validate=kv_routing_frontend_replicas,
        enforcement_level=EnforcementLevel.ADVISORY,
        config_schema=cfg.schema("kv-routing-frontend-replicas"),
    ),
    StackValidationPolicy(
        name="graph-has-podmonitor",
        description="Every graph has a PodMonitor selecting its pods.",
        validate=graph_has_podmonitor,
        enforcement_level=EnforcementLevel.ADVISORY,
        config_schema=cfg.schema("graph-has-podmonitor"),
    ),
    ResourceValidationPolicy(
        name="model-cache-hostpath-prefix",
        description="hostPath volumes (model caches) stay under the allowed host directories.",
        validate=model_cache_hostpath_prefix,
        enforcement_level=EnforcementLevel.ADVISORY,
        config_schema=cfg.schema("model-cache-hostpath-prefix"),
    ),
    ResourceValidationPolicy(
        name="workers-request-migration",
        description="Requests migrate to another worker when one dies (migration limit >= 1).",
        validate=workers_request_migration,
        enforcement_level=EnforcementLevel.ADVISORY,
    ),
]
