"""The Service that exposes the graph's Frontend (OpenAI-compatible HTTP) outside the cluster."""

from __future__ import annotations

from typing import Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.graph import FRONTEND, FRONTEND_PORT, pod_selector


class FrontendServiceArgs(TypedDict):
    """How the frontend is reached."""

    namespace: str
    """Namespace of the graph."""
    graph_name: str
    """The graph whose Frontend pods the Service selects."""
    type: str
    """NodePort, LoadBalancer or ClusterIP."""
    node_port: int
    """Node port when type is NodePort (the lab uses 30200)."""


class FrontendService(pulumi.ComponentResource):
    """NodePort (dev) or LoadBalancer (multinode) Service in front of every Frontend replica."""

    url: pulumi.Output[str]
    """Base URL of the OpenAI API (a placeholder host for NodePort: any node's address)."""
    service_name: pulumi.Output[str]
    """Name of the Service."""

    def __init__(self, name: str, args: FrontendServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("dynamo:frontend_service:FrontendService", name, None, opts)
        port = {"name": "http", "port": FRONTEND_PORT, "targetPort": FRONTEND_PORT, "protocol": "TCP"}
        if args["type"] == "NodePort":
            port["nodePort"] = args["node_port"]
        service = k8s.core.v1.Service(
            name,
            metadata={"name": f"{args['graph_name']}-frontend-external", "namespace": args["namespace"]},
            spec={"type": args["type"], "selector": pod_selector(args["graph_name"], FRONTEND), "ports": [port]},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.service_name = service.metadata["name"]
        if args["type"] == "NodePort":
            self.url = pulumi.Output.from_input(f"http://<node-ip>:{args['node_port']}")
        elif args["type"] == "LoadBalancer":
            self.url = service.status.apply(_load_balancer_url)
        else:
            self.url = pulumi.Output.concat("http://", service.metadata["name"], ".", args["namespace"], f".svc:{FRONTEND_PORT}")
        self.register_outputs({"url": self.url, "service_name": self.service_name})


def _load_balancer_url(status) -> str:
    ingress = (status.load_balancer.ingress if status and status.load_balancer else None) or []
    if ingress:
        host = ingress[0].ip or ingress[0].hostname
        return f"http://{host}:{FRONTEND_PORT}"
    return f"http://<load-balancer-address>:{FRONTEND_PORT}"
