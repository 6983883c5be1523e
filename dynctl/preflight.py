"""`dynctl preflight`: can the cluster hold this stack's GPU workers right now?

The lab's GPU check through the Kubernetes API: every node's allocatable `nvidia.com/gpu`,
the GPUs that running pods already hold (by namespace and workload, so a forgotten earlier
deployment is named), and whether the stack's worker pods (replicas x nodeCount pods, each
wanting `workers.gpus`) can each land on one node. Exit 0 = fits, 1 = does not fit,
2 = could not check.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from components.graph import GPU_RESOURCE, LABEL_GRAPH
from dynctl.kubeapi import KubeClient, KubeError, add_cluster_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preflight", help="check the cluster has free GPUs for the stack's workers")
    add_cluster_arguments(p)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Need:
    """What the stack's workers ask for."""

    namespace: str
    graph: str
    replicas: int
    gpus_per_pod: int
    node_count: int

    @property
    def pods(self) -> int:
        return self.replicas * self.node_count

    @property
    def total(self) -> int:
        return self.pods * self.gpus_per_pod


@dataclass
class Node:
    name: str
    allocatable: int
    used: int = 0
    schedulable: bool = True
    why_not: str = ""

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.used)


@dataclass
class Holder:
    """GPUs held by one workload (a Deployment, a graph, a StatefulSet...) in one namespace."""

    namespace: str
    workload: str
    pods: int = 0
    gpus: int = 0
    pending: int = 0
    nodes: set[str] = field(default_factory=set)


def need_from_stack(stack: str, sets: list[str]) -> Need:
    from dynctl.render import load_config

    cfg = load_config(stack, sets)
    w = cfg.workers
    return Need(namespace=cfg.namespace, graph=cfg.graph.name, replicas=int(w.replicas),
                gpus_per_pod=int(w.gpus), node_count=int(w.node_count))


def pod_gpus(pod: dict) -> int:
    """GPUs a pod holds: its containers' sum, or its largest init container if that is more.

    Extended resources must have request == limit, so either one tells."""
    def gpus(c: dict) -> int:
        res = c.get("resources") or {}
        return int((res.get("limits") or {}).get(GPU_RESOURCE) or (res.get("requests") or {}).get(GPU_RESOURCE) or 0)

    spec = pod.get("spec") or {}
    main = sum(gpus(c) for c in spec.get("containers") or [])
    init = max((gpus(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def workload_of(pod: dict) -> str:
    """The name a person knows the pod by: its graph, Deployment, StatefulSet, Job..."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(LABEL_GRAPH):
        return f"DynamoGraphDeployment/{labels[LABEL_GRAPH]}"
    if labels.get("leaderworkerset.sigs.k8s.io/name"):
        return f"LeaderWorkerSet/{labels['leaderworkerset.sigs.k8s.io/name']}"
    for ref in meta.get("ownerReferences") or []:
        kind, name = ref.get("kind"), ref.get("name", "")
        if kind == "ReplicaSet":
            # A Deployment's ReplicaSet is "<deployment>-<pod-template-hash>".
            h = labels.get("pod-template-hash")
            return f"Deployment/{name[: -len(h) - 1]}" if h and name.endswith("-" + h) else f"ReplicaSet/{name}"
        if kind:
            return f"{kind}/{name}"
    return f"Pod/{meta.get('name')}"


def place(nodes: list[Node], need: Need) -> list[list[str]] | None:
    """Place each replica's pods on distinct nodes, most-free node first; None if impossible.

    Pods of one multinode replica are one per node, so they must land on different nodes."""
    free = {n.name: n.free for n in nodes if n.schedulable}
    placement = []
    for _ in range(need.replicas):
        fitting = sorted((name for name, f in free.items() if f >= need.gpus_per_pod), key=lambda n: -free[n])
        if len(fitting) < need.node_count:
            return None
        chosen = fitting[: need.node_count]
        for name in chosen:
            free[name] -= need.gpus_per_pod
        placement.append(chosen)
    return placement


def survey(client: KubeClient, need: Need) -> tuple[list[Node], list[Holder], int]:
    """Nodes with their GPU use, the workloads holding GPUs, and GPUs held by the stack itself."""
    node_list = client.get("/api/v1/nodes")["items"]
    nodes: dict[str, Node] = {}
    for item in node_list:
        name = item["metadata"]["name"]
        alloc = int(((item.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE) or 0)
        if alloc == 0:
            continue
        node = Node(name, alloc)
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (item.get("status") or {}).get("conditions") or [])
        if (item.get("spec") or {}).get("unschedulable"):
            node.schedulable, node.why_not = False, "cordoned"
        elif not ready:
            node.schedulable, node.why_not = False, "not Ready"
        nodes[name] = node

    pods = client.get("/api/v1/pods", {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"})["items"]
    holders: dict[tuple[str, str], Holder] = {}
    own = 0
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        n = pod_gpus(pod)
        if n == 0 or phase in ("Succeeded", "Failed"):
            continue
        meta = pod["metadata"]
        node_name = (pod.get("spec") or {}).get("nodeName")
        ours = meta.get("namespace") == need.namespace and (meta.get("labels") or {}).get(LABEL_GRAPH) == need.graph
        if node_name in nodes and not ours:
            nodes[node_name].used += n
        if ours:
            # An earlier rollout of this very stack: its GPUs are freed when it is replaced.
            own += n
            continue
        key = (meta.get("namespace", ""), workload_of(pod))
        h = holders.setdefault(key, Holder(*key))
        h.pods += 1
        if node_name:
            h.gpus += n
            h.nodes.add(node_name)
        else:
            h.pending += n
    return list(nodes.values()), sorted(holders.values(), key=lambda h: (-h.gpus, h.namespace, h.workload)), own


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    try:
        need = need_from_stack(args.stack, args.sets)
    except Exception as e:  # bad stack name or config: one line, not a traceback
        console.print(f"[red]CANNOT CHECK: stack {args.stack!r}: {e}[/red]", soft_wrap=True)
        return 2
    try:
        with KubeClient(args.kubeconfig, args.context) as client:
            nodes, holders, own = survey(client, need)
    except KubeError as e:
        console.print(f"[red]CANNOT CHECK: {e}[/red]", soft_wrap=True)
        return 2

    t = Table(title=f"GPU nodes ({GPU_RESOURCE} allocatable)")
    for col in ("node", "allocatable", "in use", "free", "schedulable"):
        t.add_column(col, justify="left" if col == "node" else "right")
    for n in sorted(nodes, key=lambda n: n.name):
        t.add_row(n.name, str(n.allocatable), str(n.used), str(n.free), "yes" if n.schedulable else f"no ({n.why_not})")
    console.print(t)
    if holders:
        t = Table(title="GPUs held by other workloads")
        for col in ("namespace", "workload", "pods", "GPUs", "nodes"):
            t.add_column(col, justify="right" if col in ("pods", "GPUs") else "left", no_wrap=col == "workload",
                         overflow="fold")
        for h in holders:
            gpus = f"{h.gpus}" + (f" (+{h.pending} pending)" if h.pending else "")
            t.add_row(h.namespace, h.workload, str(h.pods), gpus, ", ".join(sorted(h.nodes)) or "-")
        console.print(t)

    free = sum(n.free for n in nodes if n.schedulable)
    console.print(f"stack {args.stack} needs {need.pods} worker pod(s) x {need.gpus_per_pod} GPU = {need.total} GPUs "
                  f"(replicas {need.replicas} x gpus {need.gpus_per_pod} x nodeCount {need.node_count}); "
                  f"free on schedulable nodes: {free}"
                  + (f" (including {own} held by this stack's own current pods)" if own else ""), soft_wrap=True)
    if need.total == 0:
        console.print("[green]PASS: the stack asks for no GPUs[/green]", soft_wrap=True)
        return 0
    placement = place(nodes, need)
    if placement is not None:
        where = "; ".join(f"replica {i + 1} on {', '.join(p)}" for i, p in enumerate(placement))
        console.print(f"[green]PASS: the workers fit ({where})[/green]", soft_wrap=True)
        return 0
    if free < need.total:
        reason = f"{need.total} GPUs needed, {free} free"
    else:
        reason = (f"{free} GPUs are free in total, but not {need.node_count} node(s) with "
                  f"{need.gpus_per_pod} free GPUs for each of {need.replicas} replica(s)")
    console.print(f"[red]FAIL: {reason}.[/red]", soft_wrap=True)
    if holders:
        names = ", ".join(f"{h.namespace}/{h.workload} ({h.gpus} GPU{'s' if h.gpus != 1 else ''})"
                          for h in holders if h.gpus)
        console.print(f"[red]GPUs are held by: {names}. Scale down or delete what is no longer needed "
                      "(e.g. an earlier lab still running).[/red]", soft_wrap=True)
    return 1

