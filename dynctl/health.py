"""`dynctl health --stack STACK`: the lab's health section in one command.

Graph state, the frontend's /health and model list, each worker's /health, and NATS and etcd
when the stack runs them. When the stack's twin is running, its local endpoints are read;
otherwise the cluster is asked through the Kubernetes API (the graph's status, pod readiness,
and the API server's proxy to pods and Services), so no port-forward is needed.
Exit 0 when everything is healthy, 1 when something is not, 2 when it could not be checked.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from urllib.parse import quote

import requests

from components import coordination
from components.graph import FRONTEND, FRONTEND_PORT, LABEL_COMPONENT, LABEL_COMPONENT_TYPE, LABEL_GRAPH, WORKER_SYSTEM_PORT
from dynctl import twin
from dynctl.kubeapi import KubeClient, KubeError, add_cluster_arguments
from dynctl.twin_graph import find_graph

NATS_MONITOR_PORT = 8222


@dataclass
class Check:
    component: str
    name: str
    ok: bool
    detail: str


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="graph, frontend, workers, NATS and etcd health of a stack (twin or cluster)")
    add_cluster_arguments(p)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per probe (default 5)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    console = Console()
    state = _running_twin(args.stack)
    try:
        if state:
            where = f"twin of stack {args.stack} ({state['url']})"
            checks = twin_checks(state, args.timeout)
        else:
            from dynctl.render import render_stack

            rendered = render_stack(args.stack, args.sets)
            with KubeClient(args.kubeconfig, args.context, timeout=args.timeout) as client:
                where = f"cluster {client.server} (context {client.context})"
                checks = cluster_checks(client, rendered)
    except KubeError as e:
        console.print(f"[red]CANNOT CHECK: {e}[/red]", soft_wrap=True)
        return 2
    except Exception as e:  # bad stack or config: one line
        console.print(f"[red]CANNOT CHECK: stack {args.stack!r}: {e}[/red]", soft_wrap=True)
        return 2
    print_checks(console, where, checks)
    return 0 if checks and all(c.ok for c in checks) else 1


def print_checks(console, where: str, checks: list[Check]) -> None:
    from rich.table import Table

    t = Table(title=f"health of {where}")
    for col in ("component", "name", "status", "detail"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.component, c.name, "[green]OK[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
    console.print(t)
    bad = [c for c in checks if not c.ok]
    if bad:
        console.print(f"[red]UNHEALTHY: {', '.join(f'{c.component} {c.name}: {c.detail}' for c in bad)}[/red]",
                      soft_wrap=True)
    else:
        console.print(f"[green]HEALTHY: {len(checks)} checks passed[/green]", soft_wrap=True)


# ---------------------------------------------------------------- twin


def _running_twin(stack: str) -> dict | None:
    state = twin.load_state(stack)
    if not state or not state.get("processes"):
        return None
    return state if any(twin.alive(p) for p in state["processes"]) else None


def _get(url: str, timeout: float) -> tuple[int | None, str]:
    """(status, body) or (None, reason) when nothing answered."""
    try:
        r = requests.get(url, timeout=timeout)
        return r.status_code, r.text
    except requests.exceptions.ConnectionError:
        return None, "connection refused"
    except requests.exceptions.Timeout:
        return None, f"no answer in {timeout:g} s"


def twin_checks(state: dict, timeout: float) -> list[Check]:
    procs = state["processes"]
    dead = [p["name"] for p in procs if not twin.alive(p)]
    checks = [Check("graph", state.get("graph") or state["stack"], not dead,
                    f"twin, {len(procs) - len(dead)}/{len(procs)} processes running"
                    + (f"; dead: {', '.join(dead)}" if dead else "")
                    + f"; router {state.get('router_mode')}, migration limit {state.get('migration_limit')}")]
    for p in procs:
        if p["name"] in dead:
            checks.append(Check(p["role"], p["name"], False, f"process {p['pid']} is not running (log: {p.get('log')})"))
        elif p["role"] == "frontend":
            checks += frontend_checks(p["name"], lambda path, e=p["endpoint"]: _get(e + path, timeout), state["model"])
        elif p["role"] == "worker":
            checks.append(worker_check(p["name"], *_get(p["health_url"], timeout)))
        else:
            checks.append(service_check(p["role"], p["name"], *_get(p["health_url"], timeout)))
    return checks


# ---------------------------------------------------------------- shared judgements


def frontend_checks(name: str, get, model: str) -> list[Check]:
    """/health (answers 200 even without workers) and /v1/models (the real readiness signal)."""
    status, body = get("/health")
    if status != 200:
        health = Check("frontend", name, False, f"/health: {_why(status, body)}")
    else:
        data = _json(body)
        instances = len({i.get("instance_id") for i in data.get("instances", []) if i.get("endpoint") == "generate"})
        health = Check("frontend", name, data.get("status") in ("healthy", "ready", None),
                       f"/health {data.get('status', 'ok')}, {instances} worker instance(s) registered")
    status, body = get("/v1/models")
    if status != 200:
        models = Check("frontend", name, False, f"/v1/models: {_why(status, body)}")
    else:
        listed = [m.get("id") for m in _json(body).get("data", [])]
        models = Check("frontend", name, model in listed,
                       f"/v1/models lists {model}" if model in listed
                       else f"/v1/models does not list {model} (lists: {', '.join(listed) or 'nothing'})")
    return [health, models]


def worker_check(name: str, status: int | None, body: str) -> Check:
    if status != 200:
        return Check("worker", name, False, f"/health: {_why(status, body)}")
    data = _json(body)
    endpoints = data.get("endpoints") or {}
    bad = [e for e, s in endpoints.items() if s != "ready"]
    return Check("worker", name, data.get("status") == "ready" and not bad,
                 f"/health {data.get('status')}" + (f", endpoints not ready: {', '.join(bad)}" if bad else ""))


def service_check(role: str, name: str, status: int | None, body: str) -> Check:
    """NATS /healthz, etcd /health, Prometheus /-/healthy: 200 and no error in the body."""
    if status != 200:
        return Check(role, name, False, f"{_why(status, body)}")
    data = _json(body)
    if role == "etcd" and str(data.get("health")).lower() != "true":
        return Check(role, name, False, f"etcd reports health={data.get('health')} {data.get('reason', '')}".strip())
    return Check(role, name, True, (body.strip()[:60] or "ok").replace("\n", " "))


def _why(status: int | None, body: str) -> str:
    return body if status is None else f"HTTP {status} {body.strip()[:80]}"


def _json(body: str) -> dict:
    try:
        data = json.loads(body)
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


# ---------------------------------------------------------------- cluster


def cluster_checks(client: KubeClient, rendered) -> list[Check]:
    cfg = rendered.config
    dgd = find_graph(rendered.objects)
    ns, graph = dgd["metadata"].get("namespace", cfg.namespace), dgd["metadata"]["name"]
    group_version = dgd["apiVersion"]
    live = client.get_optional(f"/apis/{group_version}/namespaces/{ns}/dynamographdeployments/{graph}")
    if live is None:
        return [Check("graph", f"{ns}/{graph}", False, f"not found ({group_version}); is the stack deployed?")]
    status = live.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    checks = [Check("graph", f"{ns}/{graph}", status.get("state") == "successful" and ready.get("status") == "True",
                    f"state {status.get('state', 'unknown')}, Ready={ready.get('status', 'unknown')}"
                    + (f" ({ready.get('message')})" if ready.get("message") and ready.get("status") != "True" else ""))]

    pods = client.get(f"/api/v1/namespaces/{ns}/pods", {"labelSelector": f"{LABEL_GRAPH}={graph}"})["items"]
    by_type: dict[str, list[dict]] = {}
    for pod in pods:
        by_type.setdefault((pod["metadata"].get("labels") or {}).get(LABEL_COMPONENT_TYPE, "other"), []).append(pod)
    expected = {"frontend": cfg.frontend.replicas, "worker": cfg.workers.replicas * cfg.workers.node_count}
    for ctype, want in expected.items():
        have = by_type.get(ctype, [])
        n_ready = sum(1 for p in have if _pod_ready(p))
        checks.append(Check(f"{ctype} pods", graph, n_ready >= want, f"{n_ready}/{want} ready"
                            + "".join(f"; {p['metadata']['name']}: {_pod_problem(p)}" for p in have if not _pod_ready(p))))

    svc = _frontend_service(rendered.objects, graph)
    if svc:
        name, port = svc
        base = f"/api/v1/namespaces/{ns}/services/{name}:{port}/proxy"
        checks += frontend_checks(f"service {name}", lambda path: client.proxy(base + path), cfg.model_name)
    for pod in by_type.get("worker", []):
        pname = pod["metadata"]["name"]
        if _pod_ready(pod):
            checks.append(worker_check(pname, *client.proxy(
                f"/api/v1/namespaces/{ns}/pods/{pname}:{WORKER_SYSTEM_PORT}/proxy/health")))

    for role, service, pod_labels, port, path in (
            ("nats", cfg.nats, coordination.nats_pod_labels, NATS_MONITOR_PORT, "/healthz"),
            ("etcd", cfg.etcd, coordination.etcd_pod_labels, coordination.ETCD_CLIENT_PORT, "/health")):
        if not service.enabled:
            continue
        release = _release(rendered.objects, role)
        if release is None:
            checks.append(Check(role, "-", False, "enabled in the config but the stack renders no Helm release for it"))
            continue
        labels = pod_labels(release)
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        rpods = client.get(f"/api/v1/namespaces/{ns}/pods", {"labelSelector": selector})["items"]
        if not rpods:
            checks.append(Check(role, release, False, f"no pods match {selector}"))
        for pod in rpods:
            pname = pod["metadata"]["name"]
            if not _pod_ready(pod):
                checks.append(Check(role, pname, False, _pod_problem(pod)))
                continue
            checks.append(service_check(role, pname, *client.proxy(
                f"/api/v1/namespaces/{ns}/pods/{pname}:{port}/proxy{path}")))
    return checks


def _pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _pod_problem(pod: dict) -> str:
    """Why a pod is not ready, as `kubectl get pods` would hint: waiting reason, restarts, phase."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return f"{waiting.get('reason')} (restarts {cs.get('restartCount', 0)})"
    for c in status.get("conditions") or []:
        if c.get("status") != "True" and c.get("reason"):
            return f"{c.get('type')}: {c.get('reason')} {c.get('message', '')}".strip()
    return f"phase {status.get('phase', 'unknown')}, not ready"


def _frontend_service(objects: list[dict], graph: str) -> tuple[str, str] | None:
    """(name, port) of the rendered Service that selects the graph's frontend pods."""
    for o in objects:
        if o["kind"] != "Service":
            continue
        sel = (o.get("spec") or {}).get("selector") or {}
        if sel.get(LABEL_GRAPH) == graph and sel.get(LABEL_COMPONENT) == FRONTEND:
            ports = o["spec"].get("ports") or []
            port = next((p.get("name") or str(p["port"]) for p in ports if p.get("name") == "http"),
                        ports[0].get("name") or str(ports[0]["port"]) if ports else str(FRONTEND_PORT))
            return o["metadata"]["name"], quote(str(port))
    return None


def _release(objects: list[dict], role: str) -> str | None:
    for o in objects:
        if o["kind"] == "HelmRelease" and o["metadata"]["name"].endswith(f"-{role}"):
            return (o.get("spec") or {}).get("releaseName") or o["metadata"]["name"]
    return None
