"""Wiring shared by every topology: config in, components out, stack outputs back."""

from __future__ import annotations

import dataclasses
import json

import pulumi

from components.coordination import Coordination
from components.disruption_budget import GraphDisruptionBudgets
from components.frontend_service import FrontendService
from components.graph import DynamoGraph
from components.model_cache import ModelCache
from components.monitoring import Monitoring, coordination_targets
from components.network_policy import GraphNetworkPolicies
from stacks.config import StackConfig


def deploy(cfg: StackConfig, *, spread_across_nodes: bool, disruption_budgets: bool) -> dict:
    graph_name = cfg.graph.name
    cache = None
    if cfg.model_cache.enabled:
        cache = ModelCache(f"{graph_name}-model-cache", {
            "namespace": cfg.namespace,
            "claim_name": f"{graph_name}-model-cache",
            "size": cfg.model_cache.size,
            "storage_class": cfg.model_cache.storage_class,
            "access_mode": cfg.model_cache.access_mode,
            "host_path": cfg.model_cache.host_path,
        })

    coordination = Coordination(f"{graph_name}-coordination", {
        "namespace": cfg.namespace,
        "graph_name": graph_name,
        "dynamo_version": cfg.dynamo.version,
        "discovery": cfg.discovery,
        "nats": {"chart_version": cfg.nats.chart_version, "replicas": cfg.nats.replicas,
                 "storage_size": cfg.nats.storage_size, "storage_class": cfg.nats.storage_class} if cfg.nats.enabled else None,
        "etcd": {"chart_version": cfg.etcd.chart_version, "image_tag": cfg.etcd.image_tag, "replicas": cfg.etcd.replicas,
                 "storage_size": cfg.etcd.storage_size, "storage_class": cfg.etcd.storage_class} if cfg.etcd.enabled else None,
        "external_etcd": {"endpoints": cfg.etcd.endpoints,
                          "credentials_secret": cfg.etcd.credentials_secret} if cfg.etcd.endpoints else None,
    })

    # The graph waits for NATS/etcd to be ready, so a first `pulumi up` converges in one run.
    graph = DynamoGraph(graph_name, {
        "namespace": cfg.namespace,
        "name": graph_name,
        "dynamo_version": cfg.dynamo.version,
        "image": cfg.dynamo.image,
        "model": cfg.model_name,
        "frontend_replicas": cfg.frontend.replicas,
        "router_mode": cfg.frontend.router_mode,
        "migration_limit": cfg.frontend.migration_limit,
        "worker_replicas": cfg.workers.replicas,
        "worker_gpus": cfg.workers.gpus,
        "worker_node_count": cfg.workers.node_count,
        "hf_token": cfg.hf_token,
        "hf_token_secret_name": cfg.hf_token_secret_name,
        "discovery": cfg.discovery,
        "ready_timeout_seconds": cfg.graph.ready_timeout_seconds,
        "model_cache_volume": cache.volume if cache else None,
        "model_cache_mount_path": cfg.model_cache.mount_path,
        "spread_across_nodes": spread_across_nodes,
        "extra_env": coordination.env,
    }, opts=pulumi.ResourceOptions(depends_on=([cache] if cache else []) + coordination.releases))

    GraphNetworkPolicies(f"{graph_name}-network", {
        "namespace": cfg.namespace,
        "graph_name": graph_name,
        "discovery": cfg.discovery,
        "prometheus_namespace": cfg.monitoring.namespace if cfg.monitoring.enabled else None,
        "peers": coordination.peers,
        "external_ports": coordination.external_ports,
        "api_server_cidrs": list(cfg.network_policy.api_server_cidrs),
    })
    if disruption_budgets:
        GraphDisruptionBudgets(f"{graph_name}-disruption", {
            "namespace": cfg.namespace,
            "graph_name": graph_name,
            "components": [{"type": "frontend", "replicas": cfg.frontend.replicas},
                           {"type": "worker", "replicas": cfg.workers.replicas}],
        })

    monitoring = None
    if cfg.monitoring.enabled:
        monitoring = Monitoring(f"{graph_name}-monitoring", {
            "namespace": cfg.namespace,
            "graph_name": graph_name,
            "prometheus_release": cfg.monitoring.prometheus_release,
            "dashboard_namespace": cfg.monitoring.namespace,
            "platform_monitors": cfg.monitoring.platform_monitors,
            # MonitoringAlertsConfig's fields are AlertThresholds' keys.
            "thresholds": dataclasses.asdict(cfg.monitoring.alerts),
            **coordination_targets(cfg.namespace, coordination.peers),
        })

    service = FrontendService(f"{graph_name}-frontend", {
        "namespace": cfg.namespace,
        "graph_name": graph_name,
        "type": cfg.frontend.service.type,
        "node_port": cfg.frontend.service.node_port,
    })

    outputs = {
        "namespace": cfg.namespace,
        "graphName": graph.graph_name,
        "graphApiVersion": graph.api_version,
        "model": cfg.model_name,
        "totalGpus": graph.total_gpus,
        "frontendUrl": service.url,
        "smokeCurl": service.url.apply(lambda url: smoke_curl(url, cfg.model_name)),
    }
    if monitoring:
        outputs["dashboard"] = {"title": monitoring.dashboard_title, "uid": monitoring.dashboard_uid,
                                "configMap": monitoring.dashboard_config_map}
        outputs["alerts"] = monitoring.alert_names
        outputs["podMonitors"] = monitoring.pod_monitors
    return outputs


def smoke_curl(url: str, model: str) -> str:
    """The lab's smoke request, ready to paste."""
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": "Hello! How are you?"}],
        "max_tokens": 64,
        "stream": False,
    })
    return f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"
